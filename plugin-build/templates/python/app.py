"""The `{{name}}` aggregate: a counter (streams `{{name}}-{id}`).

`foldhost plugins build` turns this project into `{{name}}.wasm`.
"""

from dataclasses import dataclass

from foldhost_guest import Aggregate, Rejected, export, u64


@dataclass
class Added:
    by: u64


@dataclass
class Reset:
    pass


@dataclass
class Add:
    by: u64


@export
class Counter(Aggregate):
    name = "{{name}}"
    version = "0.1.0"
    events = (Added, Reset)
    commands = (Add, Reset)

    def __init__(self):
        self.value = 0

    def apply(self, event):
        self.value = 0 if isinstance(event, Reset) else self.value + event.by

    def handle(self, command):
        if isinstance(command, Reset):
            return [Reset()]
        if command.by == 0:
            raise Rejected("nothing to add")
        return [Added(command.by)]
