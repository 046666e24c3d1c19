"""What the provider emulators share beyond HTTP: checked config overrides, and the
deterministic hashes, fractions and token estimates their answers are made of."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from typing import Any, TypeVar

#: name -> (type, nullable, minimum, maximum)
ConfigRules = dict[str, tuple[type, bool, float | None, float | None]]

_Config = TypeVar("_Config")


def merged_config(config: _Config, overrides: Mapping[str, Any], rules: ConfigRules) -> _Config:
    """A copy of the dataclass `config` with `overrides` applied; ValueError on unknown
    keys or on values that break `rules`."""
    if not isinstance(overrides, Mapping):
        raise ValueError("config overrides must be a JSON object")
    known = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)}")
    values = {name: check_config_value(rules, name, value) for name, value in overrides.items()}
    return dataclasses.replace(config, **values)  # type: ignore[type-var]


def check_config_value(rules: ConfigRules, name: str, value: Any) -> Any:
    kind, nullable, lo, hi = rules[name]
    if value is None:
        if nullable:
            return None
        raise ValueError(f"config {name} must not be null")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config {name} must be a number")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"config {name} must be an integer")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"config {name} must be finite")
    if lo is not None and value < lo:
        raise ValueError(f"config {name} must be >= {lo}")
    if hi is not None and value > hi:
        raise ValueError(f"config {name} must be <= {hi}")
    return value


def hex_digest(*parts: object, n: int = 32) -> str:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return digest[:n]


def fraction(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def tokens(chars: int) -> int:
    """~4 characters per token, at least 1."""
    return max(1, (chars + 3) // 4)
