"""The Rust bank-analytics' behaviour, natively through the SDK's runtime."""

import json
import unittest

from foldhost_guest.plugin import EventMeta
from foldhost_guest.runtime import PluginError, ProjectionRuntime, RawEvent

import bank_analytics
from bank_analytics import utc_date

DAY = 86_400_000


class Log:
    def __init__(self):
        self.runtime = ProjectionRuntime(bank_analytics.Analytics)
        self.position = 0

    def event(self, stream, event_type, data=None, at=0):
        self.position += 1
        payload = json.dumps(data).encode() if data is not None else b"null"
        self.runtime.apply([RawEvent(event_type, True, payload, EventMeta(stream, 1, self.position, at))])

    def state(self):
        return json.loads(self.runtime.state_json())

    def query(self, name, args=""):
        return json.loads(self.runtime.query(name, args))


class AnalyticsTest(unittest.TestCase):
    def test_known_dates(self):
        for ms, date in [(0, "1970-01-01"), (86_399_999, "1970-01-01"), (86_400_000, "1970-01-02"),
                         (951_782_400_000, "2000-02-29"), (1_709_164_800_000, "2024-02-29"),
                         (1_735_689_599_999, "2024-12-31"), (4_102_444_800_000, "2100-01-01")]:
            self.assertEqual(utc_date(ms), date)

    def test_folds_accounts_days_and_top(self):
        log = Log()
        log.event("bank-account-a", "Opened", {"owner": "ann"})
        log.event("bank-account-b", "Opened", {"owner": "bob"})
        log.event("bank-account-a", "Deposited", {"amount": 50}, at=0)
        log.event("bank-account-b", "Deposited", {"amount": 70}, at=DAY)
        log.event("bank-account-b", "Withdrawn", {"amount": 100})
        log.event("bank-account-b", "Closed")
        log.event("shopping-cart-1", "Deposited", {"amount": 1000})
        log.event("bank-account-a", "Renamed", {"owner": "x"})
        self.assertEqual(log.state(), {
            "open_accounts": 1,
            "total_balance": 50,
            "accounts": 2,
            "deposits_per_day": {"1970-01-01": {"count": 1, "amount": 50}, "1970-01-02": {"count": 1, "amount": 70}},
            "top": [{"id": "bank-account-a", "owner": "ann", "balance": 50}],
        })
        self.assertEqual(log.query("account", '{"id":"bank-account-b"}'),
                         {"id": "bank-account-b", "owner": "bob", "balance": 0, "open": False})
        with self.assertRaisesRegex(PluginError, "^no account `nope`$"):
            log.query("account", '{"id":"nope"}')

    def test_top_orders_by_balance_then_stream(self):
        log = Log()
        for name, amount in [("c", 5), ("a", 5), ("b", 9)]:
            log.event(f"bank-account-{name}", "Opened", {"owner": name})
            log.event(f"bank-account-{name}", "Deposited", {"amount": amount})
        self.assertEqual([a["id"] for a in log.query("top", '{"n":2}')], ["bank-account-b", "bank-account-a"])
        self.assertEqual(len(log.query("top")), 3)

    def test_checkpoints_round_trip(self):
        log = Log()
        log.event("bank-account-a", "Opened", {"owner": "ann"})
        log.event("bank-account-a", "Deposited", {"amount": 2**64 - 1})
        restored = ProjectionRuntime(bank_analytics.Analytics)
        restored.init(log.runtime.snapshot())
        self.assertEqual(restored.state_json(), log.runtime.state_json())
        self.assertEqual(restored.query("top", ""), log.runtime.query("top", ""))


if __name__ == "__main__":
    unittest.main()
