"""A chunk's collect record (`chunks/<n>/collected.json`), and the follow-ups it commits.

Written last by a collect attempt, create-if-absent: it commits exactly one attempt's
runs (and follow-ups), so a collect that dies half-way, or two that race, never mix theirs.
A collect that finds it uses it instead of collecting the chunk again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchline.domain.results import Tally
from batchline.domain.workfiles._io import JSON, Fields, WorkBlobs, WorkFileError


@dataclass(frozen=True)
class FollowUp:
    """One group of a chunk's staged follow-ups (one reason, one target model): their
    request lines (`payload`, encoded for the target), manifest rows and stored requests
    (`stored`; None for a chunk planned before requests were stored), in the same order,
    how many there are and the most they may cost (None: the model has no price).

    `provider`/`model` None: the chunk's own (a record written before failover)."""

    payload: str
    manifest: str
    requests: int
    stored: str | None = None
    reason: str = "repair"
    provider: str | None = None
    model: str | None = None
    worst_usd: float | None = None

    @property
    def declined(self) -> str:
        """Where the group's result lines are written again, saying why, when its round
        is not sent (beside its manifest)."""
        return self.manifest.removesuffix("-manifest.jsonl") + "-declined.tsv"

    def to_dict(self) -> dict[str, Any]:
        """The group as collected.json holds it."""
        data: dict[str, Any] = {
            "payload": self.payload,
            "manifest": self.manifest,
            "requests": self.requests,
            "reason": self.reason,
            "provider": self.provider,
            "model": self.model,
            "worst_usd": self.worst_usd,
        }
        if self.stored is not None:
            data["stored"] = self.stored
        return data

    @classmethod
    def from_dict(cls, data: object, uri: str, where: str) -> FollowUp:
        """The group in `data` (`where` in collected.json at `uri`)."""
        fields = Fields(data, uri, where)
        worst = fields.optional_number("worst_usd")
        return cls(
            fields.text("payload"),
            fields.text("manifest"),
            fields.integer("requests"),
            fields.optional_text("stored"),
            fields.optional_text("reason") or "repair",
            fields.optional_text("provider"),
            fields.optional_text("model"),
            worst,
        )


@dataclass(frozen=True)
class CollectedRecord:
    """One collect attempt's outcome for a chunk: the tally of its result lines, its sorted
    runs (to be merged, in order) and the follow-ups it staged, if any."""

    tally: Tally
    runs: list[str]
    follow_ups: tuple[FollowUp, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The record as collected.json holds it."""
        data: dict[str, Any] = {"tally": self.tally.to_dict(), "runs": self.runs}
        if self.follow_ups:
            data["follow_ups"] = [f.to_dict() for f in self.follow_ups]
        return data

    @classmethod
    def from_dict(cls, data: object, uri: str) -> CollectedRecord:
        """The record in `data` (collected.json at `uri`); raises `WorkFileError` naming the
        field that is missing or of the wrong type."""
        fields = Fields(data, uri)
        runs = fields.array("runs")
        for k, run in enumerate(runs):
            if not isinstance(run, str):
                raise fields.error(f"runs[{k}]", "expected the URI of a run")
        try:
            tally = Tally.from_dict(fields.mapping("tally"))
        except (KeyError, TypeError, ValueError) as exc:
            raise fields.error("tally", f"not a tally ({exc!r})") from None
        groups = [
            FollowUp.from_dict(g, uri, f"follow_ups[{k}]")
            for k, g in enumerate(fields.optional_array("follow_ups") or [])
        ]
        repairs = fields.optional_mapping("repairs")  # written before failover
        if repairs:
            groups.append(FollowUp.from_dict(repairs, uri, "repairs"))
        return cls(tally, runs, tuple(groups))


def write_collected(blobs: WorkBlobs, uri: str, record: CollectedRecord) -> bool:
    """Commit `record` at `uri` unless an attempt committed first (then False)."""
    return blobs.write_bytes(uri, orjson.dumps(record.to_dict()), JSON)


def read_collected(blobs: WorkBlobs, uri: str) -> CollectedRecord:
    """The committed record at `uri`; raises NotFound when no attempt committed yet, and
    `WorkFileError` when the file is not a collect record."""
    data = blobs.read_bytes(uri)
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WorkFileError(uri, "file", f"not JSON ({exc})") from None
    return CollectedRecord.from_dict(parsed, uri)
