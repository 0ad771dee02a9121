"""One value check for every typed config: the study spec and the trainer's config tree.

The rule and the value go into the ``ValueError``'s message (the caller adds the place), and a
YAML pitfall gets a pointed hint: PyYAML reads ``1e-5`` as a string.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal


def coerce(value: Any, tp: Any, *, integral_floats: bool = False) -> Any:
    """``value`` checked against the annotation ``tp`` (and converted where lossless).

    Args:
        value: what the YAML, a flag or a sampler gave.
        tp: a type annotation: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``,
            ``X | None``, ``dict[...]``; other annotations pass the value through.
        integral_floats: accept ``3.0`` for an ``int`` (values that went through a float).

    Raises:
        ValueError: the rule and the value, e.g. ``must be an integer, but got 'a'``.
    """
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"must be one of {list(choices)}, but got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        if value is None:
            return None
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return coerce(value, inner, integral_floats=integral_floats)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, but got {value!r}")
        return value
    if tp is int:
        whole = isinstance(value, int) or (integral_floats and isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            raise ValueError(f"must be an integer, but got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            raise ValueError(float_string_message(value))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, but got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, but got {value!r}")
        return value
    if origin is dict:
        if value is None:  # an empty `key:` line
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping, but got {value!r}")
        return dict(value)
    return value


def float_string_message(value: str) -> str:
    """The message for a number YAML read as a string (``1e-5``: PyYAML needs a dot)."""
    try:
        float(value)
    except ValueError:
        return f"must be a number, but got the string {value!r}"
    return f"must be a number, but got the string {value!r} (PyYAML reads it as a string: write {dotted(value)})"


def dotted(value: str) -> str:
    """``1e-5`` -> ``1.0e-5``: the spelling PyYAML reads as a float."""
    mant, _, exp = value.lower().partition("e")
    if "." not in mant:
        mant += ".0"
    return f"{mant}e{exp}" if exp else mant
