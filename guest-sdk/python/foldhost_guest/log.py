"""Log lines in the host's ``tracing`` log, tagged with the plugin.

Natively (tests) lines go to stderr. ``print`` goes nowhere inside a plugin.
"""

import sys

__all__ = ["trace", "debug", "info", "warn", "error"]

_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


def _native(level: int, message: str) -> None:
    print(f"{_LEVELS[level]} {message}", file=sys.stderr)


_write = _native


def _use_host(write) -> None:
    """Routes lines to the host (called by the WIT glue)."""
    global _write
    _write = write


def trace(message: str) -> None:
    _write(0, message)


def debug(message: str) -> None:
    _write(1, message)


def info(message: str) -> None:
    _write(2, message)


def warn(message: str) -> None:
    _write(3, message)


def error(message: str) -> None:
    _write(4, message)
