"""The Rust bank-account's tests, run natively through the SDK's runtime: the
same decoding, rules and state JSON the component applies."""

import json
import unittest

from foldhost_guest import Invalid, Rejected
from foldhost_guest.runtime import AggregateRuntime, RawEvent
from foldhost_guest.plugin import EventMeta

import bank_account


class Account:
    """Runs commands as the host would: decide, store as JSON, decode, apply."""

    def __init__(self):
        self.runtime = AggregateRuntime(bank_account.Account)
        self.version = 0

    def run(self, command_type, data=None):
        events = self.runtime.handle(command_type, json.dumps(data).encode() if data is not None else b"")
        for event_type, payload in events:
            self.version += 1
            self.runtime.apply([RawEvent(event_type, True, payload, EventMeta("bank-account-a", self.version, self.version, 0))])
        return [(t, json.loads(d)) for t, d in events]

    def state(self):
        return json.loads(self.runtime.state_json())


def opened(balance):
    account = Account()
    account.run("Open", {"owner": "ann"})
    if balance:
        account.run("Deposit", {"amount": balance})
    return account


class BankAccountTest(unittest.TestCase):
    def test_a_full_life(self):
        account = opened(100)
        self.assertEqual(account.run("Withdraw", {"amount": 30}), [("Withdrawn", {"amount": 30})])
        account.run("Withdraw", {"amount": 70})
        self.assertEqual(account.run("Close"), [("Closed", None)])
        self.assertEqual(account.runtime.state_json(), '{"owner":"ann","balance":0,"status":"closed"}')

    def test_nothing_before_open(self):
        account = Account()
        for command, data in [("Deposit", {"amount": 1}), ("Withdraw", {"amount": 1}), ("Close", None)]:
            with self.assertRaisesRegex(Rejected, "^account is not open$"):
                account.run(command, data)
        self.assertEqual(account.state(), {"owner": None, "balance": 0, "status": "new"})

    def test_open_once_with_an_owner(self):
        with self.assertRaisesRegex(Rejected, "^owner must not be empty$"):
            Account().run("Open", {"owner": "  "})
        with self.assertRaisesRegex(Rejected, "^account is already open$"):
            opened(0).run("Open", {"owner": "bob"})

    def test_amounts_must_be_positive_and_covered(self):
        account = opened(10)
        for command, data, reason in [
            ("Deposit", {"amount": 0}, "amount must be positive"),
            ("Withdraw", {"amount": 0}, "amount must be positive"),
            ("Withdraw", {"amount": 11}, "insufficient funds: balance 10, requested 11"),
            ("Deposit", {"amount": 2**64 - 1}, "deposit would overflow the balance"),
        ]:
            with self.assertRaises(Rejected) as raised:
                account.run(command, data)
            self.assertEqual(str(raised.exception), reason)
        self.assertEqual(account.state()["balance"], 10)

    def test_u64_amounts_are_exact(self):
        account = opened(2**64 - 2)
        account.run("Deposit", {"amount": 1})
        self.assertEqual(account.runtime.state_json(), '{"owner":"ann","balance":18446744073709551615,"status":"open"}')

    def test_close_needs_a_zero_balance_and_is_final(self):
        account = opened(5)
        with self.assertRaisesRegex(Rejected, "^balance must be zero to close, is 5$"):
            account.run("Close")
        account.run("Withdraw", {"amount": 5})
        account.run("Close")
        for command, data in [("Open", {"owner": "ann"}), ("Deposit", {"amount": 1}), ("Close", None)]:
            with self.assertRaisesRegex(Rejected, "^account is closed$"):
                account.run(command, data)

    def test_snapshots_round_trip(self):
        account = opened(42)
        restored = AggregateRuntime(bank_account.Account)
        restored.init(account.runtime.snapshot())
        self.assertEqual(restored.state_json(), account.runtime.state_json())

    def test_malformed_commands_are_invalid(self):
        account = opened(1)
        for command, data in [
            ("Deposit", {"amount": -1}),
            ("Deposit", {"amount": 1.5}),
            ("Deposit", {"amount": "7"}),
            ("Deposit", {"amount": 2**64}),
            ("Deposit", {}),
            ("Deposit", [1]),
            ("Steal", {"amount": 1}),
        ]:
            with self.assertRaises(Invalid, msg=f"{command} {data}"):
                account.run(command, data)
        self.assertEqual(account.run("Deposit", {"amount": 7, "note": "ignored"}), [("Deposited", {"amount": 7})])


if __name__ == "__main__":
    unittest.main()
