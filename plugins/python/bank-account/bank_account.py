"""A bank account aggregate (streams ``bank-account-{id}``), the Python twin
of ``plugins/bank-account``: same name, events, commands, rules and
state JSON, so either build can take over the other's streams.

Rules: an account is opened once, with a non-empty owner; deposits and
withdrawals need a positive amount and an open account; a withdrawal may not
overdraw; a deposit may not overflow the balance; an account closes only
when its balance is zero, and a closed account accepts nothing more.
"""

from dataclasses import dataclass
from typing import Literal, Optional

from foldhost_guest import U64_MAX, Aggregate, Rejected, export, log, u64


@dataclass
class Opened:
    owner: str


@dataclass
class Deposited:
    amount: u64


@dataclass
class Withdrawn:
    amount: u64


@dataclass
class Closed:
    pass


@dataclass
class Open:
    owner: str


@dataclass
class Deposit:
    amount: u64


@dataclass
class Withdraw:
    amount: u64


@dataclass
class Close:
    pass


@export
class Account(Aggregate):
    name = "bank-account"
    version = "1.0.0"
    events = (Opened, Deposited, Withdrawn, Closed)
    commands = (Open, Deposit, Withdraw, Close)

    owner: Optional[str]
    balance: u64
    status: Literal["new", "open", "closed"]

    def __init__(self):
        self.owner = None
        self.balance = 0
        self.status = "new"

    def apply(self, event):
        match event:
            case Opened(owner):
                self.owner, self.status = owner, "open"
            case Deposited(amount):
                self.balance = min(self.balance + amount, U64_MAX)
            case Withdrawn(amount):
                self.balance = max(self.balance - amount, 0)
            case Closed():
                self.status = "closed"

    def handle(self, command):
        match command:
            case Open(owner):
                if self.status != "new":
                    raise Rejected(f"account is {'already open' if self.status == 'open' else 'closed'}")
                if not owner.strip():
                    raise Rejected("owner must not be empty")
                log.info(f"opening account for {owner}")
                return [Opened(owner)]
            case Deposit(amount):
                self.ensure_open()
                positive(amount)
                if self.balance + amount > U64_MAX:
                    raise Rejected("deposit would overflow the balance")
                return [Deposited(amount)]
            case Withdraw(amount):
                self.ensure_open()
                positive(amount)
                if amount > self.balance:
                    raise Rejected(f"insufficient funds: balance {self.balance}, requested {amount}")
                return [Withdrawn(amount)]
            case Close():
                self.ensure_open()
                if self.balance != 0:
                    raise Rejected(f"balance must be zero to close, is {self.balance}")
                return [Closed()]

    def ensure_open(self):
        if self.status == "new":
            raise Rejected("account is not open")
        if self.status == "closed":
            raise Rejected("account is closed")


def positive(amount):
    if amount == 0:
        raise Rejected("amount must be positive")
