"""Shared pieces of the config dataclasses: the error type and the field checks."""

from __future__ import annotations

import decimal
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


_SECTIONS = {"ModelConfig": "model", "DataConfig": "data", "TrainConfig": "train"}


def _coerce(key: str, annotation: str, value: Any) -> Any:
    ann = str(annotation).replace(" ", "")
    optional = "None" in ann
    base = ann.replace("|None", "").replace("None|", "")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if not optional:
            raise ConfigError(f"{key} cannot be null")
        return None
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if base == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():  # 2.5, nan and inf too
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():  # 1e3 is an integer, 2.5e0 and 1e999 are not
                exact = decimal.Decimal(value.strip())
                if not exact.is_finite() or exact != exact.to_integral_value():
                    raise ValueError
                return int(exact)
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if base.startswith(("dict", "list", "tuple")) and isinstance(value, str):
            from .yaml_text import load_yaml_text  # a mapping or list on the command line, e.g. '{ff_mult: [4, 2]}'

            try:
                return load_yaml_text(value, key)
            except ConfigError:
                raise ValueError from None
    except (TypeError, ValueError, ArithmeticError):  # ArithmeticError: decimal's and int(inf)'s
        raise ConfigError(f"{key} must be of type {base}, got {value!r}") from None
    return value


def _positive(obj, *names: str) -> None:
    sec = _section(obj)
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{sec}.{name} must be a positive integer, got {v!r}")


def _choice(obj, name: str, allowed: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if v not in allowed:
        raise ConfigError(f"{_section(obj)}.{name}={v!r} is not one of: {', '.join(allowed)}")


def _section(obj) -> str:
    return _SECTIONS[type(obj).__name__]


def _finite_and_in_range(obj) -> None:
    """Every float field finite (nan, inf and 1e999 are refused: a nan limit never fires, a nan
    rate trains nothing) and every integer field within a 64-bit signed integer (seeds, sizes)."""
    import dataclasses
    import math

    sec = _section(obj)
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{sec}.{f.name} must be a finite number, got {v}")
        if isinstance(v, int) and not isinstance(v, bool) and not (-2**63 <= v < 2**63):
            raise ConfigError(f"{sec}.{f.name}={v} is outside the 64-bit integer range [-2**63, 2**63)")
