"""One set of scenarios, run against every provider adapter through its emulator.

Each scenario is what batchline needs from a provider, whatever its API: submit, progress,
completion, partial failure, expiry, cancel, crash-and-reconcile, unordered results and
the round trip of the user's ids. Where the providers legitimately differ (OpenAI counts
live and leaves unrun requests out of its files; Anthropic counts only at the end and
reports every request; Vertex counts at the end, writes only the rows that ran, and reads
its payload from GCS), the difference is a named property of the provider under test, not
a branch hidden in a test.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest

from batchline.adapters.providers.anthropic import AnthropicProvider
from batchline.adapters.providers.openai import OpenAIProvider
from batchline.adapters.providers.vertex import VertexProvider
from batchline.bootstrap import Deps, Providers
from batchline.config import ChunkLimits, Settings, default_provider_settings
from batchline.domain.models import BatchState, BatchTag, ChunkState, JobState, ProviderBatch
from batchline.domain.providers import anthropic as anthropic_wire
from batchline.domain.providers import openai as openai_wire
from batchline.domain.providers import vertex as vertex_wire
from batchline.domain.requests import Request, parse_line
from batchline.ports import BlobStore, ProviderClient, StagedPayload
from batchline.services.collect import collect
from batchline.services.poll import poll
from batchline.services.submit import ObjectFinalized, handle_object_finalized
from batchline_tools.memory import MemoryBlobStore, MemoryJobStore, RecordingPublisher

from .conftest import (
    WAIT_SECONDS,
    AnthropicEmulatorHandle,
    OpenAIEmulatorHandle,
    VertexEmulatorHandle,
)

pytestmark = pytest.mark.integration


@dataclass
class ProviderUnderTest:
    name: str
    model: str
    client: ProviderClient
    emulator: OpenAIEmulatorHandle | AnthropicEmulatorHandle | VertexEmulatorHandle
    encoder: Callable[[Request], bytes]
    #: Counts move while the batch runs (OpenAI), or only once it has ended (the others).
    live_counts: bool
    #: Requests that never ran come back as results (Anthropic) or are left out (the
    #: others; collect gives them their status from the batch's).
    reports_unrun_requests: bool
    #: Requests a batch's expiry stopped come back as `expired` results (OpenAI, Anthropic)
    #: or are left out (Vertex).
    reports_expired_requests: bool
    #: Where chunks are staged: memory, or GCS where the provider reads them (Vertex).
    blobs: BlobStore
    bucket: str = "work"

    def stage(self, data: bytes) -> StagedPayload:
        if isinstance(self.emulator, VertexEmulatorHandle):
            return self.emulator.stage(data)
        return StagedPayload.of_bytes(data)

    def line(self, text: str, custom_id: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "model": f"{self.name}/{self.model}",
            "messages": [{"role": "user", "content": text}],
        }
        if custom_id is not None:
            obj["custom_id"] = custom_id
        return obj

    def payload(self, texts: list[str]) -> StagedPayload:
        encoded = []
        for n, text in enumerate(texts, start=1):
            parsed = parse_line(
                n, orjson.dumps(self.line(text)), default_model=None, max_line_bytes=10**6
            )
            assert isinstance(parsed, Request), parsed
            encoded.append(self.encoder(parsed))
        return self.stage(b"".join(encoded))

    def submit(self, texts: list[str], tag: BatchTag | None = None) -> ProviderBatch:
        return self.client.create_batch(
            self.payload(texts), tag or BatchTag("job-c", 0), self.model
        )

    def wait_ended(
        self, batch_id: str, timeout: float = WAIT_SECONDS
    ) -> tuple[ProviderBatch, list[Any]]:
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            batch = self.client.get_batch(batch_id)
            seen.append(batch)
            if batch.state.ended:
                return batch, seen
            assert time.monotonic() < deadline, f"batch still {batch.state}"
            time.sleep(0.02)

    def creates(self) -> int:
        """Batches the emulator has created (its own record, deleted ones included)."""
        return len(self.emulator.batches())


@pytest.fixture(params=["openai", "anthropic", "vertex"])
def under_test(
    request: pytest.FixtureRequest,
    openai_emulator: OpenAIEmulatorHandle,
    anthropic_emulator: AnthropicEmulatorHandle,
    vertex_emulator: VertexEmulatorHandle,
) -> Iterator[ProviderUnderTest]:
    if request.param == "vertex":
        subject = ProviderUnderTest(
            name="vertex",
            model="gemini-2.5-flash",
            client=VertexProvider(
                vertex_emulator.project,
                vertex_emulator.location,
                vertex_emulator.blobs,
                api_endpoint=vertex_emulator.api_endpoint,
                timeout_seconds=10,
            ),
            emulator=vertex_emulator,
            encoder=vertex_wire.encode,
            live_counts=False,
            reports_unrun_requests=False,
            reports_expired_requests=False,
            blobs=vertex_emulator.blobs,
            bucket=vertex_emulator.work_bucket,
        )
    elif request.param == "openai":
        subject = ProviderUnderTest(
            name="openai",
            model="gpt-4.1-mini",
            client=OpenAIProvider("sk-x", base_url=openai_emulator.base_url, timeout_seconds=10),
            emulator=openai_emulator,
            encoder=openai_wire.encode,
            live_counts=True,
            reports_unrun_requests=False,
            reports_expired_requests=True,
            blobs=MemoryBlobStore(),
        )
    else:
        subject = ProviderUnderTest(
            name="anthropic",
            model="claude-haiku-4-5",
            client=AnthropicProvider("sk-x", base_url=anthropic_emulator.base_url),
            emulator=anthropic_emulator,
            encoder=anthropic_wire.make_encoder(256),
            live_counts=False,
            reports_unrun_requests=True,
            reports_expired_requests=True,
            blobs=MemoryBlobStore(),
        )
    subject.emulator.reset()
    yield subject
    subject.emulator.reset()


def texts(n: int) -> list[str]:
    return [f"question number {i}" for i in range(1, n + 1)]


# --------------------------------------------------------------------------- scenarios


def test_submit(under_test: ProviderUnderTest) -> None:
    started = time.time()
    batch = under_test.submit(texts(3), BatchTag("job-s", 2))
    assert batch.batch_id and not batch.state.ended
    assert batch.state in (BatchState.QUEUED, BatchState.RUNNING)
    assert batch.created_at is not None and abs(batch.created_at - started) < 5
    assert set(batch.counts) == {"total", "completed", "failed"}
    assert under_test.client.get_batch(batch.batch_id).batch_id == batch.batch_id
    assert under_test.creates() == 1


def test_progress(under_test: ProviderUnderTest) -> None:
    # Half the batch runs, then it is held: the reads below see it running mid-way,
    # whatever this machine's speed.
    under_test.emulator.admin({"hold_after_lines": 20})
    batch = under_test.submit(texts(40))
    under_test.emulator.wait_held(batch.batch_id)
    running = [under_test.client.get_batch(batch.batch_id) for _ in range(3)]
    assert all(b.state is BatchState.RUNNING for b in running), running
    assert under_test.emulator.release() == [batch.batch_id.rsplit("/", 1)[-1]]
    ended, after = under_test.wait_ended(batch.batch_id)
    seen = running + after
    done = [b.counts["completed"] + b.counts["failed"] for b in seen]
    assert done == sorted(done) and done[-1] == 40
    assert all(b.counts["total"] in (0, 40) for b in seen)
    if under_test.live_counts:
        assert done[: len(running)] == [20] * len(running), "counts move while the batch runs"
    else:
        assert all(d == 0 for d in done[:-1]), "counts stay 0 until the batch ends"
    assert ended.state is BatchState.COMPLETED


def test_completion(under_test: ProviderUnderTest) -> None:
    batch, _ = under_test.wait_ended(under_test.submit(texts(12)).batch_id)
    assert batch.state is BatchState.COMPLETED
    assert batch.counts == {"total": 12, "completed": 12, "failed": 0}
    results = list(under_test.client.iter_results(batch))
    assert sorted(r.request_id for r in results) == sorted(f"bl-{i}" for i in range(1, 13))
    for result in results:
        assert result.status.value == "succeeded" and result.error is None
        assert result.text and "emulator" in result.text
        assert result.finish_reason
        assert result.usage is not None and result.usage["input_tokens"] > 0
        assert result.usage["output_tokens"] > 0 and result.response is not None


def test_partial_failure(under_test: ProviderUnderTest) -> None:
    lines = texts(6)
    lines[1] += " [emulator:fail=500]"
    lines[4] += " [emulator:fail=400]"
    batch, _ = under_test.wait_ended(under_test.submit(lines).batch_id)
    assert batch.state is BatchState.COMPLETED
    assert batch.counts == {"total": 6, "completed": 4, "failed": 2}
    by_id = {r.request_id: r for r in under_test.client.iter_results(batch)}
    assert len(by_id) == 6
    assert by_id["bl-2"].status.value == "failed" and by_id["bl-2"].error is not None
    assert by_id["bl-2"].error["retryable"] is True and by_id["bl-2"].error["message"]
    assert by_id["bl-5"].status.value == "failed" and by_id["bl-5"].error is not None
    assert by_id["bl-5"].error["retryable"] is False
    assert by_id["bl-2"].response is not None  # the provider's error body, kept
    assert {r.status.value for k, r in by_id.items() if k not in ("bl-2", "bl-5")} == {"succeeded"}


def test_expiry(under_test: ProviderUnderTest) -> None:
    under_test.emulator.admin({"lines_per_second": 20.0, "expire_after_seconds": 0.6})
    batch, _ = under_test.wait_ended(under_test.submit(texts(40)).batch_id)
    assert batch.state is BatchState.EXPIRED
    results = list(under_test.client.iter_results(batch))
    statuses = Counter(r.status.value for r in results)
    assert 0 < statuses["succeeded"] < 40
    if under_test.reports_expired_requests:
        assert set(statuses) == {"succeeded", "expired"}, statuses
        assert len(results) == 40
    else:
        assert statuses == {"succeeded": len(results)}  # collect marks the rest expired
    assert batch.counts == {
        "total": 40,
        "completed": statuses["succeeded"],
        "failed": 40 - statuses["succeeded"],
    }
    for result in results:
        if result.status.value == "expired":
            assert result.error is not None and result.error["type"] == "batch_expired"
            assert result.error["retryable"] is True


def test_cancel(under_test: ProviderUnderTest) -> None:
    # 30 requests run, then the batch is held until the cancel, however slow this machine.
    under_test.emulator.admin({"hold_after_lines": 30, "cancel_seconds": 0.1})
    batch = under_test.submit(texts(80))
    under_test.emulator.wait_held(batch.batch_id)
    under_test.client.cancel(batch.batch_id)
    assert under_test.client.get_batch(batch.batch_id).state in (
        BatchState.CANCELING,
        BatchState.CANCELED,
    )
    ended, _ = under_test.wait_ended(batch.batch_id)
    assert ended.state is BatchState.CANCELED
    results = list(under_test.client.iter_results(ended))
    statuses = Counter(r.status.value for r in results)
    if under_test.reports_unrun_requests:
        assert statuses == {"succeeded": 30, "canceled": 50}
    else:
        assert statuses == {"succeeded": 30}  # collect marks the rest canceled
    under_test.client.cancel(batch.batch_id)  # again, once ended: nothing to do


def test_unordered_results(under_test: ProviderUnderTest) -> None:
    batch, _ = under_test.wait_ended(under_test.submit(texts(60)).batch_id)
    order = [r.request_id for r in under_test.client.iter_results(batch)]
    expected = [f"bl-{i}" for i in range(1, 61)]
    assert sorted(order) == sorted(expected) and order != expected


# --------------------------------------------------------------------------- through the services


class OffsetClock:
    """Real time, moved on by the test (so that a lease can expire without waiting)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


class CrashAfterSubmit(BaseException):
    """The process dying: not an Exception, so nothing on the way catches it."""


class CrashingOnce:
    """Passes every call to `inner`, but dies right after the first submit succeeded."""

    def __init__(self, inner: ProviderClient) -> None:
        self.inner = inner
        self.name = inner.name
        self.crashed = False

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        batch = self.inner.create_batch(payload, tag, model, uploaded)
        if not self.crashed:
            self.crashed = True
            raise CrashAfterSubmit
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def pipeline(
    client: Any, subject: ProviderUnderTest, chunk_requests: int = 1000
) -> tuple[Deps, OffsetClock]:
    clock = OffsetClock()
    limits = ChunkLimits(chunk_requests, 10_000_000)
    settings = Settings(
        project="p",
        input_bucket=subject.bucket,
        output_bucket=subject.bucket,
        work_bucket=subject.bucket,
        providers={
            name: replace(block, limits=limits)
            for name, block in default_provider_settings().items()
        },
        lease_seconds=60,
    )
    provider = subject.name
    deps = Deps(
        settings=settings,
        store=MemoryJobStore(),
        blobs=subject.blobs,
        publisher=RecordingPublisher(),
        providers=Providers({provider: lambda: client}),
        clock=clock,
    )
    return deps, clock


def upload(deps: Deps, lines: list[dict[str, Any]]) -> ObjectFinalized:
    data = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    bucket, name = deps.settings.input_bucket, f"c/{uuid.uuid4().hex[:12]}/in.jsonl"
    assert deps.blobs.write_bytes(f"gs://{bucket}/{name}", data, "application/jsonl")
    info = deps.blobs.describe(f"gs://{bucket}/{name}")
    generation, size = info.generation, info.size
    return ObjectFinalized(bucket, name, generation, size)


def finish(deps: Deps, job_id: str, timeout: float = WAIT_SECONDS) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while (job := deps.store.get_job(job_id)) is not None and job.state is not JobState.COLLECTING:
        assert time.monotonic() < deadline, job
        poll(deps)
        time.sleep(0.05)
    collect(deps, job_id)
    done = deps.store.get_job(job_id)
    assert done is not None and done.state.terminal
    return [orjson.loads(x) for x in deps.blobs.read_bytes(done.results_uri).splitlines()]


def test_crash_and_reconcile(under_test: ProviderUnderTest) -> None:
    crashing = CrashingOnce(under_test.client)
    deps, clock = pipeline(crashing, under_test)
    lines = [under_test.line(t, f"k-{n}") for n, t in enumerate(texts(5))]
    with pytest.raises(CrashAfterSubmit):
        handle_object_finalized(deps, upload(deps, lines))
    store = deps.store
    assert isinstance(store, MemoryJobStore)
    [job_id] = store.jobs
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.state is ChunkState.SUBMITTING and chunk.batch_id is None
    [created] = under_test.emulator.batches()
    poll(deps)  # the lease is still held: nobody submits
    assert under_test.creates() == 1
    clock.offset += 61  # the lease expires
    poll(deps)
    [chunk] = deps.store.get_chunks(job_id)
    assert chunk.batch_id == created["id"] and chunk.attempts == 2
    assert chunk.state in (ChunkState.RUNNING, ChunkState.ENDED)
    results = finish(deps, job_id)
    assert under_test.creates() == 1  # adopted, not submitted again
    assert [(r["custom_id"], r["status"]) for r in results] == [
        (f"k-{n}", "succeeded") for n in range(5)
    ]


def test_id_round_trip(under_test: ProviderUnderTest) -> None:
    deps, _ = pipeline(under_test.client, under_test, chunk_requests=3)
    ids: list[str | None] = [
        "a/b",
        "ü-1",
        "x" * 200,
        "with space and 'quotes' \"too\"",
        None,  # would get line-5, which line 6 names itself: gets line-5-2
        "line-5",
        "🙂",
        "bl-1",  # batchline's own provider-facing form, given by a user
    ]
    lines = [under_test.line(f"q {n}", custom_id) for n, custom_id in enumerate(ids)]
    job = handle_object_finalized(deps, upload(deps, lines))
    assert job is not None and len(deps.store.get_chunks(job.job_id)) == 3
    results = finish(deps, job.job_id)
    expected = [custom_id or "line-5-2" for custom_id in ids]
    assert [r["custom_id"] for r in results] == expected
    assert [r["line"] for r in results] == list(range(1, len(ids) + 1))
    assert {r["status"] for r in results} == {"succeeded"}
    assert {r["provider"] for r in results} == {under_test.name}
