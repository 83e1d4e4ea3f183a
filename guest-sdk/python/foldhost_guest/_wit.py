"""The component's exports for componentize-py: converts the WIT types of
``wit_world`` to and from ``runtime``. The build names these classes in the
app module it generates; plugin authors never import this module."""

from componentize_py_types import Err
from wit_world.imports import host, types

from . import log, plugin, runtime

_LEVELS = (host.Level.TRACE, host.Level.DEBUG, host.Level.INFO, host.Level.WARN, host.Level.ERROR)
log._use_host(lambda level, message: host.log(_LEVELS[level], message))


def _events(batch: "types.Batch") -> list:
    buffer = batch.buffer
    json_type = types.ContentType.JSON

    def text(span):
        return buffer[span.offset : span.offset + span.len].decode()

    return [
        runtime.RawEvent(
            text(e.event_type),
            e.content_type == json_type,
            buffer[e.data.offset : e.data.offset + e.data.len],
            plugin.EventMeta(
                text(e.stream),
                e.version,
                e.position,
                e.recorded_at,
                buffer[e.metadata.offset : e.metadata.offset + e.metadata.len],
            ),
        )
        for e in batch.events
    ]


def _failing(call):
    """Runs ``call``, turning a ``PluginError`` into the contract's ``Err``."""
    try:
        return call()
    except runtime.PluginError as error:
        raise Err(str(error)) from None


def _describe(kind) -> "types.Description":
    cls = plugin.exported()
    return types.Description(cls.name, kind, cls.version, cls.state_schema)


_aggregate = None
_projection = None


def _aggregate_runtime() -> runtime.AggregateRuntime:
    global _aggregate
    if _aggregate is None:
        _aggregate = runtime.AggregateRuntime(plugin.exported())
    return _aggregate


def _projection_runtime() -> runtime.ProjectionRuntime:
    global _projection
    if _projection is None:
        _projection = runtime.ProjectionRuntime(plugin.exported())
    return _projection


class Aggregate:
    """``foldhost:plugin/aggregate``."""

    def describe(self):
        return _describe(types.PluginKind.AGGREGATE)

    def init(self, snapshot):
        _failing(lambda: _aggregate_runtime().init(snapshot))

    def apply(self, events):
        _failing(lambda: _aggregate_runtime().apply(_events(events)))

    def handle(self, command_type, data):
        try:
            decided = _aggregate_runtime().handle(command_type, data)
        except plugin.Rejected as error:
            raise Err(types.CommandError_Rejected(str(error))) from None
        except (plugin.Invalid, runtime.PluginError) as error:
            raise Err(types.CommandError_Invalid(str(error))) from None
        return [types.NewEvent(event_type, types.ContentType.JSON, data) for event_type, data in decided]

    def snapshot(self):
        return _aggregate_runtime().snapshot()

    def state(self):
        return _aggregate_runtime().state_json()


class Projection:
    """``foldhost:plugin/projection``."""

    def describe(self):
        return _describe(types.PluginKind.PROJECTION)

    def subscription(self):
        subscription = plugin.exported().subscription
        return types.Subscription(list(subscription.event_types), list(subscription.categories))

    def init(self, snapshot):
        _failing(lambda: _projection_runtime().init(snapshot))

    def apply(self, events):
        _failing(lambda: _projection_runtime().apply(_events(events)))

    def snapshot(self):
        return _projection_runtime().snapshot()

    def state(self):
        return _projection_runtime().state_json()

    def query(self, name, args):
        return _failing(lambda: _projection_runtime().query(name, args))
