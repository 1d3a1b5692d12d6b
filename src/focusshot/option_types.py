"""Option values checked against the types their dataclass declares.

Values from ``--set`` and options files arrive as JSON (``8``, ``1e-3``, ``true``, ``"box"``,
``[1, 2]``); a dataclass does not check them, so a string given for a learning rate used to pass
creation and fail deep inside a fit. :func:`check_option_types` refuses such a value when the
options are built, naming the option, its declared type and the value.

JSON has one number type, so an integer is accepted where a float is declared (``--set
protonet.temperature=2``), and a list where a tuple is; booleans are never numbers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["check_option_types", "conforms", "type_name"]


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as JSON would give it) is a valid value of the annotation ``tp``."""
    if tp is Any or tp is object:
        return True
    if tp is type(None) or tp is None:
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        return all(conforms(v, item) for v in value)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not model (a TypeVar, a forward reference)


def type_name(tp: Any) -> str:
    """A short readable name of an annotation (``float``, ``tuple[str, ...]``, ``int | None``)."""
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def check_option_types(options_cls: type, values: Mapping[str, Any], method: str = "") -> None:
    """Raise ``ValueError`` naming the first of ``values`` whose value does not fit the type
    ``options_cls`` (a dataclass) declares for it. Names that are not fields are left to the
    caller's unknown-option check."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name for f in dataclasses.fields(options_cls) if f.init}
    for key, value in values.items():
        if key not in fields or key not in hints:
            continue
        if not conforms(value, hints[key]):
            who = f"method {method!r}" if method else options_cls.__name__
            raise ValueError(
                f"option {key!r} of {who} must be {type_name(hints[key])}, got {value!r} "
                f"({type(value).__name__})"
            )
