"""Write foldhost plugins, aggregates and projections, in Python.

A plugin is a WebAssembly component implementing one world of the contract
``foldhost:plugin@0.1.0``; ``foldhost plugins build`` turns a project using
this package into one with componentize-py. Subclass ``Aggregate`` or
``Projection`` and ``export`` the class once::

    from dataclasses import dataclass
    from foldhost_guest import Aggregate, Rejected, export, u64

    @dataclass
    class Added:
        by: u64

    @dataclass
    class Add:
        by: u64

    @export
    class Counter(Aggregate):
        name = "counter"              # streams are counter-{id}
        version = "1.0.0"
        events = (Added,)
        commands = (Add,)

        def __init__(self):
            self.value = 0

        def apply(self, event):
            self.value += event.by

        def handle(self, command):
            if command.by == 0:
                raise Rejected("nothing to add")
            return [Added(by=command.by)]

Events and commands are dataclasses: the class name is the type, the fields
its JSON data, checked against their annotations (see ``codec``; ``u64`` for
unsigned 64-bit integers, exact in Python). The state's JSON and its snapshot
default to the instance attributes; ``restore`` decodes those you annotate
in your class (``items: dict[str, Item]``) and leaves the others as JSON.
Override ``state``, ``snapshot`` and ``restore`` (and bump ``state_schema``)
to change that.

``handle`` decides without changing the state: it runs on a copy, so
anything it changes on ``self`` is discarded (as with queries); only
``apply`` changes the state.

Exceptions never trap the component: ``Rejected`` answers HTTP 422,
``Invalid``, undecodable data or any other exception in ``handle`` answers
400 (with the traceback in the host log), an exception in ``apply`` fails
the call with its reason. See ``runtime``.

A ``Projection`` has a ``subscription``, ``apply(event, meta)`` with an
``EventMeta`` (stream, version, position, recorded_at, metadata) and named
queries: methods marked ``@query``, called with the query's arguments.

Plugins must be deterministic: no clock, no randomness, no I/O (see
``determinism``). Log with ``foldhost_guest.log``.
"""

from . import determinism, log
from .codec import U64_MAX, DecodeError, u64
from .determinism import NondeterminismError
from .plugin import Aggregate, EventMeta, Invalid, Projection, Rejected, Subscription, export, query

__all__ = [
    "Aggregate",
    "Projection",
    "Rejected",
    "Invalid",
    "Subscription",
    "EventMeta",
    "export",
    "query",
    "u64",
    "U64_MAX",
    "DecodeError",
    "NondeterminismError",
    "log",
    "determinism",
]
