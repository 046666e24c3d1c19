"""What a job's options allow a follow-up round to do with one collected line.

`RoundRules` is made once per collect from the job's options (`max_repair_attempts`,
`max_retries`, `fallback`) and whether the job is being canceled (then nothing is sent
again), and notes each line's follow-up as collect makes its result line
(`domain/rounds.py` decides retry and failover).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchline.bootstrap import Deps
from batchline.domain.models import Job
from batchline.domain.paths import WorkPaths
from batchline.domain.results import superseded
from batchline.domain.rounds import DEFAULT_MAX_RETRIES, RoundReason, attempts_at, next_step
from batchline.domain.schemas import SchemaCheck, repair_feedback
from batchline.domain.workfiles.manifest import ManifestEntry
from batchline.services.follow_ups import FollowUps
from batchline.services.repair import SchemaChecks


@dataclass
class RoundRules:
    """A job's limits on follow-up rounds, and its schema checks."""

    checks: SchemaChecks
    max_repairs: int
    max_retries: int
    fallback: tuple[str, ...]
    allowed: bool

    @classmethod
    def of(cls, deps: Deps, job: Job, paths: WorkPaths) -> RoundRules:
        """The rules of `job` (a job being canceled sends nothing again)."""
        options = job.options
        repairs = options.max_repair_attempts
        retries = options.max_retries
        return cls(
            SchemaChecks(deps, paths),
            deps.settings.max_repair_attempts if repairs is None else repairs,
            DEFAULT_MAX_RETRIES if retries is None else retries,
            options.fallback,
            job.cancel_requested_at is None,
        )

    def note(
        self,
        noted: FollowUps,
        line: int,
        entry: ManifestEntry,
        record: dict[str, Any],
        realtime_usd: float | None,
        check: SchemaCheck | None,
    ) -> bool:
        """Note what a round does with result line `record` of `line` (its manifest
        `entry`); True when the line is held for staging (it may fail over)."""
        if not self.allowed:
            return False
        attempts = record["attempts"]
        current = f"{record['provider']}/{record['model']}"
        violation = check.violation if check is not None else None
        next_entry = ManifestEntry(
            line,
            entry.custom_id,
            entry.schema,
            attempts,
            superseded(record, realtime_usd),
            entry.selected_by,
            entry.fallback,
        )
        repairs_left = attempts_at(attempts, current, RoundReason.REPAIR) < self.max_repairs
        if violation is not None and repairs_left:
            answer = record["output"]["text"] if record.get("output") else None
            noted.repairs[line] = (next_entry, answer or "", repair_feedback(violation))
            return False
        chain = entry.fallback or self.fallback
        step = next_step(record, chain, max_retries=self.max_retries, repairs_left=False)
        if step is None:
            return False
        if step.reason is RoundReason.RETRY:
            noted.retries[line] = next_entry
            return False
        noted.failovers[line] = (next_entry, step, record)
        return True
