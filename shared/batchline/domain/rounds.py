"""Follow-up rounds: which lines are sent again, why, and to which model. Pure.

A round is a set of lines sent again after a collect, with a reason and a target:

- `repair`: an answer that failed its schema, asked again of the same model with what
  was wrong with it (`services/repair.py`);
- `retry`: a line that failed for a passing reason (a 5xx, 429 or 529 in its result, an
  `errored` result of a retryable type, a transient row failure, an expired batch) sent
  again to the same model, at most `max_retries` times per model;
- `failover`: a line that still fails after its retries, or whose whole batch failed
  (refused at validation, failed, cancelled by the provider, queued too long), sent to
  the next model of its chain: the line's own (`model: auto`), else the job's `fallback`.

Rounds are numbered 1, 2, ... after the first (0) and planned by the one chunk planner.
Answers that came back are never asked again; a job being canceled starts no round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from batchline.domain.models import ResultStatus
from batchline.domain.results import SCHEMA_VALIDATION


class RoundReason(StrEnum):
    """Why a line was sent (each attempt of a result line names one)."""

    FIRST = "first"
    REPAIR = "repair"
    RETRY = "retry"
    FAILOVER = "failover"


#: Error types that mean the line's whole batch did not run: no point asking the same
#: model again, the line fails over at once.
WHOLE_BATCH_ERRORS = frozenset({"batch_failed", "batch_canceled", "submit_failed", "queue_timeout"})
#: Errors no other round can help: the job was canceled.
FINAL_ERRORS = frozenset({"job_canceled"})
#: The default of the `max_retries` option.
DEFAULT_MAX_RETRIES = 1


@dataclass(frozen=True)
class NextStep:
    """What happens to a failed line next: sent again for `reason` to `target`
    (`provider/model`); for a failover, `chain` is every model left to try, in order
    (the first that can take the line is used)."""

    reason: RoundReason
    target: str
    chain: tuple[str, ...] = ()


def chain_after(current: str, chain: Sequence[str]) -> tuple[str, ...]:
    """The models of `chain` after `current` (`provider/model`), in order, without
    `current` or repeats; all of them when `current` is not in it."""
    names = list(dict.fromkeys(chain))
    if current in names:
        names = names[names.index(current) + 1 :]
    return tuple(n for n in names if n != current)


def attempts_at(attempts: Sequence[dict[str, Any]], target: str, reason: RoundReason) -> int:
    """How many of `attempts` were sent for `reason` to model `target` (`provider/model`).
    An attempt recorded before attempts named their model and reason counts as a repair
    at any model (repairs were the only follow-ups then)."""
    count = 0
    for a in attempts:
        if "reason" not in a:
            count += reason is RoundReason.REPAIR and a is not attempts[0]
        elif a["reason"] == reason and f"{a.get('provider')}/{a.get('model')}" == target:
            count += 1
    return count


def next_step(
    record: dict[str, Any],
    chain: Sequence[str],
    *,
    max_retries: int,
    repairs_left: bool,
) -> NextStep | None:
    """What to do with result line `record` (as collect made it) whose model may hand
    over to the models of `chain` (the line's, or the job's `fallback`); None: it stands.

    `repairs_left`: a schema failure will be repaired (a repair round owns it) rather
    than failed over.
    """
    status = record["status"]
    if status == ResultStatus.SUCCEEDED or status == ResultStatus.INVALID:
        return None
    error = record.get("error") or {}
    kind = error.get("type")
    if kind in FINAL_ERRORS:
        return None
    if kind == SCHEMA_VALIDATION and repairs_left:
        return None
    current = f"{record['provider']}/{record['model']}"
    passing = kind not in WHOLE_BATCH_ERRORS and (
        error.get("retryable") is True or status == ResultStatus.EXPIRED
    )
    if (
        passing
        and attempts_at(record.get("attempts") or (), current, RoundReason.RETRY) < max_retries
    ):
        return NextStep(RoundReason.RETRY, current)
    rest = chain_after(current, chain)
    if not rest:
        return None
    return NextStep(RoundReason.FAILOVER, rest[0], rest)


def not_moved_note(reasons: Sequence[str]) -> str:
    """What a line's error adds when it could fail over to no model: why, per model."""
    return "not failed over: " + "; ".join(reasons)
