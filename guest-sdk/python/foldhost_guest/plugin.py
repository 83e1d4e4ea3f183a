"""What a plugin author writes: an ``Aggregate`` or a ``Projection`` subclass,
exported once with ``export``."""

import dataclasses
import json
import typing
from typing import Any, Callable, Optional, Sequence

from . import codec

__all__ = ["Aggregate", "Projection", "Rejected", "Invalid", "Subscription", "EventMeta", "query", "export", "exported"]


class Rejected(Exception):
    """The command was understood and refused by business rules (HTTP 422)."""


class Invalid(Exception):
    """The command cannot be decided as sent: malformed or meaningless (HTTP 400)."""


@dataclasses.dataclass(frozen=True)
class Subscription:
    """Which events a projection wants.

    An event is delivered when its type is listed (or ``event_types`` is empty)
    **and** its stream is in a listed category (or ``categories`` is empty); a
    stream ``{category}-{id}`` belongs to ``category``.
    """

    event_types: Sequence[str] = ()
    categories: Sequence[str] = ()

    def matches(self, stream: str, event_type: str) -> bool:
        """Whether an event of ``event_type`` in ``stream`` is wanted."""
        return (not self.event_types or event_type in self.event_types) and (
            not self.categories
            or any(stream.startswith(c) and stream[len(c) : len(c) + 1] == "-" for c in self.categories)
        )


class EventMeta:
    """Where an event sits in the log, and its metadata."""

    __slots__ = ("stream", "version", "position", "recorded_at", "_metadata")

    def __init__(self, stream: str, version: int, position: int, recorded_at: int, metadata: bytes = b""):
        #: The stream, e.g. ``bank-account-42``.
        self.stream = stream
        #: 1-based version within its stream.
        self.version = version
        #: 1-based position in the global log.
        self.position = position
        #: Milliseconds since the Unix epoch, as recorded by the journal.
        self.recorded_at = recorded_at
        self._metadata = metadata

    @property
    def metadata(self) -> dict:
        """The event's JSON metadata (``{}`` when it has none)."""
        raw = self._metadata
        if not isinstance(raw, dict):
            self._metadata = raw = json.loads(bytes(raw)) if raw else {}
        return raw

    def __repr__(self) -> str:
        return f"EventMeta(stream={self.stream!r}, version={self.version}, position={self.position})"


def query(method: Callable) -> Callable:
    """Marks a projection method as a named query: ``GET
    /projections/{plugin}/query/{method name}?k=v`` calls it with the
    arguments as keywords and answers its JSON-able result. It runs on a copy
    of the state: any change it makes is discarded."""
    method.__foldhost_query__ = True
    return method


class _State:
    """State encodings shared by aggregates and projections."""

    #: The plugin name (for an aggregate, its stream category too).
    name: str = ""
    #: The plugin's own release, free-form.
    version: str = "0.0.0"
    #: Bump whenever the snapshot encoding changes.
    state_schema: int = 1
    #: The event dataclasses this plugin folds; the class name is the type.
    events: Sequence[type] = ()

    def state(self) -> Any:
        """The state for readers, as JSON-able data; defaults to the attributes."""
        return vars(self)

    def snapshot(self) -> bytes:
        """The state for ``restore``; defaults to the attributes as JSON."""
        return codec.to_json(vars(self)).encode()

    @classmethod
    def restore(cls, snapshot: bytes):
        """Rebuilds the state from ``snapshot()``'s output. Attributes with a
        class annotation in the plugin's classes (``accounts: dict[str,
        Summary]``) are decoded through it, so nested dataclasses come back as
        dataclasses; the others come back as their JSON value. The SDK's own
        class settings (``name: str``, ``events``, ...) are not state
        annotations: a state attribute named ``name`` is decoded only through
        an annotation the plugin declares for it."""
        state = cls()
        hints = _state_hints(cls)
        for name, value in json.loads(bytes(snapshot)).items():
            setattr(state, name, codec.decode(hints[name], value, name) if name in hints else value)
        return state


class Aggregate(_State):
    """The write side of one stream: fold its events, decide commands.

    Subclass it with ``name``, ``version``, ``events`` and ``commands``
    (dataclasses), an ``__init__`` that sets the empty state, ``apply`` and
    ``handle``; then ``export`` it.
    """

    #: The command dataclasses this aggregate decides.
    commands: Sequence[type] = ()

    def apply(self, event: Any) -> None:
        """Folds one stored event into the state. Must not fail: the event is a fact."""
        raise NotImplementedError

    def handle(self, command: Any) -> list:
        """Decides a command against the state without changing it: returns the
        new events, or raises ``Rejected`` / ``Invalid``. It runs on a copy of
        the state, so any change it makes is discarded: only ``apply`` of the
        events it returns changes the state."""
        raise NotImplementedError


class Projection(_State):
    """A fold over the global log, with named queries (see ``query``).

    Events whose type is not in ``events`` are skipped, as are events outside
    ``subscription``.
    """

    #: Which events the host delivers.
    subscription: Subscription = Subscription()

    def apply(self, event: Any, meta: EventMeta) -> None:
        """Folds one event into the state."""
        raise NotImplementedError


#: The SDK's base classes, whose annotations describe class settings, not state.
_SDK_CLASSES = (_State, Aggregate, Projection)


def _state_hints(cls: type) -> dict:
    """The resolved annotations declared by ``cls`` and its bases up to, not
    including, the SDK's classes. (``typing.get_type_hints`` alone would add
    the SDK's ``name: str``, ``events: Sequence[type]``, ... and decode a state
    attribute of one of those names as that.)"""
    # A class's ``__annotations__`` are its own (Python 3.10+), not its bases'.
    declared = {
        name
        for klass in cls.__mro__
        if klass not in _SDK_CLASSES
        for name in getattr(klass, "__annotations__", {})
    }
    # Resolved for the whole class, so string annotations are evaluated in the
    # module of the class that declares them; then narrowed to the plugin's.
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name in declared if name in hints}


_exported: Optional[type] = None


def export(cls: type) -> type:
    """Makes ``cls`` (an ``Aggregate`` or ``Projection`` subclass) the plugin
    this component exports. Call it once, or use it as a class decorator."""
    global _exported
    if not (isinstance(cls, type) and issubclass(cls, (Aggregate, Projection))):
        raise TypeError(f"export() takes an Aggregate or Projection subclass, not {cls!r}")
    if _exported is not None and _exported is not cls:
        raise TypeError(f"export() was already called with {_exported.__name__}: one plugin per component")
    if not cls.name:
        raise TypeError(f"{cls.__name__}.name is not set (the plugin name, e.g. 'bank-account')")
    kinds = [("events", cls.events)] + ([("commands", cls.commands)] if issubclass(cls, Aggregate) else [])
    for attribute, classes in kinds:
        seen = set()
        for message in classes:
            if not (isinstance(message, type) and dataclasses.is_dataclass(message)):
                raise TypeError(f"{cls.__name__}.{attribute}: {message!r} is not a dataclass")
            if message.__name__ in seen:
                raise TypeError(f"{cls.__name__}.{attribute}: two classes are named {message.__name__}")
            seen.add(message.__name__)
    _exported = cls
    return cls


def exported() -> type:
    """The class given to ``export``."""
    if _exported is None:
        raise RuntimeError("no plugin is exported: call foldhost_guest.export(YourClass) in your module")
    return _exported
