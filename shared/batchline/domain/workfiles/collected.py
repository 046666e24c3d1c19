"""A chunk's collect record (`chunks/<n>/collected.json`), and the repairs it commits.

Written last by a collect attempt, create-if-absent: it commits exactly one attempt's
runs (and repairs), so a collect that dies half-way, or two that race, never mix theirs.
A collect that finds it uses it instead of collecting the chunk again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchline.domain.results import Tally
from batchline.domain.workfiles._io import JSON, Fields, WorkBlobs, WorkFileError


@dataclass(frozen=True)
class Repairs:
    """A chunk's staged repairs: their request lines (`payload`), manifest rows and stored
    requests (`requests`; None for a chunk planned before requests were stored), in the
    same order, and how many there are."""

    payload: str
    manifest: str
    requests: int
    stored: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The repairs as collected.json holds them."""
        data: dict[str, Any] = {
            "payload": self.payload,
            "manifest": self.manifest,
            "requests": self.requests,
        }
        if self.stored is not None:
            data["stored"] = self.stored
        return data

    @classmethod
    def from_dict(cls, data: object, uri: str) -> Repairs:
        """The repairs in `data` (the `repairs` of collected.json at `uri`)."""
        fields = Fields(data, uri, "repairs")
        return cls(
            fields.text("payload"),
            fields.text("manifest"),
            fields.integer("requests"),
            fields.optional_text("stored"),
        )


@dataclass(frozen=True)
class CollectedRecord:
    """One collect attempt's outcome for a chunk: the tally of its result lines, its sorted
    runs (to be merged, in order) and the repairs it staged, if any."""

    tally: Tally
    runs: list[str]
    repairs: Repairs | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as collected.json holds it."""
        data: dict[str, Any] = {"tally": self.tally.to_dict(), "runs": self.runs}
        if self.repairs is not None:
            data["repairs"] = self.repairs.to_dict()
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
        repairs = fields.optional_mapping("repairs")
        return cls(tally, runs, Repairs.from_dict(repairs, uri) if repairs else None)


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
