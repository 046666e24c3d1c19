"""The plan record (`plan.json`): what planning found in the input, for collect.

Written once, by planning, before the job's chunks are committed; read by every collect:
the counts, the generated custom_ids that had to change because a line used the same id
(`id_collisions`), the invalid lines' tally and the pre-submit estimate (shown as is in
summary.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from batchline.domain.results import Tally
from batchline.domain.workfiles._io import JSON, Fields, WorkBlobs, WorkFileError


@dataclass(frozen=True)
class PlanRecord:
    """What planning found: line counts, the chunks it staged, the custom_ids generated
    for lines without one whose `line-<n>` a line used already, the invalid lines' tally
    and the estimate (its summary.json section)."""

    lines: int
    blank_lines: int
    invalid: int
    requests: int
    chunks: int
    id_collisions: dict[int, str] = field(default_factory=dict)
    invalid_tally: Tally = field(default_factory=Tally)
    estimate: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as plan.json holds it."""
        return {
            "lines": self.lines,
            "blank_lines": self.blank_lines,
            "invalid": self.invalid,
            "requests": self.requests,
            "chunks": self.chunks,
            "id_collisions": {str(k): v for k, v in self.id_collisions.items()},
            "invalid_tally": self.invalid_tally.to_dict(),
            "estimate": self.estimate,
        }

    @classmethod
    def from_dict(cls, data: object, uri: str) -> PlanRecord:
        """The record in `data` (plan.json at `uri`); raises `WorkFileError` naming the field
        that is missing or of the wrong type."""
        fields = Fields(data, uri)
        collisions: dict[int, str] = {}
        for key, value in fields.mapping("id_collisions").items():
            if not key.isdigit() or not isinstance(value, str):
                raise fields.error(
                    f"id_collisions.{key}", "expected a line number mapped to a custom_id"
                )
            collisions[int(key)] = value
        tally = fields.mapping("invalid_tally")
        try:
            invalid_tally = Tally.from_dict(tally)
        except (KeyError, TypeError, ValueError) as exc:
            raise fields.error("invalid_tally", f"not a tally ({exc!r})") from None
        return cls(
            lines=fields.integer("lines"),
            blank_lines=fields.integer("blank_lines"),
            invalid=fields.integer("invalid"),
            requests=fields.integer("requests"),
            chunks=fields.integer("chunks"),
            id_collisions=collisions,
            invalid_tally=invalid_tally,
            estimate=fields.optional_mapping("estimate"),
        )


def write_plan(blobs: WorkBlobs, uri: str, record: PlanRecord) -> bool:
    """Create plan.json at `uri`; False when it exists already (an earlier planner's)."""
    return blobs.write_bytes(uri, orjson.dumps(record.to_dict()), JSON)


def read_plan(blobs: WorkBlobs, uri: str) -> PlanRecord:
    """Read plan.json at `uri`; raises `WorkFileError` when it is not a plan record."""
    data = blobs.read_bytes(uri)
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WorkFileError(uri, "file", f"not JSON ({exc})") from None
    return PlanRecord.from_dict(parsed, uri)
