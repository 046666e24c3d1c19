"""Each work-bucket file's record: written and read back unchanged, and a malformed or
foreign file refused with an error naming the file and the field."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import orjson
import pytest

from batchline.domain.paths import WorkPaths
from batchline.domain.results import Tally
from batchline.domain.schemas import ResponseSchema
from batchline.domain.workfiles import StreamedFile, WorkFileError
from batchline.domain.workfiles import runs as runs_module
from batchline.domain.workfiles.collected import (
    CollectedRecord,
    FollowUp,
    read_collected,
    write_collected,
)
from batchline.domain.workfiles.manifest import (
    ManifestEntry,
    iter_entries,
    parse_manifest,
    read_manifest,
)
from batchline.domain.workfiles.plan import PlanRecord, read_plan, write_plan
from batchline.domain.workfiles.runs import RunWriter, encode_rows, iter_rows, open_rows
from batchline.domain.workfiles.schemas import read_schema, write_schema
from batchline.errors import PreconditionFailed, RetryableError
from batchline_tools.memory import MemoryBlobStore

PATHS = WorkPaths("work", "job-1")


def tally() -> Tally:
    t = Tally()
    t.add(
        {
            "status": "succeeded",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "usage": {"input_tokens": 3, "output_tokens": 2},
            "cost_usd": 0.25,
            "error": None,
            "attempts": [{}, {}],
        },
        0.5,
    )
    t.add({"status": "invalid", "error": {"type": "invalid_request"}, "attempts": []})
    return t


def refused(call: object, *args: object) -> WorkFileError:
    with pytest.raises(WorkFileError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# --- plan.json --------------------------------------------------------------------------------


def plan_record() -> PlanRecord:
    return PlanRecord(
        lines=7,
        blank_lines=1,
        invalid=2,
        requests=5,
        chunks=2,
        id_collisions={3: "line-3-2"},
        invalid_tally=tally(),
        estimate={"requests": 5, "batch_usd": 0.01},
    )


def test_the_plan_record_reads_back_as_written() -> None:
    blobs = MemoryBlobStore()
    record = plan_record()
    assert write_plan(blobs, PATHS.plan, record)
    assert not write_plan(blobs, PATHS.plan, record)  # create-if-absent
    back = read_plan(blobs, PATHS.plan)
    assert back == record
    assert back.id_collisions == {3: "line-3-2"}  # line numbers are integers again
    assert back.invalid_tally.to_dict() == record.invalid_tally.to_dict()


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda d: d.pop("lines"), "lines", "missing"),
        (lambda d: d.update(requests="5"), "requests", "expected an integer, got a string"),
        (lambda d: d.update(chunks=True), "chunks", "expected an integer, got a boolean"),
        (lambda d: d.update(id_collisions=[]), "id_collisions", "expected an object"),
        (lambda d: d.update(id_collisions={"x": "y"}), "id_collisions.x", "line number"),
        (lambda d: d.update(invalid_tally={"counts": {}}), "invalid_tally", "not a tally"),
        (lambda d: d.update(estimate=[1]), "estimate", "expected an object, got an array"),
    ],
)
def test_a_malformed_plan_record_is_refused_naming_the_field(
    change: object, field: str, reason: str
) -> None:
    data = plan_record().to_dict()
    change(data)  # type: ignore[operator]
    blobs = MemoryBlobStore()
    blobs.put(PATHS.plan, orjson.dumps(data))
    error = refused(read_plan, blobs, PATHS.plan)
    assert error.uri == PATHS.plan and error.field == field and reason in error.reason
    assert str(error).startswith(f"{PATHS.plan}: {field}: ")


def test_a_foreign_file_is_not_a_plan_record() -> None:
    blobs = MemoryBlobStore()
    blobs.put(PATHS.plan, orjson.dumps(CollectedRecord(tally(), ["gs://work/r"]).to_dict()))
    assert refused(read_plan, blobs, PATHS.plan).field == "id_collisions"
    blobs.put(PATHS.plan, ManifestEntry(1, "a").encode() + ManifestEntry(2, "b").encode())
    error = refused(read_plan, blobs, PATHS.plan)
    assert error.field == "file" and "not JSON" in error.reason


# --- manifests --------------------------------------------------------------------------------


def test_manifest_entries_read_back_as_written_first_round_and_re_ask() -> None:
    previous = {"status": "failed", "usage": None, "attempts": 1}
    entries = [
        ManifestEntry(4, "a"),
        ManifestEntry(2, None, "d1"),
        ManifestEntry(9, "line-9", "d1", [{"batch_id": "b", "status": "failed"}], previous),
    ]
    data = b"".join(e.encode() for e in entries)
    assert list(iter_entries(data.splitlines(), "gs://m")) == entries
    by_line = parse_manifest(data, "gs://m", {2: "line-2-2"})
    assert list(by_line) == [4, 2, 9]  # payload order
    assert by_line[2].custom_id == "line-2-2"  # a generated id, as the plan record resolves it
    assert by_line[4].custom_id == "a" and by_line[9].previous == previous
    # Digests are shared: one string per schema, not one per row.
    assert by_line[2].schema is by_line[9].schema


def test_a_manifest_without_collisions_generates_line_ids() -> None:
    blobs = MemoryBlobStore()
    blobs.put(PATHS.manifest(0), ManifestEntry(5, None).encode())
    assert read_manifest(blobs, PATHS.manifest(0))[5].custom_id == "line-5"


@pytest.mark.parametrize(
    ("rows", "field", "reason"),
    [
        (b'{"line": 1, "custom_id": "a"}\n{"custom_id": "b"}\n', "row 2.line", "missing"),
        (b'{"line": "1", "custom_id": "a"}\n', "row 1.line", "expected an integer"),
        (b'{"line": 1, "custom_id": 7}\n', "row 1.custom_id", "expected a string or null"),
        (b'{"line": 1, "custom_id": "a", "schema": {}}\n', "row 1.schema", "expected a digest"),
        (b'{"line": 1, "custom_id": "a", "previous": {}}\n', "row 1.attempts", "an array"),
        (b'{"line": 1, "custom_id": "a", "attempts": []}\n', "row 1.previous", "an object"),
        (b"1\tnot a manifest\n", "row 1", "not a manifest row"),
        (b'[1, "a"]\n', "row 1", "not a manifest row"),
        (b'{"line": 1, "custom_id": "a"}\n{"line": 1, "custom_id": "b"}\n', "line", "more than"),
    ],
)
def test_a_malformed_manifest_is_refused_naming_the_row_and_field(
    rows: bytes, field: str, reason: str
) -> None:
    error = refused(parse_manifest, rows, "gs://work/m.jsonl")
    assert error.uri == "gs://work/m.jsonl" and error.field == field and reason in error.reason


def test_a_plan_record_is_not_a_manifest() -> None:
    error = refused(parse_manifest, orjson.dumps(plan_record().to_dict()), "gs://m")
    assert (error.field, error.reason) == ("row 1.line", "missing")


# --- result runs and invalid lines ------------------------------------------------------------


def test_runs_are_written_sorted_and_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs_module, "RUN_BYTES", 40)  # two or three rows a run
    blobs = MemoryBlobStore()
    writer = RunWriter(blobs, PATHS, 3)
    records = {n: orjson.dumps({"line": n, "x": "y" * n}) + b"\n" for n in (5, 1, 4, 2, 3)}
    for line, record in records.items():
        writer.add(line, record)
    runs = writer.finish()
    assert len(runs) >= 2
    assert all(f"/chunks/00003/collect-{writer.attempt}/run-" in uri for uri in runs)
    seen = []
    for run, uri in enumerate(runs):
        with open_rows(blobs, uri, run) as rows:
            found = list(rows)
        assert [line for line, _, _ in found] == sorted(line for line, _, _ in found)
        seen.extend(found)
    assert {line: record for line, _, record in seen} == records


def test_invalid_rows_read_back_and_a_row_without_a_line_number_is_refused() -> None:
    rows = [(2, b'{"a":1}\n'), (10, b'{"b":2}\n')]
    data = encode_rows(rows)
    assert data == b'2\t{"a":1}\n10\t{"b":2}\n'
    assert list(iter_rows(io.BytesIO(data), "gs://i", 0)) == [
        (2, 0, rows[0][1]),
        (10, 0, rows[1][1]),
    ]
    foreign = ManifestEntry(1, "a").encode()
    error = refused(list, iter_rows(io.BytesIO(data + foreign), PATHS.invalid, 0))
    assert error.uri == PATHS.invalid and error.field == "line"
    assert "not a line number" in error.reason


# --- collected.json ---------------------------------------------------------------------------


def test_a_collect_record_reads_back_as_written_with_and_without_follow_ups() -> None:
    blobs = MemoryBlobStore()
    repairs = FollowUp("gs://w/p", "gs://w/m", 3, "gs://w/s", "repair", "openai", "m", 0.5)
    failover = FollowUp("gs://w/q", "gs://w/n", 2, "gs://w/t", "failover", "vertex", "g", None)
    for index, record in enumerate(
        [
            CollectedRecord(tally(), ["gs://w/r0", "gs://w/r1"]),
            CollectedRecord(tally(), [], (repairs, failover)),
            CollectedRecord(tally(), [], (FollowUp("gs://w/p", "gs://w/m", 1),)),  # none stored
        ]
    ):
        uri = PATHS.collected(index)
        assert write_collected(blobs, uri, record)
        assert not write_collected(blobs, uri, record)  # one attempt commits
        back = read_collected(blobs, uri)
        assert (back.runs, back.follow_ups) == (record.runs, record.follow_ups)
        assert back.tally.to_dict() == record.tally.to_dict()


def test_a_collect_record_written_before_failover_reads_its_repairs() -> None:
    blobs = MemoryBlobStore()
    old = {
        "tally": tally().to_dict(),
        "runs": [],
        "repairs": {"payload": "gs://w/p", "manifest": "gs://w/m", "requests": 2},
    }
    blobs.put(PATHS.collected(0), orjson.dumps(old))
    (group,) = read_collected(blobs, PATHS.collected(0)).follow_ups
    assert (group.reason, group.requests, group.provider) == ("repair", 2, None)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"tally": Tally().to_dict()}, "runs"),
        ({"tally": Tally().to_dict(), "runs": ["a", 2]}, "runs[1]"),
        ({"runs": []}, "tally"),
        ({"tally": {"x": 1}, "runs": []}, "tally"),
        ({"tally": Tally().to_dict(), "runs": [], "repairs": {"payload": "p"}}, "repairs.manifest"),
        ({"tally": Tally().to_dict(), "runs": [], "repairs": []}, "repairs"),
    ],
)
def test_a_malformed_collect_record_is_refused_naming_the_field(
    data: dict[str, object], field: str
) -> None:
    blobs = MemoryBlobStore()
    blobs.put(PATHS.collected(0), orjson.dumps(data))
    error = refused(read_collected, blobs, PATHS.collected(0))
    assert error.uri == PATHS.collected(0) and error.field == field


def test_a_plan_record_is_not_a_collect_record() -> None:
    blobs = MemoryBlobStore()
    blobs.put(PATHS.collected(0), orjson.dumps(plan_record().to_dict()))
    assert refused(read_collected, blobs, PATHS.collected(0)).field == "runs"


# --- the job's schemas ------------------------------------------------------------------------


def test_a_job_schema_reads_back_by_digest_and_another_digest_is_refused() -> None:
    blobs = MemoryBlobStore()
    schema = ResponseSchema.create({"type": "object"}, "Thing")
    assert write_schema(blobs, PATHS, schema)
    assert read_schema(blobs, PATHS, schema.digest) == schema
    other = ResponseSchema.create({"type": "object", "required": ["a"]}, "Thing")
    blobs.put(PATHS.schema(other.digest), orjson.dumps(schema.to_dict()))
    error = refused(read_schema, blobs, PATHS, other.digest)
    assert error.uri == PATHS.schema(other.digest) and error.field == "digest"
    blobs.put(PATHS.schema("x"), b'{"schema": {}, "digest": "x"}')
    assert refused(read_schema, blobs, PATHS, "x").field == "name"


# --- streamed writes ---------------------------------------------------------------------------


def test_a_streamed_file_exists_only_once_committed_and_never_after_abandon() -> None:
    blobs = MemoryBlobStore()
    done = StreamedFile(blobs, "gs://w/a", "application/jsonl")
    done.write(b"one\n")
    assert not blobs.exists("gs://w/a")
    done.write(b"two\n")
    done.commit()
    assert blobs.read_bytes("gs://w/a") == b"one\ntwo\n"
    gone = StreamedFile(blobs, "gs://w/b", "application/jsonl")
    gone.write(b"x\n")
    gone.abandon(RuntimeError("planning failed"))
    assert not blobs.exists("gs://w/b")


def test_a_streamed_file_that_exists_already_keeps_its_bytes() -> None:
    """An earlier invocation wrote it (same name, same content): our writes go nowhere."""
    blobs = MemoryBlobStore()
    blobs.put("gs://w/a", b"earlier\n")
    again = StreamedFile(blobs, "gs://w/a", "application/jsonl")
    assert not again.open
    again.write(b"ours\n")
    again.commit()
    assert blobs.read_bytes("gs://w/a") == b"earlier\n"


def test_a_streamed_file_created_meanwhile_by_another_writer_is_not_an_error() -> None:
    blobs = MemoryBlobStore()
    racing = StreamedFile(blobs, "gs://w/a", "application/jsonl")
    racing.write(b"ours\n")
    blobs.write_bytes("gs://w/a", b"theirs\n", "application/jsonl")
    racing.commit()  # the store refuses ours (412): theirs stays, no error
    assert blobs.read_bytes("gs://w/a") == b"theirs\n"
    with pytest.raises(PreconditionFailed), blobs.open_write("gs://w/a", "x"):
        pass  # (the store does refuse a second file)


class _Raising:
    """A store writer whose writes fail with `error` (an SDK's own exception)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def write(self, data: bytes) -> int:
        raise self.error


class _TranslatingBlobs(MemoryBlobStore):
    """A store whose writer fails with raw errors that its context translates, as the GCS
    adapter's does (`adapters/_google.translated`)."""

    def __init__(self, raw: Exception) -> None:
        super().__init__()
        self.raw = raw

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        try:
            yield _Raising(self.raw)  # type: ignore[misc]
        except KeyError as exc:
            raise PreconditionFailed(f"{uri}: 412") from exc
        except TimeoutError as exc:
            raise RetryableError(f"{uri}: {exc}") from exc


def test_a_write_s_error_is_the_store_s_own_error_for_it() -> None:
    """Found existing mid-stream (a raw 412): no error, nothing more written."""
    exists = StreamedFile(_TranslatingBlobs(KeyError("412")), "gs://w/a", "x")
    exists.write(b"one\n")
    assert not exists.open
    exists.write(b"two\n")
    exists.commit()
    # A transient failure comes out as the store's retryable error, not the SDK's.
    flaky = StreamedFile(_TranslatingBlobs(TimeoutError("slow")), "gs://w/b", "x")
    with pytest.raises(RetryableError, match="slow"):
        flaky.write(b"one\n")
    # An error the store does not translate comes out as it is.
    odd = StreamedFile(_TranslatingBlobs(ValueError("odd")), "gs://w/c", "x")
    with pytest.raises(ValueError, match="odd"):
        odd.write(b"one\n")
    # Abandoning after a failure raises nothing of its own.
    gone = StreamedFile(_TranslatingBlobs(TimeoutError("slow")), "gs://w/d", "x")
    gone.abandon(RuntimeError("planning failed"))
    assert not gone.open
