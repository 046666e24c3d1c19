"""Every request's provider-neutral form is kept in the work bucket, per chunk and in line
order, so that a later round can encode it again: read back, a batchline line rebuilds
exactly the `Request` planning made; a native line is marked native (it cannot move)."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from batchline.bootstrap import Deps
from batchline.domain.models import Chunk, Job, JobOptions, JobState, Source
from batchline.domain.paths import WorkPaths
from batchline.domain.planning import ChunkPlanner
from batchline.domain.providers import openai
from batchline.domain.providers.base import ChunkLimits
from batchline.domain.requests import Request, SchemaContext, parse_line
from batchline.domain.schemas import ResponseSchema
from batchline.domain.workfiles import WorkFileError
from batchline.domain.workfiles.manifest import read_manifest
from batchline.domain.workfiles.requests import (
    NativeRequest,
    NeutralRequest,
    StoredRequest,
    checked_row,
    decode_stored,
    encode_request,
    iter_stored,
    open_stored,
)
from batchline.domain.workfiles.schemas import read_schema
from batchline.services.plan import LeaseLost
from batchline.services.plan_file import build_plan
from batchline.services.submit import handle_object_finalized
from batchline_tools.memory import MemoryBlobStore

from .fakes import make_deps, with_limits
from .plan_helpers import plan_file
from .test_pipeline import upload
from .test_structured import drive, lines, setup

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
REGISTERED = ResponseSchema.create(SCHEMA, "Registered")

NEUTRAL_LINES = [
    # every neutral field, for each provider
    {
        "custom_id": "o1",
        "model": "openai/gpt-4.1-mini",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Explain TCP slow start. ü \u2028 🚀"}],
        "max_tokens": 200,
        "temperature": 0.2,
        "stop": ["\n\n"],
        "metadata": {"team": "x"},
    },
    {
        "custom_id": "a1",
        "model": "anthropic/claude-haiku-4-5",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "response_schema": {"name": "Inline", "schema": SCHEMA},
    },
    {
        "model": "vertex/publishers/google/models/gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "s"},
            {
                "role": "user",
                "content": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}],
            },
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "b"},
        ],
        "temperature": 1,
        "schema": "Registered",
    },
    # the job's default model and default schema apply
    {"custom_id": "d1", "messages": [{"role": "user", "content": "default model"}]},
    # an integer beyond 64 bits in a content block (orjson reads it as a float): kept as read
    {
        "custom_id": "big",
        "model": "anthropic/claude-haiku-4-5",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "n", "n": 1.5e300}]}],
    },
]
NATIVE_LINES = [
    {
        "custom_id": "n-openai",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
    },
    {
        "custom_id": "n-anthropic",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    },
    {
        "key": "n-vertex",
        "request": {
            "model": "gemini-2.5-pro",
            "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        },
    },
]
CONTEXT = SchemaContext(lookup=lambda name: REGISTERED, default=REGISTERED)


def parsed(
    number: int, line: dict[str, object], default_model: str = "openai/gpt-4o-mini"
) -> Request:
    request = parse_line(
        number,
        orjson.dumps(line),
        default_model=default_model,
        max_line_bytes=1 << 20,
        schemas=CONTEXT,
    )
    assert isinstance(request, Request), request
    return request


def schemas_by_digest(*known: ResponseSchema):  # type: ignore[no-untyped-def]
    found = {s.digest: s for s in known}
    return found.__getitem__


@pytest.mark.parametrize("index", range(len(NEUTRAL_LINES)))
def test_a_neutral_line_reads_back_as_exactly_its_request(index: int) -> None:
    request = parsed(index + 1, NEUTRAL_LINES[index])
    row = encode_request(request)
    assert row.endswith(b"\n") and b"\n" not in row[:-1]
    stored = decode_stored(row, "gs://w/r", 1)
    assert isinstance(stored, NeutralRequest)
    inline = ResponseSchema.create(SCHEMA, "Inline")
    assert stored.to_request(schemas_by_digest(REGISTERED, inline)) == request
    assert "metadata" not in row.decode()  # batchline's own, never sent


@pytest.mark.parametrize("index", range(len(NATIVE_LINES)))
def test_a_native_line_is_marked_native_with_where_it_came_from(index: int) -> None:
    request = parsed(index + 1, NATIVE_LINES[index])
    stored = decode_stored(encode_request(request), "gs://w/r", 1)
    assert stored == NativeRequest(request.line, request.custom_id, request.provider, request.model)


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        (b"not json", "row 3", "not JSON"),
        (b"[1]", "row 3", "expected an object"),
        (
            b'{"line": 1, "custom_id": null, "provider": "openai", "model": "m"}',
            "row 3.kind",
            "missing",
        ),
        (
            b'{"line": 1, "custom_id": null, "provider": "openai", "model": "m", "kind": "x"}',
            "row 3.kind",
            "expected 'neutral' or 'native'",
        ),
        (
            b'{"line": 1, "custom_id": null, "provider": "openai", "model": "m", "kind": "neutral"}',
            "row 3.params",
            "missing",
        ),
        (
            b'{"line": "1", "custom_id": null, "provider": "openai", "model": "m", "kind": "native"}',
            "row 3.line",
            "expected an integer",
        ),
        (b'{"line": 1, "custom_id": "a"}', "row 3.provider", "missing"),
    ],
)
def test_a_malformed_stored_request_is_refused_naming_the_row_and_field(
    row: bytes, field: str, reason: str
) -> None:
    with pytest.raises(WorkFileError) as refused:
        decode_stored(row, "gs://w/requests.jsonl", 3)
    assert refused.value.uri == "gs://w/requests.jsonl"
    assert refused.value.field == field and reason in refused.value.reason


def test_a_stored_row_of_another_line_is_refused() -> None:
    row = encode_request(parsed(4, NEUTRAL_LINES[0]))
    assert checked_row(row, "gs://w/r", 2, 4) == row
    with pytest.raises(
        WorkFileError, match=r"gs://w/r: row 2.line: expected 5 \(the manifest's\), got 4"
    ):
        checked_row(row, "gs://w/r", 2, 5)
    with pytest.raises(WorkFileError, match=r"gs://w/r: row 3: missing: the file ends before"):
        checked_row(b"", "gs://w/r", 3, 5)


def stored_of(blobs: MemoryBlobStore, chunk: Chunk) -> list[StoredRequest]:
    assert chunk.requests_uri is not None
    with open_stored(blobs, chunk.requests_uri) as rows:
        return list(rows)


def test_planning_keeps_every_request_per_chunk_in_payload_order() -> None:
    """A mixed file in several chunks: each chunk's stored requests are its manifest's lines,
    in order, and rebuild the requests parsing the same lines makes."""
    deps, _, _ = make_deps(max_requests=2)
    every = [
        *NEUTRAL_LINES,
        *NATIVE_LINES,
        {**NEUTRAL_LINES[0], "custom_id": "o2"},
        {"custom_id": "bad", "model": 1},
    ]
    data = b"\n".join(orjson.dumps(line) for line in every)
    deps.blobs.write_bytes("gs://work/schemas/Registered.json", orjson.dumps(SCHEMA), "x")
    options = JobOptions(model="vertex/gemini-2.5-flash", schema="Registered")
    planned = plan_file(deps, data, options)
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    paths = WorkPaths("work", planned.plan.chunks[0].job_id)
    rebuilt: dict[int, Request] = {}
    for chunk in planned.plan.chunks:
        stored = stored_of(blobs, chunk)
        assert [s.line for s in stored] == list(read_manifest(blobs, chunk.manifest_uri))
        assert chunk.requests_uri == paths.requests(0, stored[0].line)
        for s in stored:
            assert (s.provider, s.model) == (chunk.provider, chunk.model)
            if isinstance(s, NeutralRequest):
                rebuilt[s.line] = s.to_request(lambda digest: read_schema(blobs, paths, digest))
            else:
                assert s.line in range(len(NEUTRAL_LINES) + 1, len(NEUTRAL_LINES) + 4)
    assert len(planned.plan.chunks) > 3
    expected = {}
    for number, line in enumerate(every, 1):
        request = parse_line(
            number,
            orjson.dumps(line),
            default_model=options.model,
            max_line_bytes=1 << 20,
            schemas=CONTEXT,
        )
        if isinstance(request, Request) and request.native is None:
            expected[number] = request
    assert rebuilt == expected and len(expected) == len(NEUTRAL_LINES) + 1
    assert planned.invalid.keys() == {len(every)}  # the bad line is not stored


def test_a_planner_that_takes_over_writes_the_same_stored_requests() -> None:
    """The first planner dies half-way (its lease lost at a chunk's staging): what it
    committed stays, what it was filling is given up, and the next planner's files are
    those one run alone makes."""
    deps, _, _ = make_deps(max_requests=2)
    data = b"\n".join(orjson.dumps({**NEUTRAL_LINES[0], "custom_id": f"c{i}"}) for i in range(5))
    job = _job(deps, data)
    beats = iter([None, LeaseLost("lost")])

    def heartbeat() -> None:
        beat = next(beats, None)
        if beat is not None:
            raise beat

    with pytest.raises(LeaseLost):
        build_plan(deps, job, heartbeat)
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    paths = WorkPaths("work", job.job_id)
    assert blobs.exists(paths.requests(0, 1)) and not blobs.exists(paths.requests(0, 3))
    again = build_plan(deps, job)
    alone, _, _ = make_deps(max_requests=2)
    clean = build_plan(alone, _job(alone, data))
    assert [c.requests_uri for c in again.chunks] == [c.requests_uri for c in clean.chunks]
    for mine, theirs in zip(again.chunks, clean.chunks, strict=True):
        assert blobs.read_bytes(mine.requests_uri or "") == alone.blobs.read_bytes(
            theirs.requests_uri or ""
        )


def _job(deps: Deps, data: bytes) -> Job:
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    generation = blobs.put("gs://in/x.jsonl", data)
    return Job(
        job_id="job-x",
        source=Source("in", "x.jsonl", generation, len(data)),
        options=JobOptions(),
        output_prefix="gs://out/x/job-x/",
    )


def test_re_asks_keep_their_stored_requests_and_are_cut_by_the_chunk_planner() -> None:
    """A repair round's chunks are cut under the provider's limits as the first round's
    are, and carry the stored requests of the lines they ask again."""
    bad = {"bl-1", "bl-2", "bl-3", "bl-6"}
    deps, provider = setup(bad)
    data = lines(6)  # chunks of 4: lines 1-4 and 5-6

    job = handle_object_finalized(deps, upload(deps, data))
    assert job is not None
    first = {c.index: stored_of(deps.blobs, c) for c in deps.store.get_chunks(job.job_id)}  # type: ignore[arg-type]
    # Repairs go out two to a batch (the limits of the round they are cut in).
    deps.settings = replace(
        deps.settings, providers=with_limits(ChunkLimits(2, 10_000_000), "openai")
    )  # type: ignore[misc]
    provider.end()
    drive(deps, provider, job.job_id, rounds=1)
    job_now = deps.store.get_job(job.job_id)
    assert job_now is not None and job_now.state is JobState.RUNNING
    chunks = deps.store.get_chunks(job.job_id)
    again = [c for c in chunks if c.round == 1]
    assert [(c.round_of, c.request_count) for c in again] == [(0, 2), (0, 1), (1, 1)]
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    by_line = {s.line: s for stored in first.values() for s in stored}
    for chunk in again:
        stored = stored_of(blobs, chunk)
        manifest = read_manifest(blobs, chunk.manifest_uri)
        assert [s.line for s in stored] == list(manifest)
        assert stored == [by_line[s.line] for s in stored]  # the original requests, unchanged
        assert len(blobs.read_bytes(chunk.payload_uri).splitlines()) == chunk.request_count
        assert all(len(entry.earlier or ()) == 1 for entry in manifest.values())
    assert sorted(s.line for c in again for s in stored_of(blobs, c)) == [1, 2, 3, 6]
    drive(deps, provider, job.job_id)
    done = deps.store.get_job(job.job_id)
    assert done is not None and done.state is JobState.SUCCEEDED


def test_stored_requests_stream_out_while_their_chunk_fills() -> None:
    """Memory: rows reach the chunk's sink as requests are added, not when it is cut."""
    written: list[bytes] = []

    class Recording:
        def write(self, data: bytes, /) -> int:
            written.append(data)
            return len(data)

    planner = ChunkPlanner(
        lambda _: ChunkLimits(1000, 10_000_000),
        lambda _: openai.encode_line,
        open_sink=lambda *_: Recording(),
    )
    for n in range(1, 4):
        assert planner.add(parsed(n, NEUTRAL_LINES[0])) is None
        assert len(written) == n
    assert [s.line for s in iter_stored(written, "gs://x")] == [1, 2, 3]


def test_a_re_ask_that_no_longer_fits_a_batch_is_not_sent_and_its_line_stays_failed() -> None:
    """A repair turn makes a request longer; one the provider's batch cannot take is
    refused by the planner like any other, so its line keeps its failed answer."""
    deps, provider = setup({"bl-1"})
    job = handle_object_finalized(deps, upload(deps, lines(2)))
    assert job is not None
    [chunk] = deps.store.get_chunks(job.job_id)
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    longest = max(len(x) + 1 for x in blobs.read_bytes(chunk.payload_uri).splitlines())
    deps.settings = replace(
        deps.settings, providers=with_limits(ChunkLimits(4, longest + 10), "openai")
    )  # type: ignore[misc]
    drive(deps, provider, job.job_id)
    done = deps.store.get_job(job.job_id)
    assert done is not None and done.state is JobState.PARTIAL
    assert [c.round for c in deps.store.get_chunks(job.job_id)] == [0]
    results = [orjson.loads(x) for x in blobs.read_bytes(done.results_uri).splitlines()]
    assert [r["status"] for r in results] == ["failed", "succeeded"]
    assert results[0]["error"]["type"] == "schema_validation" and len(results[0]["attempts"]) == 1
