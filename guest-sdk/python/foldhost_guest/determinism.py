"""Replaying the same events must give the same state, so a plugin has no
clock and no randomness. The contract offers neither (no WASI), and inside a
component this module turns their Python entry points into a clear
``NondeterminismError`` instead of an opaque trap. Use the event's
``meta.recorded_at`` for time.

Installed when the SDK is imported inside WebAssembly (``sys.platform ==
"wasi"``), never natively, where tests need the real clock.
"""

import sys

__all__ = ["NondeterminismError", "install"]


class NondeterminismError(RuntimeError):
    """A plugin called a clock or a random source."""


def _refuse(what: str, instead: str):
    def refused(*args, **kwargs):
        raise NondeterminismError(f"{what} is not available in a foldhost plugin: folds must be deterministic; {instead}")

    refused.__name__ = what
    return refused


_CLOCK = "use the event's meta.recorded_at (milliseconds since the epoch)"
_RANDOM = "derive values from the events instead"


def install() -> None:
    """Replaces the clock and random sources of ``time``, ``random`` and ``os``."""
    import os
    import random
    import time

    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
                 "process_time", "process_time_ns", "localtime", "gmtime", "ctime", "sleep"):
        if hasattr(time, name):
            setattr(time, name, _refuse(f"time.{name}()", _CLOCK))
    for name in ("random", "randint", "randrange", "choice", "choices", "shuffle", "sample", "uniform",
                 "getrandbits", "randbytes", "gauss", "seed"):
        if hasattr(random, name):
            setattr(random, name, _refuse(f"random.{name}()", _RANDOM))
    for name in ("urandom", "getrandom"):
        if hasattr(os, name):
            setattr(os, name, _refuse(f"os.{name}()", _RANDOM))
    # The C datetime reads the clock directly (a trap without WASI); the
    # pure-Python one calls time.time(), refused above with a clear message.
    if "datetime" not in sys.modules:
        sys.modules["_datetime"] = None


if sys.platform == "wasi":
    install()
