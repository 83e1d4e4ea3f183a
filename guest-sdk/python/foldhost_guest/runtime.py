"""The plugin's side of each contract call, in plain Python (the WIT glue in
``_wit`` only converts types), so it runs natively in tests too.

Every author exception becomes an answer the contract allows, never a trap:
``Rejected`` → ``rejected``; ``Invalid``, undecodable data and any other
exception in ``handle`` → ``invalid``; an exception in ``apply``, ``init``
or a query → an error string. A batch is decoded completely before it is
applied. If the author's ``apply`` raises half-way, the state is lost: every
later call fails until the host starts over with ``init``.

``handle`` and queries read the state without changing it (the Rust SDK
passes ``&self``, the JavaScript SDK a read-only proxy): they run on a deep
copy of it, so a handler that changes ``self`` before returning its events
or raising changes nothing, and only ``apply`` of the stored events does.
"""

import copy
import json
import traceback
import typing
from typing import Any, Iterable, NamedTuple, Optional

from . import codec, log
from .plugin import EventMeta, Invalid, Rejected


class PluginError(Exception):
    """A failure the contract reports as an error string."""


class RawEvent(NamedTuple):
    """One stored event, as the host sends it."""

    event_type: str
    json: bool
    data: bytes
    meta: EventMeta


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _traceback(error: BaseException) -> str:
    """The frames of `error`'s traceback, without their source lines: reading
    the source would open files, and a plugin's stubbed WASI traps on that."""
    frames = traceback.walk_tb(error.__traceback__)
    return "".join(
        f'  File "{frame.f_code.co_filename}", line {line}, in {frame.f_code.co_name}\n'
        for frame, line in frames
    )


def _logged(error: BaseException, doing: str) -> str:
    """Logs the traceback of an unexpected exception; returns a one-line reason."""
    log.error(f"{doing} raised {_describe(error)}\n{_traceback(error)}")
    return _describe(error)


def _for_reading(state: Any) -> Any:
    """A deep copy of ``state`` for ``handle`` or a query, whatever they do
    to it: otherwise ``self.balance -= amount`` in ``handle`` would count
    twice once the host applies the event, and a change made before raising
    ``Rejected`` would stay. The cost is a copy of the whole state per call
    (proportional to its size: small for an aggregate's stream, possibly
    large for a projection), paid for a guarantee a proxy could not give
    (nested lists, dicts and dataclasses are mutable too)."""
    return copy.deepcopy(state)


class _Runtime:
    def __init__(self, cls: type):
        self.cls = cls
        self.events = {event.__name__: event for event in cls.events}
        self._state: Any = None
        self._lost: Optional[str] = None

    @property
    def current(self) -> Any:
        if self._lost is not None:
            raise PluginError(f"the state was lost when apply failed ({self._lost}); init starts over")
        if self._state is None:
            self._state = self.cls()
        return self._state

    def init(self, snapshot: Optional[bytes]) -> None:
        try:
            self._state = self.cls() if snapshot is None else self.cls.restore(snapshot)
        except BaseException as error:
            raise PluginError(f"cannot restore the snapshot: {_logged(error, 'restore')}") from None
        self._lost = None

    def _decode(self, event: RawEvent) -> Any:
        cls = self.events.get(event.event_type)
        problem = None
        if cls is None:
            problem = f"{self.cls.__name__}.events has no class named {event.event_type}"
        elif not event.json:
            problem = "binary event data cannot be decoded by the Python SDK"
        else:
            try:
                return codec.decode_message(cls, event.data)
            except codec.DecodeError as error:
                problem = str(error)
        raise PluginError(
            f"cannot apply event at position {event.meta.position} of type `{event.event_type}`: {problem}"
        )

    def _fold(self, decoded: list, fold) -> None:
        state = self.current
        try:
            for item in decoded:
                fold(state, item)
        except BaseException as error:
            self._lost = _logged(error, f"{self.cls.__name__}.apply")
            raise PluginError(f"apply raised {self._lost}") from None

    def snapshot(self) -> bytes:
        return bytes(self.current.snapshot())

    def state_json(self) -> str:
        return codec.to_json(self.current.state())


class AggregateRuntime(_Runtime):
    """One aggregate instance: the state of one stream."""

    def __init__(self, cls: type):
        super().__init__(cls)
        self.commands = {command.__name__: command for command in cls.commands}

    def apply(self, events: Iterable[RawEvent]) -> None:
        decoded = [self._decode(event) for event in events]
        self._fold(decoded, lambda state, event: state.apply(event))

    def handle(self, command_type: str, data: bytes) -> list:
        """The new events as ``(type, JSON data)``; raises ``Rejected`` or ``Invalid``."""
        cls = self.commands.get(command_type)
        if cls is None:
            known = ", ".join(self.commands) or "none"
            raise Invalid(f"unknown command type `{command_type}` (known: {known})")
        try:
            command = codec.decode_message(cls, data)
        except codec.DecodeError as error:
            raise Invalid(str(error)) from None
        try:
            state = _for_reading(self.current)
            events = state.handle(command)
            if events is None:
                return []
            if not isinstance(events, (list, tuple)):
                events = [events]
            encoded = []
            for event in events:
                if type(event).__name__ not in self.events:
                    raise TypeError(f"handle returned {event!r}, whose class is not in {self.cls.__name__}.events")
                encoded.append(codec.encode_message(event))
            return encoded
        except (Rejected, Invalid):
            raise
        except BaseException as error:
            raise Invalid(f"{command_type} failed: {_logged(error, f'{self.cls.__name__}.handle')}") from None


class ProjectionRuntime(_Runtime):
    """The one projection instance."""

    def __init__(self, cls: type):
        super().__init__(cls)
        self.subscription = cls.subscription
        self.queries = {
            name: method
            for klass in reversed(cls.__mro__)
            for name, method in vars(klass).items()
            if getattr(method, "__foldhost_query__", False)
        }

    def apply(self, events: Iterable[RawEvent]) -> None:
        decoded = [
            (self._decode(event), event.meta)
            for event in events
            if event.event_type in self.events and self.subscription.matches(event.meta.stream, event.event_type)
        ]
        self._fold(decoded, lambda state, item: state.apply(item[0], item[1]))

    def query(self, name: str, args: str) -> str:
        """The JSON answer to query ``name``; raises ``PluginError``."""
        method = self.queries.get(name)
        if method is None:
            known = ", ".join(f"`{q}`" for q in self.queries) or "none"
            raise PluginError(f"unknown query `{name}` (queries: {known})")
        try:
            arguments = json.loads(args) if args.strip() else None
        except ValueError as error:
            raise PluginError(f"query arguments are not JSON: {error}") from None
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise PluginError(f"query arguments must be a JSON object, not {args}")
        hints = typing.get_type_hints(method)
        try:
            arguments = {k: codec.decode(hints[k], v, k) if k in hints else v for k, v in arguments.items()}
        except codec.DecodeError as error:
            raise PluginError(f"bad arguments for `{name}`: {error}") from None
        state = self.current
        try:
            return codec.to_json(method(_for_reading(state), **arguments))
        except (Invalid, Rejected) as error:
            raise PluginError(str(error)) from None
        except BaseException as error:
            raise PluginError(f"query `{name}` failed: {_logged(error, f'query {name}')}") from None
