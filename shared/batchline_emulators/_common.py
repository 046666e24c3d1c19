"""What the provider emulators share beyond HTTP: checked config overrides (quota limits
per model among them), the schedule a batch's lines finish on (with a test's hold on it,
and a test's early expiry of it), and the deterministic hashes, fractions and token
estimates their answers are made of."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

#: name -> (type, nullable, minimum, maximum); the type `PerModel` for a `ModelLimit`.
ConfigRules = dict[str, tuple[type, bool, float | None, float | None]]

#: A quota knob: None (no limit), one number for every model, or an object {model: number}
#: in which the key "*" gives every model not named (without "*" those have no limit).
ModelLimit = int | dict[str, int] | None

#: The key of a `ModelLimit` object that applies to the models it does not name.
ANY_MODEL = "*"


class PerModel:
    """The type, in `ConfigRules`, of a `ModelLimit` knob (its minimum bounds each number)."""


def limit_for(limit: ModelLimit, model: str) -> int | None:
    """The limit `limit` sets for `model`; None when it sets none."""
    if limit is None or isinstance(limit, int):
        return limit
    return limit.get(model, limit.get(ANY_MODEL))


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
    """`value` checked (and normalised: an integral float becomes an int) for the config
    key `name`; ValueError naming the key and the rule it breaks."""
    kind, nullable, lo, hi = rules[name]
    if value is None:
        if nullable:
            return None
        raise ValueError(f"config {name} must not be null")
    if kind is PerModel:
        return _check_model_limit(name, value, lo, hi)
    return _check_number(name, value, kind, lo, hi)


def _check_model_limit(name: str, value: Any, lo: float | None, hi: float | None) -> ModelLimit:
    if not isinstance(value, Mapping):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f'config {name} must be null, a number or an object {{"<model>": number}}'
            )
        checked: int = _check_number(name, value, int, lo, hi)
        return checked
    limits: dict[str, int] = {}
    for model, limit in value.items():
        if not isinstance(model, str) or not model:
            raise ValueError(f"config {name} must name models by non-empty strings")
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise ValueError(f"config {name}.{model} must be a number")
        limits[model] = _check_number(f"{name}.{model}", limit, int, lo, hi)
    return limits


def _check_number(name: str, value: Any, kind: type, lo: float | None, hi: float | None) -> Any:
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


@dataclass
class Hold:
    """A test's hold on one batch: its first `after` lines (in processing order) finish on
    schedule, the rest wait until `POST /_emulator/release`, then follow at the same pace.

    A batch takes its hold from the config's `hold_after_lines` when it is created (None:
    never held; 0: held before its first line). While held it stays running whatever the
    clock says, so a test sees "N of M lines answered, still running" without racing a
    wall-clock schedule; cancel and expiry still apply to a held batch, as to any other.
    """

    after: int | None = None
    released_at: float | None = None

    def delay(self, start: float, rate: float, total: int) -> float:
        """How much later than scheduled the lines past the hold finish (inf until released)."""
        if self.after is None or self.after >= total:
            return 0.0
        if self.released_at is None:
            return math.inf
        return max(0.0, self.released_at - (start + self.after / rate))

    def done(self, t: float, start: float, rate: float, total: int) -> int:
        """Lines finished by `t` when line i (0-based) is due at start + (i + 1) / rate."""
        if t < start:
            return 0
        n = _lines_by(t - start, rate)
        if self.after is not None and n > self.after:
            late = self.delay(start, rate, total)
            resumed = 0 if math.isinf(late) else _lines_by(t - late - start, rate)
            n = max(self.after, resumed)
        n = min(total, max(0, n))
        # The estimate may be a line off in float rounding (times near 1.8e9 s carry ~1e-7
        # s of it): settle it on `finished_at`, so that the lines done at the instant a
        # line finishes (an expiry right after it, say) include that line.
        while n < total and self.finished_at(n, start, rate, total) <= t:
            n += 1
        while n > 0 and self.finished_at(n - 1, start, rate, total) > t:
            n -= 1
        return n

    def finished_at(self, index: int, start: float, rate: float, total: int) -> float:
        """When the line at processing position `index` finishes (inf while it is held)."""
        due = start + (index + 1) / rate
        if self.after is not None and index >= self.after:
            due += self.delay(start, rate, total)
        return due

    def end(self, start: float, rate: float, total: int) -> float:
        """When the last line finishes (inf while lines are held)."""
        return start + total / rate + self.delay(start, rate, total)

    def holding(self, t: float, start: float, rate: float, total: int) -> bool:
        """True when the batch has answered its `after` lines and waits for a release."""
        if self.after is None or not math.isinf(self.delay(start, rate, total)):
            return False
        return t >= start + self.after / rate


@dataclass
class Expiry:
    """A test's early end for one batch, exactly as if its window had passed: right after
    its first `after_lines` lines (in processing order) finish, or at `requested_at`
    (``POST /_emulator/expire``), whichever comes first; neither set: only the window.

    A batch takes `after_lines` from the config's `expire_after_lines` when it is created
    (see `early_expiry`). Line `after_lines` finishes on the hold's schedule, so a hold
    short of it puts the expiry off until the release; a batch of no more lines than
    `after_lines` runs to its end as usual.
    """

    after_lines: int | None = None
    requested_at: float | None = None

    def at(self, hold: Hold, start: float, rate: float, total: int) -> float:
        """When the batch expires early (inf when it does not, or not yet known)."""
        t = math.inf if self.requested_at is None else self.requested_at
        n = self.after_lines
        if n is not None and n < total:
            t = min(t, start if n == 0 else hold.finished_at(n - 1, start, rate, total))
        return t


def early_expiry(after_lines: int | None, next_batches: int | None) -> tuple[Expiry, int | None]:
    """The `Expiry` a batch created now takes from the config's `expire_after_lines` and
    `expire_next_batches`, and what `expire_next_batches` becomes.

    `expire_next_batches` None: every batch created while `expire_after_lines` is set
    expires after that many lines; a number K: only the next K batches do (each takes one),
    later ones run as usual, so a test can expire one batch among several it cannot name.
    """
    if after_lines is None or next_batches == 0:
        return Expiry(), next_batches
    return Expiry(after_lines), None if next_batches is None else next_batches - 1


def _lines_by(elapsed: float, rate: float) -> int:
    return math.floor(elapsed * rate + 1e-9)


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
