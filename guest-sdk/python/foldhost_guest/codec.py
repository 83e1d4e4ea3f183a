"""Events and commands as dataclasses, and their wire form ``(type, JSON data)``.

A class's name is its type and its fields are the JSON object of its data;
a class without fields carries ``null`` (any well-formed data decodes to it):

======================================  =============  ================
Python value                            type           JSON data
======================================  =============  ================
``Deposited(amount=5)``                 ``Deposited``  ``{"amount":5}``
``Closed()``                            ``Closed``     ``null``
======================================  =============  ================

Decoding checks the data against the field annotations: ``str``, ``int``,
``u64`` (an ``int`` in 0..2**64-1), ``float``, ``bool``, ``Any``,
``Optional[T]`` / ``T | None``, ``list[T]``, ``dict[K, T]``,
``Literal[...]`` and nested dataclasses. A missing field without a default
is an error; unknown fields are ignored. Python integers are exact, so u64
values survive without loss. A ``float`` must be finite (``1e400`` is an
error, as in the Rust SDK), and a ``Literal`` matches by JSON type too
(``Literal[1]`` refuses ``true`` and ``1.0``).

JSON object keys are strings, so ``dict`` keys may be ``str``, ``int`` or
``u64``: integer keys are written as their decimal digits (``{5: x}`` as
``{"5": x}``) and read back as integers, so a snapshot of ``dict[int, T]``
restores the same keys. Any other key type is refused with a ``TypeError``.
"""

import dataclasses
import json
import math
import re
import types
import typing
from typing import Any, Callable, Literal, NewType, Union

__all__ = ["u64", "U64_MAX", "DecodeError", "decode", "decode_message", "encode", "encode_message", "to_json"]

#: An unsigned 64-bit integer field, as the Rust SDK's ``u64``.
u64 = NewType("u64", int)
U64_MAX = 2**64 - 1

Decoder = Callable[[Any, str], Any]


class DecodeError(ValueError):
    """Data that does not fit the declared type."""


_decoders: dict = {}


def decode(annotation: Any, value: Any, where: str = "value") -> Any:
    """Checks the JSON ``value`` against ``annotation`` and builds it."""
    return _decoder(annotation)(value, where)


def _decoder(annotation: Any) -> Decoder:
    try:
        return _decoders[annotation]
    except (KeyError, TypeError):
        pass
    decoder = _compile(annotation)
    try:
        _decoders[annotation] = decoder
    except TypeError:  # unhashable annotation: compile it every time
        pass
    return decoder


def _fail(where: str, expected: str, value: Any) -> DecodeError:
    return DecodeError(f"{where}: expected {expected}, got {json.dumps(value)[:80]}")


def _compile(annotation: Any) -> Decoder:
    if annotation is Any or annotation is object:
        return lambda value, where: value
    if annotation is u64:
        def decode_u64(value, where):
            if type(value) is int and 0 <= value <= U64_MAX:
                return value
            raise _fail(where, "an unsigned 64-bit integer", value)
        return decode_u64
    if annotation in (None, type(None)):
        def decode_none(value, where):
            if value is None:
                return None
            raise _fail(where, "null", value)
        return decode_none
    if annotation in (str, int, bool):
        names = {str: "a string", int: "an integer", bool: "true or false"}

        def decode_exact(value, where, kind=annotation, name=names[annotation]):
            if type(value) is kind:
                return value
            raise _fail(where, name, value)
        return decode_exact
    if annotation is float:
        def decode_float(value, where):
            if type(value) in (int, float):
                try:
                    number = float(value)
                except OverflowError:  # an integer literal beyond the float range
                    number = math.inf
                if math.isfinite(number):
                    return number
            raise _fail(where, "a finite number", value)
        return decode_float
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return _compile_dataclass(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        options = [_decoder(arg) for arg in args if arg is not type(None)]
        nullable = len(options) < len(args)

        def decode_union(value, where):
            if value is None and nullable:
                return None
            errors = []
            for option in options:
                try:
                    return option(value, where)
                except DecodeError as error:
                    errors.append(str(error))
            raise DecodeError(" / ".join(errors))
        return decode_union
    if origin is Literal:
        def decode_literal(value, where):
            if any(_same_literal(value, arg) for arg in args):
                return value
            raise _fail(where, "one of " + ", ".join(json.dumps(a) for a in args), value)
        return decode_literal
    if origin in (list, typing.List) or annotation is list:
        item = _decoder(args[0] if args else Any)

        def decode_list(value, where):
            if type(value) is not list:
                raise _fail(where, "a list", value)
            return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return decode_list
    if origin in (dict, typing.Dict) or annotation is dict:
        key = _key_decoder(args[0] if args else Any)
        item = _decoder(args[1] if args else Any)

        def decode_dict(value, where):
            if type(value) is not dict:
                raise _fail(where, "an object", value)
            return {key(k, where): item(v, f"{where}.{k}") for k, v in value.items()}
        return decode_dict
    raise TypeError(f"foldhost_guest.codec cannot decode the type {annotation!r}")


def _same_literal(value: Any, arg: Any) -> bool:
    """``value == arg`` without Python's ``True == 1 == 1.0``: JSON types must agree."""
    if arg is None or isinstance(arg, bool):
        return value is arg
    if isinstance(arg, int):
        return type(value) is int and value == arg
    if isinstance(arg, str):
        return type(value) is str and value == arg
    return type(value) is not bool and value == arg


#: The decimal digits ``_key`` writes for an integer (no "+", "05", "1_0", " 5").
_INTEGER_KEY = re.compile(r"-?(?:0|[1-9][0-9]*)")


def _key_decoder(annotation: Any) -> Decoder:
    """Reads a JSON object key back into the ``dict``'s key type (``_key``'s inverse)."""
    if annotation in (Any, object, str):
        return lambda key, where: key
    if annotation in (int, u64):
        unsigned = annotation is u64
        name = "an unsigned 64-bit integer" if unsigned else "an integer"

        def decode_integer_key(key, where):
            if _INTEGER_KEY.fullmatch(key):
                try:
                    number = int(key)
                except ValueError:  # beyond int's string conversion limit
                    pass
                else:
                    if not unsigned or 0 <= number <= U64_MAX:
                        return number
            raise _fail(where, f"{name} as the key", key)
        return decode_integer_key
    raise TypeError(
        f"foldhost_guest.codec: dict keys must be str, int or u64 (JSON object keys are strings), not {annotation!r}")


def _compile_dataclass(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        fields.append((field.name, _decoder(hints.get(field.name, Any)), required))

    def decode_dataclass(value, where):
        if type(value) is not dict:
            raise _fail(where, f"an object for {cls.__name__}", value)
        arguments = {}
        for name, decoder, required in fields:
            if name in value:
                arguments[name] = decoder(value[name], f"{where}.{name}")
            elif required:
                raise DecodeError(f"{where}: missing field `{name}`")
        return cls(**arguments)
    return decode_dataclass


def encode(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses become objects, sets sorted lists."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_key(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(encode(v) for v in value)
    if isinstance(value, (str, int, float)):  # subclasses (str enums, u64 ...)
        return value
    raise TypeError(f"{type(value).__name__} cannot be written as JSON")


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int):
        return json.dumps(key)
    raise TypeError(f"a {type(key).__name__} cannot be a JSON object key")


def to_json(value: Any) -> str:
    """Compact JSON, as the Rust SDK writes it."""
    return json.dumps(encode(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_message(cls: type, data: bytes) -> Any:
    """Builds an event or command of class ``cls`` from its JSON ``data``."""
    text = bytes(data).strip()
    try:
        value = json.loads(text) if text else None
    except (ValueError, UnicodeDecodeError) as error:
        raise DecodeError(f"{cls.__name__}: the data is not JSON: {error}") from None
    if not dataclasses.fields(cls):
        return cls()
    return _decoder(cls)(value, cls.__name__)


def encode_message(message: Any) -> tuple:
    """``(type, JSON data)`` of an event or command."""
    if not dataclasses.is_dataclass(message) or isinstance(message, type):
        raise TypeError(f"{message!r} is not an instance of a dataclass")
    data = to_json(message) if dataclasses.fields(message) else "null"
    return type(message).__name__, data.encode()
