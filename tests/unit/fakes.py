"""In-memory fakes of the provider and clock ports for unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from batchline.bootstrap import Deps, Providers
from batchline.config import ChunkLimits, Settings, default_provider_settings
from batchline.domain.models import (
    BatchState,
    BatchTag,
    ProviderBatch,
    ProviderResult,
    ResultStatus,
)
from batchline.ports import StagedPayload
from batchline_tools.memory import MemoryBlobStore, MemoryJobStore, RecordingPublisher


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class FakeBatch:
    batch: ProviderBatch
    request_ids: list[str]
    finished: set[str] = field(default_factory=set)  # for expiry: which ran


def _id(request: dict[str, Any]) -> str:
    if "custom_id" in request:
        found: str = request["custom_id"]
        return found
    labels: dict[str, str] = request["request"]["labels"]
    return labels["batchline_request_id"]


class CrashAfterSubmit(BaseException):
    """Stands for the process dying: not an Exception, so nothing catches it."""


class FakeProvider:
    """A provider batch API in memory. `tags=False` plays a provider without batch
    metadata (Anthropic): batches are found by creation time and request count only."""

    name = "openai"

    def __init__(self, clock: FakeClock, *, tags: bool = True) -> None:
        self.clock = clock
        self.tags = tags
        # Inputs go up as files first, as at OpenAI (`upload_input`); a provider without
        # tags (Anthropic) takes its requests inline and uploads nothing.
        self.takes_uploads = tags
        self.files: dict[str, bytes] = {}  # uploaded inputs, by id
        self.uploads: list[BatchTag] = []  # every upload, ahead or inside a create
        self.discarded: list[str] = []
        self.fail_discard: Exception | None = None  # raised by the next discard, once
        self.created_from: dict[str, str | None] = {}  # batch id -> its input file
        # Called once, right after the next upload (before its id is returned).
        self.stall_after_upload: Callable[[], object] | None = None
        self.crash_after_upload = False
        self.id_prefix = "batch_"  # batch ids are unique across providers, as in life
        self.usage = {"input_tokens": 10, "output_tokens": 5}  # of every answer
        self.batches: dict[str, FakeBatch] = {}
        self.fail_ids: set[str] = set()
        self.crash_after_submit = False
        # Called once, inside the next submit, before (or after) the batch is created:
        # plays a submit call that stalls past its lease while another one runs.
        self.stall_before_create: Callable[[], object] | None = None
        self.stall_after_create: Callable[[], object] | None = None
        # Raised by the next submit, once, before anything is created.
        self.fail_create: Exception | None = None

    def _fire(self, fault: str) -> None:
        """Take the one-shot fault named `fault`, if one is set: an error is raised, a
        stall called; either way it is cleared first (it happens once)."""
        taken = getattr(self, fault)
        if taken is None:
            return
        setattr(self, fault, None)
        if isinstance(taken, BaseException):
            raise taken
        taken()

    def upload_input(self, payload: StagedPayload, tag: BatchTag) -> str | None:
        if not self.takes_uploads:
            return None
        with payload.open() as stream:
            data = stream.read()
        file_id = f"file-{len(self.uploads)}"
        self.files[file_id] = data
        self.uploads.append(tag)
        self._fire("stall_after_upload")
        if self.crash_after_upload:
            self.crash_after_upload = False
            raise CrashAfterSubmit
        return file_id

    def discard_input(self, file_id: str) -> None:
        self._fire("fail_discard")
        self.discarded.append(file_id)
        self.files.pop(file_id, None)

    def _input(
        self, payload: StagedPayload, tag: BatchTag, uploaded: str | None
    ) -> tuple[str | None, bytes]:
        """The batch's input file and content: the upload named (if the provider still
        has it), else a fresh upload (as OpenAI's adapter does), else the payload itself
        (inline)."""
        if uploaded is not None and uploaded in self.files:
            return uploaded, self.files[uploaded]
        if self.takes_uploads:
            fresh = self.upload_input(payload, tag)
            assert fresh is not None
            return fresh, self.files[fresh]
        with payload.open() as stream:
            return None, stream.read()

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        file_id, data = self._input(payload, tag, uploaded)
        # OpenAI's and Anthropic's lines carry `custom_id`, Vertex's a request label.
        ids = [_id(orjson.loads(line)) for line in data.splitlines()]
        self._fire("fail_create")
        self._fire("stall_before_create")
        batch = ProviderBatch(
            f"{self.id_prefix}{len(self.batches)}",
            BatchState.RUNNING,
            {"total": len(ids)},
            tag if self.tags else None,
            self.clock.now(),
        )
        self.batches[batch.batch_id] = FakeBatch(batch, ids, set(ids))
        self.created_from[batch.batch_id] = file_id
        self._fire("stall_after_create")
        if self.crash_after_submit:
            self.crash_after_submit = False
            raise CrashAfterSubmit
        return batch

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        found = []
        for fake in reversed(self.batches.values()):  # newest first
            batch = fake.batch
            created = batch.created_at or 0
            if self.tags:
                if batch.tag == tag and created >= created_after:
                    return [batch]
            elif created_after <= created <= created_before and (
                len(fake.request_ids) == request_count
            ):
                found.append(batch)
        return found

    def get_batch(self, batch_id: str) -> ProviderBatch:
        return self.batches[batch_id].batch

    def end(self, state: BatchState = BatchState.COMPLETED, finished: int | None = None) -> None:
        for fake in self.batches.values():
            fake.batch = replace(fake.batch, state=state)
            if finished is not None:
                fake.finished = set(fake.request_ids[:finished])

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        fake = self.batches[batch.batch_id]
        for rid in reversed(fake.request_ids):  # providers do not keep order
            if rid not in fake.finished:
                continue
            if rid in self.fail_ids:
                yield ProviderResult(
                    rid,
                    ResultStatus.FAILED,
                    error={"type": "server_error", "message": "x", "retryable": True},
                )
            else:
                yield ProviderResult(
                    rid,
                    ResultStatus.SUCCEEDED,
                    text=f"ok {rid}",
                    finish_reason="stop",
                    usage=dict(self.usage),
                    response={"id": rid},
                )

    def cancel(self, batch_id: str) -> None:
        fake = self.batches[batch_id]
        fake.batch = replace(fake.batch, state=BatchState.CANCELED)


class UntaggedFakeProvider(FakeProvider):
    """A provider without batch metadata (Anthropic): its creates go through the create
    lock, which marks the newest batch before each."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock, tags=False)

    def latest_batch(self) -> ProviderBatch | None:
        return next((fake.batch for fake in reversed(self.batches.values())), None)


def with_limits(limits: ChunkLimits, *names: str) -> dict[str, Any]:
    """Every provider's default settings block, the named ones (all when none is named)
    with `limits`."""
    blocks = default_provider_settings()
    return {
        name: replace(block, limits=limits) if not names or name in names else block
        for name, block in blocks.items()
    }


def make_deps(
    max_requests: int = 1000, *, tags: bool = True
) -> tuple[Deps, FakeProvider, FakeClock]:
    clock = FakeClock()
    provider = FakeProvider(clock) if tags else UntaggedFakeProvider(clock)
    settings = Settings(
        project="p",
        input_bucket="in",
        output_bucket="out",
        work_bucket="work",
        providers=with_limits(ChunkLimits(max_requests, 10_000_000), "openai"),
        lease_seconds=60,
        # No heartbeat threads: a holder's lease runs out when the test moves the clock
        # past it (tests/unit/test_leases.py turns them on).
        heartbeat_seconds=0,
    )
    deps = Deps(
        settings=settings,
        store=MemoryJobStore(),
        blobs=MemoryBlobStore(),
        publisher=RecordingPublisher(),
        providers=Providers({"openai": lambda: provider}),
        clock=clock,
    )
    return deps, provider, clock
