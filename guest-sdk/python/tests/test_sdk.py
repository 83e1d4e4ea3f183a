"""The SDK natively: codec, exception mapping, projections, determinism guards."""

import json
import re
import subprocess
import sys
import unittest
from dataclasses import dataclass, field
from typing import Literal, Optional

from foldhost_guest import (
    Aggregate, DecodeError, Invalid, Projection, Rejected, Subscription, query, u64,
)
from foldhost_guest import codec
from foldhost_guest.plugin import EventMeta
from foldhost_guest.runtime import AggregateRuntime, PluginError, ProjectionRuntime, RawEvent


@dataclass
class Item:
    sku: str
    qty: u64 = 1


@dataclass
class Added:
    item: Item
    tags: list[str] = field(default_factory=list)
    note: Optional[str] = None


@dataclass
class Cleared:
    pass


@dataclass
class Add:
    item: Item


@dataclass
class Fail:
    how: Literal["rejected", "invalid", "bug", "exit"]


class Cart(Aggregate):
    name = "cart"
    events = (Added, Cleared)
    commands = (Add, Fail)

    items: dict[str, Item]

    def __init__(self):
        self.items = {}

    def apply(self, event):
        if isinstance(event, Added):
            if event.item.sku == "poison":
                raise ValueError("cannot fold poison")
            self.items[event.item.sku] = event.item

    def handle(self, command):
        if isinstance(command, Add):
            return [Added(command.item)]
        if command.how == "rejected":
            raise Rejected("no")
        if command.how == "invalid":
            raise Invalid("makes no sense")
        if command.how == "exit":
            sys.exit(3)
        return 1 / 0


@dataclass
class Spent:
    amount: u64


@dataclass
class Spend:
    amount: u64


class Wallet(Aggregate):
    name = "wallet"
    events = (Spent,)
    commands = (Spend,)

    def __init__(self):
        self.balance = 10
        # Named like the SDK's class settings (`name: str`, `events:
        # Sequence[type]`, ...), unannotated here: plain JSON state.
        self.name = None
        self.version = {"v": 1}
        self.state_schema = "x"
        self.events = []
        self.commands = [[1]]

    def apply(self, event):
        self.balance -= event.amount
        self.events.append(event.amount)

    def handle(self, command):
        self.balance -= command.amount  # wrong, and must not reach the folded state
        self.events.append("handled")
        if self.balance < 0:
            raise Rejected("insufficient funds")
        return [Spent(command.amount)]


def raw(event_type, data, position=1, stream="cart-1", is_json=True, metadata=b""):
    return RawEvent(event_type, is_json, json.dumps(data).encode(), EventMeta(stream, position, position, 0, metadata))


class CodecTest(unittest.TestCase):
    def test_round_trip_with_nested_dataclasses(self):
        event = Added(Item("a", 2**64 - 1), ["x"])
        event_type, data = codec.encode_message(event)
        self.assertEqual((event_type, data), ("Added", b'{"item":{"sku":"a","qty":18446744073709551615},"tags":["x"],"note":null}'))
        self.assertEqual(codec.decode_message(Added, data), event)

    def test_field_less_classes_carry_null_and_accept_any_json(self):
        self.assertEqual(codec.encode_message(Cleared()), ("Cleared", b"null"))
        for data in [b"", b"null", b"{}", b'{"x":1}']:
            self.assertEqual(codec.decode_message(Cleared, data), Cleared())
        with self.assertRaises(DecodeError):
            codec.decode_message(Cleared, b"{nope")

    def test_types_are_checked_with_a_path(self):
        cases = [
            (b'{"item":{"sku":"a","qty":-1}}', "Added.item.qty: expected an unsigned 64-bit integer, got -1"),
            (b'{"item":{"sku":"a","qty":true}}', "Added.item.qty: expected an unsigned 64-bit integer, got true"),
            (b'{"item":{"qty":1}}', "Added.item: missing field `sku`"),
            (b'{"item":{"sku":"a"},"tags":[1]}', "Added.tags[0]: expected a string, got 1"),
            (b'[]', "Added: expected an object for Added, got []"),
        ]
        for data, message in cases:
            with self.assertRaises(DecodeError) as raised:
                codec.decode_message(Added, data)
            self.assertEqual(str(raised.exception), message)
        with self.assertRaisesRegex(DecodeError, 'one of "rejected"'):
            codec.decode_message(Fail, b'{"how":"other"}')

    def test_state_json_is_compact_and_refuses_nan(self):
        self.assertEqual(codec.to_json({"a": [1, {2}], 3: None}), '{"a":[1,[2]],"3":null}')
        with self.assertRaises(ValueError):
            codec.to_json(float("nan"))


    def test_integer_dict_keys_come_back_as_integers(self):
        self.assertEqual(codec.to_json({5: 1, -2: 3}), '{"5":1,"-2":3}')
        self.assertEqual(codec.decode(dict[int, u64], {"5": 1, "-2": 3}), {5: 1, -2: 3})
        self.assertEqual(codec.decode(dict[u64, int], {"18446744073709551615": 0}), {2**64 - 1: 0})
        self.assertEqual(codec.decode(dict[str, int], {"5": 1}), {"5": 1})
        for annotation, key in [(dict[int, int], "x"), (dict[int, int], "05"), (dict[int, int], "+5"),
                                (dict[int, int], " 5"), (dict[int, int], "1_0"), (dict[int, int], "\u0665"),
                                (dict[u64, int], "-1"), (dict[u64, int], str(2**64))]:
            with self.assertRaisesRegex(DecodeError, "^m: expected .*integer as the key, got " + re.escape(json.dumps(key)), msg=key):
                codec.decode(annotation, {key: 1}, "m")
        with self.assertRaisesRegex(TypeError, "dict keys"):
            codec.decode(dict[float, int], {"1.5": 1})

    def test_literals_and_floats_refuse_what_json_would_not_mean(self):
        one = Literal[1, "a"]
        self.assertEqual(codec.decode(one, 1), 1)
        for value in [True, 1.0, "1"]:
            with self.assertRaisesRegex(DecodeError, "expected one of 1, \"a\"", msg=value):
                codec.decode(one, value)
        with self.assertRaises(DecodeError):
            codec.decode(Literal[True], 1)
        self.assertIs(codec.decode(Literal[True], True), True)
        self.assertEqual(codec.decode(float, 2), 2.0)
        for data in [b"1e400", b"-1e400", b"Infinity", b"NaN", b"1" + b"0" * 400]:
            with self.assertRaisesRegex(DecodeError, "expected a finite number", msg=data):
                codec.decode(float, json.loads(data), "x")


class AggregateRuntimeTest(unittest.TestCase):
    def setUp(self):
        self.cart = AggregateRuntime(Cart)

    def test_exceptions_map_to_rejected_or_invalid(self):
        with self.assertRaisesRegex(Rejected, "^no$"):
            self.cart.handle("Fail", b'{"how":"rejected"}')
        with self.assertRaisesRegex(Invalid, "^makes no sense$"):
            self.cart.handle("Fail", b'{"how":"invalid"}')
        with self.assertRaisesRegex(Invalid, "^Fail failed: ZeroDivisionError: division by zero$"):
            self.cart.handle("Fail", b'{"how":"bug"}')
        with self.assertRaisesRegex(Invalid, "SystemExit: 3"):
            self.cart.handle("Fail", b'{"how":"exit"}')
        with self.assertRaisesRegex(Invalid, r"unknown command type `Buy` \(known: Add, Fail\)"):
            self.cart.handle("Buy", b"{}")
        with self.assertRaisesRegex(Invalid, "^Add: missing field `item`$"):
            self.cart.handle("Add", b"{}")
        self.assertEqual(self.cart.handle("Add", b'{"item":{"sku":"a"}}'), [("Added", b'{"item":{"sku":"a","qty":1},"tags":[],"note":null}')])

    def test_a_batch_that_does_not_decode_changes_nothing(self):
        with self.assertRaisesRegex(PluginError, "position 2 of type `Added`"):
            self.cart.apply([raw("Added", {"item": {"sku": "a"}}), raw("Added", {"item": {}}, position=2)])
        with self.assertRaisesRegex(PluginError, "has no class named Renamed"):
            self.cart.apply([raw("Renamed", {})])
        with self.assertRaisesRegex(PluginError, "binary event data"):
            self.cart.apply([raw("Added", {}, is_json=False)])
        self.assertEqual(self.cart.state_json(), '{"items":{}}')

    def test_a_failed_apply_loses_the_state_until_init(self):
        self.cart.apply([raw("Added", {"item": {"sku": "a"}})])
        with self.assertRaisesRegex(PluginError, "apply raised ValueError: cannot fold poison"):
            self.cart.apply([raw("Added", {"item": {"sku": "poison"}}, position=2)])
        with self.assertRaisesRegex(PluginError, "the state was lost"):
            self.cart.state_json()
        with self.assertRaisesRegex(Invalid, "the state was lost"):
            self.cart.handle("Add", b'{"item":{"sku":"b"}}')
        self.cart.init(None)
        self.assertEqual(self.cart.state_json(), '{"items":{}}')

    def test_snapshots_restore_nested_dataclasses(self):
        self.cart.apply([raw("Added", {"item": {"sku": "a", "qty": 2}})])
        restored = AggregateRuntime(Cart)
        restored.init(self.cart.snapshot())
        self.assertEqual(restored.current.items, {"a": Item("a", 2)})
        with self.assertRaisesRegex(PluginError, "cannot restore the snapshot"):
            restored.init(b"\xff")

    def test_state_named_like_the_sdk_settings_restores_as_json(self):
        wallet = AggregateRuntime(Wallet)
        wallet.apply([raw("Spent", {"amount": 3})])
        restored = AggregateRuntime(Wallet)
        restored.init(wallet.snapshot())
        self.assertEqual(vars(restored.current), {
            "balance": 7, "name": None, "version": {"v": 1}, "state_schema": "x", "events": [3], "commands": [[1]],
        })

    def test_handle_cannot_change_the_state(self):
        wallet = AggregateRuntime(Wallet)
        before = wallet.state_json()
        self.assertEqual(wallet.handle("Spend", b'{"amount":4}'), [("Spent", b'{"amount":4}')])
        self.assertEqual(wallet.state_json(), before)
        with self.assertRaisesRegex(Rejected, "^insufficient funds$"):
            wallet.handle("Spend", b'{"amount":11}')
        self.assertEqual(wallet.state_json(), before)
        wallet.apply([raw("Spent", {"amount": 4})])  # what the host does with handle's events
        self.assertEqual(json.loads(wallet.state_json())["balance"], 6)
        self.assertEqual(json.loads(wallet.state_json())["events"], [4])


@dataclass
class Deposited:
    amount: u64


class Totals(Projection):
    name = "totals"
    subscription = Subscription(categories=["bank-account"])
    events = (Deposited,)

    def __init__(self):
        self.total = 0
        self.seen = []

    def apply(self, event, meta):
        self.total += event.amount
        self.seen.append([meta.stream, meta.position, meta.metadata.get("by")])

    @query
    def above(self, n: int = 0):
        return self.total > n

    @query
    def broken(self):
        raise Invalid("nothing here")


class ByYear(Projection):
    name = "by-year"
    subscription = Subscription(categories=["bank-account"])
    events = (Deposited,)

    by_year: dict[int, u64]

    def __init__(self):
        self.by_year = {}

    def apply(self, event, meta):
        year = 2024 if meta.position < 3 else 2025
        self.by_year[year] = self.by_year.get(year, 0) + event.amount

    @query
    def take(self, year: int):
        return self.by_year.pop(year, 0)  # wrong, and must not reach the folded state


class Watcher(Projection):
    name = "watcher"
    subscription = Subscription(categories=["bank-account"])
    events = (Deposited,)

    # The plugin's own annotation of an SDK setting's name types its state.
    subscription: list[Item]

    def __init__(self):
        self.subscription = [Item("a", 2)]
        self.events = [1]
        self.name = None


class LateWatcher(Watcher):
    pass


class ProjectionRuntimeTest(unittest.TestCase):
    def test_folds_only_subscribed_declared_events_with_meta(self):
        totals = ProjectionRuntime(Totals)
        totals.apply([
            raw("Deposited", {"amount": 5}, 1, "bank-account-1", metadata=b'{"by":"ann"}'),
            raw("Deposited", {"amount": 7}, 2, "bank-accounts-1"),
            raw("Opened", {"owner": "x"}, 3, "bank-account-1"),
            raw("Deposited", {"amount": 2**64 - 1}, 4, "bank-account-2", is_json=True),
        ])
        self.assertEqual(json.loads(totals.state_json()), {
            "total": 5 + 2**64 - 1,
            "seen": [["bank-account-1", 1, "ann"], ["bank-account-2", 4, None]],
        })

    def test_integer_keys_survive_a_snapshot_restore(self):
        before = ProjectionRuntime(ByYear)
        before.apply([raw("Deposited", {"amount": 5}, 1, "bank-account-1")])
        after = ProjectionRuntime(ByYear)
        after.init(before.snapshot())
        self.assertEqual(after.current.by_year, {2024: 5})
        after.apply([raw("Deposited", {"amount": 7}, 2, "bank-account-1"),
                     raw("Deposited", {"amount": 1}, 3, "bank-account-1")])
        self.assertEqual(json.loads(after.state_json()), {"by_year": {"2024": 12, "2025": 1}})

    def test_state_named_like_the_sdk_settings_decodes_only_through_the_plugins_annotations(self):
        for cls in [Watcher, LateWatcher]:
            restored = ProjectionRuntime(cls)
            restored.init(ProjectionRuntime(cls).snapshot())
            self.assertEqual(vars(restored.current), {"subscription": [Item("a", 2)], "events": [1], "name": None})

    def test_queries_cannot_change_the_state(self):
        by_year = ProjectionRuntime(ByYear)
        by_year.apply([raw("Deposited", {"amount": 5}, 1, "bank-account-1")])
        self.assertEqual(by_year.query("take", '{"year":2024}'), "5")
        self.assertEqual(by_year.query("take", '{"year":2024}'), "5")
        self.assertEqual(by_year.current.by_year, {2024: 5})

    def test_queries_decode_their_arguments(self):
        totals = ProjectionRuntime(Totals)
        self.assertEqual(totals.query("above", ""), "false")
        self.assertEqual(totals.query("above", '{"n":-1}'), "true")
        for name, args, message in [
            ("above", '{"n":"x"}', "bad arguments for `above`: n: expected an integer"),
            ("above", "[1]", "must be a JSON object"),
            ("above", '{"m":1}', "query `above` failed: TypeError"),
            ("broken", "", "^nothing here$"),
            ("nope", "", r"unknown query `nope` \(queries: `above`, `broken`\)"),
        ]:
            with self.assertRaisesRegex(PluginError, message):
                totals.query(name, args)


class DeterminismTest(unittest.TestCase):
    def test_clock_and_randomness_fail_clearly(self):
        for call in ["time.time()", "random.random()", "os.urandom(4)", "datetime.datetime.now()"]:
            script = (
                "import foldhost_guest.determinism as d; d.install()\n"
                "import time, random, os, datetime\n"
                f"try:\n    {call}\nexcept d.NondeterminismError as e:\n    print(e)\n"
            )
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            self.assertIn("is not available in a foldhost plugin: folds must be deterministic", result.stdout, call)


if __name__ == "__main__":
    unittest.main()
