"""Test plugin ``python-hostile``: command handlers that fail the ways an
author's Python can, to show each becomes a clear answer (or, for an endless
loop, a contained trap) while the instance keeps serving ``Ping``.

Commands: ``Divide`` (ZeroDivisionError), ``Clock`` (reads time.time()),
``Random`` (random.random()), ``Exit`` (sys.exit), ``Loop`` (never returns),
``Refuse`` (Rejected), ``Ping`` (records a Pinged event).
"""

import random
import sys
import time
from dataclasses import dataclass

from foldhost_guest import Aggregate, Rejected, export


@dataclass
class Pinged:
    pass


@dataclass
class Divide:
    by: int


@dataclass
class Clock:
    pass


@dataclass
class Random:
    pass


@dataclass
class Exit:
    pass


@dataclass
class Loop:
    pass


@dataclass
class Refuse:
    pass


@dataclass
class Ping:
    pass


@export
class Hostile(Aggregate):
    name = "python-hostile"
    version = "1.0.0"
    events = (Pinged,)
    commands = (Divide, Clock, Random, Exit, Loop, Refuse, Ping)

    def __init__(self):
        self.pings = 0

    def apply(self, event):
        self.pings += 1

    def handle(self, command):
        match command:
            case Divide(by):
                return [Pinged()] * (1 // by)
            case Clock():
                return [Pinged()] * int(time.time() % 2)
            case Random():
                return [Pinged()] * int(random.random() * 2)
            case Exit():
                sys.exit("bye")
            case Loop():
                while True:
                    pass
            case Refuse():
                raise Rejected("refused on purpose")
            case Ping():
                return [Pinged()]
