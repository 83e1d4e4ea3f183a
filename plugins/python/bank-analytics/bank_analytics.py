"""A projection over the ``bank-account`` category: open accounts, total
balance, deposits per UTC day and the largest balances; the Python twin of
``plugins/bank-analytics`` (same name, state JSON and queries).

Queries: ``top`` (``n``, default 10) lists the largest balances of open
accounts; ``account`` (``id``, a stream) shows one account.
"""

from dataclasses import dataclass

from foldhost_guest import U64_MAX, Invalid, Projection, Subscription, export, query, u64


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
class AccountSummary:
    owner: str = ""
    balance: u64 = 0
    open: bool = False


@dataclass
class DayDeposits:
    count: u64 = 0
    amount: u64 = 0


def utc_date(unix_ms: int) -> str:
    """The UTC date ``YYYY-MM-DD`` of a Unix timestamp in milliseconds
    (Howard Hinnant's civil_from_days, as the Rust twin)."""
    z = unix_ms // 86_400_000 + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return f"{year:04}-{month:02}-{day:02}"


@export
class Analytics(Projection):
    name = "bank-analytics"
    version = "1.0.0"
    subscription = Subscription(categories=["bank-account"])
    events = (Opened, Deposited, Withdrawn, Closed)

    open_accounts: u64
    total_balance: u64
    deposits_per_day: dict[str, DayDeposits]
    accounts: dict[str, AccountSummary]

    def __init__(self):
        self.open_accounts = 0
        self.total_balance = 0
        self.deposits_per_day = {}
        self.accounts = {}

    def apply(self, event, meta):
        account = self.accounts.setdefault(meta.stream, AccountSummary())
        match event:
            case Opened(owner):
                if not account.open:
                    account.open = True
                    self.open_accounts += 1
                account.owner = owner
            case Deposited(amount):
                account.balance = min(account.balance + amount, U64_MAX)
                self.total_balance = min(self.total_balance + amount, U64_MAX)
                day = self.deposits_per_day.setdefault(utc_date(meta.recorded_at), DayDeposits())
                day.count += 1
                day.amount = min(day.amount + amount, U64_MAX)
            case Withdrawn(amount):
                taken = min(amount, account.balance)
                account.balance -= taken
                self.total_balance = max(self.total_balance - taken, 0)
            case Closed():
                if account.open:
                    account.open = False
                    self.open_accounts -= 1

    @query
    def top(self, n: int = 10):
        """The ``n`` open accounts with the largest balances, ties by stream name."""
        ranked = sorted(
            ((id, a) for id, a in self.accounts.items() if a.open),
            key=lambda item: (-item[1].balance, item[0]),
        )
        return [{"id": id, "owner": a.owner, "balance": a.balance} for id, a in ranked[:n]]

    @query
    def account(self, id: str):
        summary = self.accounts.get(id)
        if summary is None:
            raise Invalid(f"no account `{id}`")
        return {"id": id, "owner": summary.owner, "balance": summary.balance, "open": summary.open}

    def state(self):
        """A summary: the per-account map is reachable through the queries."""
        return {
            "open_accounts": self.open_accounts,
            "total_balance": self.total_balance,
            "accounts": len(self.accounts),
            "deposits_per_day": dict(sorted(self.deposits_per_day.items())),
            "top": self.top(10),
        }
