"""The seams between batchline's services and the systems they use.

Adapters in `batchline.adapters` implement these against Google Cloud and the providers;
unit tests implement them in memory.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

from batchline.domain.models import (
    BatchTag,
    Chunk,
    IdempotencyKey,
    Job,
    JobState,
    ProviderBatch,
    ProviderLock,
    ProviderResult,
    QuotaPool,
)


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


@dataclass(frozen=True)
class ObjectInfo:
    """An object's metadata, as the bucket trigger's event also carries it."""

    generation: str
    size: int
    content_encoding: str | None = None
    md5: str | None = None
    #: When it was last written (epoch seconds), where the store says.
    updated: float | None = None
    #: Its custom metadata.
    metadata: Mapping[str, str] = field(default_factory=dict)


class BlobStore(Protocol):
    """Objects addressed by `gs://bucket/name` URIs."""

    def open_read(
        self, uri: str, generation: str | None = None, *, buffer_bytes: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """A streaming reader; `generation` pins the version. Raises NotFound.
        `buffer_bytes`: the most one fetch holds (None: the store's default); a caller
        with many readers open at once (the merge) asks for less."""
        ...

    def read_bytes(self, uri: str) -> bytes: ...

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> bool:
        """Create the object only if absent; False when it already existed (412)."""
        ...

    def open_write(self, uri: str, content_type: str) -> AbstractContextManager[BinaryIO]:
        """A streaming writer that creates the object only if absent.

        Raises PreconditionFailed (on open or on close) when it already existed.
        """
        ...

    def exists(self, uri: str) -> bool: ...

    def put(
        self,
        uri: str,
        data: bytes | BinaryIO,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Create or replace the object (a user's upload: the CLI, never a function) and
        return its generation. `data` is bytes or a stream read to its end."""
        ...

    def create(self, uri: str, data: bytes, content_type: str) -> str:
        """Create the object only if absent and return its generation; raises
        PreconditionFailed when it already existed. Needs no read access."""
        ...

    def describe(self, uri: str) -> ObjectInfo:
        """What the live object is. Raises NotFound."""
        ...

    def list_prefix(self, prefix: str) -> Iterator[str]:
        """The URIs of the objects whose URI starts with `prefix` (gs://bucket/...), by name."""
        ...


class Publisher(Protocol):
    def publish(self, topic: str, message: dict[str, Any], **attributes: str) -> None:
        """Publish and wait for the server's acknowledgement."""
        ...


#: The most jobs one page of `JobStore.list_jobs` holds.
MAX_PAGE_SIZE = 100


class InvalidCursor(ValueError):
    """A `JobQuery.cursor` that this store did not hand out for this query (tampered with,
    from another deployment, or from a query with other filters)."""


@dataclass(frozen=True)
class JobQuery:
    """Which jobs to list, newest first (by `created_at`, then job id): every filter given
    must hold. `labels` must all be on the job; `created_after`/`created_before` are epoch
    seconds, both exclusive. `cursor` is a page's `next_cursor`, for the page after it."""

    state: JobState | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 20
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be 1 to {MAX_PAGE_SIZE}, not {self.limit}")

    def matches(self, job: Job) -> bool:
        """Whether `job` passes every filter (the cursor aside)."""
        return (
            (self.state is None or job.state is self.state)
            and all(job.options.labels.get(k) == v for k, v in self.labels.items())
            and (self.created_after is None or job.created_at > self.created_after)
            and (self.created_before is None or job.created_at < self.created_before)
        )


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first; `next_cursor` is None on the last page."""

    jobs: list[Job]
    next_cursor: str | None = None


JobChange = Callable[[Job], Job | None]
ChunkChange = Callable[[Chunk], Chunk | None]
LockChange = Callable[[ProviderLock], ProviderLock | None]
PoolChange = Callable[[QuotaPool], QuotaPool | None]


class JobStore(Protocol):
    """Jobs and their chunks. Every update is a read-modify-write in one transaction:
    `change` sees the current record and returns the new one, or None to leave it."""

    def create_job(self, job: Job) -> bool:
        """False when a job with that id exists already (a duplicate trigger)."""
        ...

    def get_job(self, job_id: str) -> Job | None: ...

    def job_for_key(self, key_id: str) -> tuple[IdempotencyKey, Job] | None:
        """The key's record and its job, when both exist (a plain read, no transaction)."""
        ...

    def create_job_for_key(self, key: IdempotencyKey, job: Job) -> tuple[Job, bool]:
        """In one transaction: when `key.key_id` is held by a job that exists, (that job,
        False); otherwise record the key for `job`, create `job`, and return (job, True).
        Exactly one of any number of concurrent callers creates."""
        ...

    def update_job(
        self, job_id: str, change: JobChange, new_chunks: Sequence[Chunk] = ()
    ) -> Job | None:
        """Apply `change`; when it returns a job, also create `new_chunks`, atomically."""
        ...

    def get_chunks(self, job_id: str) -> list[Chunk]: ...

    def update_chunk(self, job_id: str, index: int, change: ChunkChange) -> Chunk | None: ...

    def active_jobs(self) -> list[Job]:
        """Jobs not yet in a terminal state."""
        ...

    def batch_recorded_by(self, batch_id: str) -> BatchTag | None:
        """The job and chunk that recorded provider batch `batch_id`, if any does."""
        ...

    def get_lock(self, provider: str) -> ProviderLock:
        """`provider`'s create lock as it is now (a plain read; free if never written)."""
        ...

    def update_lock(self, provider: str, change: LockChange) -> ProviderLock | None:
        """Apply `change` to `provider`'s create lock (a free one if never written)."""
        ...

    def get_pool(self, key: str) -> QuotaPool:
        """Quota pool `key` as it is now (a plain read; empty if never written)."""
        ...

    def update_pool(self, key: str, change: PoolChange) -> QuotaPool | None:
        """Apply `change` to quota pool `key` (an empty one if never written)."""
        ...

    def list_jobs(self, query: JobQuery) -> JobPage:
        """One page of the jobs `query` asks for, newest first. Raises InvalidCursor for a
        cursor this store did not hand out for the same filters. A page may hold fewer
        than `limit` jobs (even none) and still have a `next_cursor`: the store bounds
        the work one page takes."""
        ...

    def jobs_to_notify(self) -> list[Job]:
        """Jobs that ended with their webhook not yet published (`notify_pending`)."""
        ...


@dataclass(frozen=True)
class StagedPayload:
    """A chunk's payload (its encoded requests, JSONL) as staged in the work bucket.

    Providers that take an upload or a request body read it through `open`; Vertex AI
    reads the object at `uri` itself, so nothing is downloaded or written twice.
    """

    uri: str
    size: int
    open: Callable[[], AbstractContextManager[BinaryIO]]

    @classmethod
    def of_bytes(cls, data: bytes, uri: str = "memory://payload.jsonl") -> StagedPayload:
        """A payload held in memory (tests and benchmarks)."""
        return cls(uri, len(data), lambda: contextlib.nullcontext(io.BytesIO(data)))


class ProviderClient(Protocol):
    """One provider's batch API, as batchline uses it."""

    name: str

    def upload_input(self, payload: StagedPayload, tag: BatchTag) -> str | None:
        """Upload a chunk's input ahead of its batch, where the provider takes it as a
        separate upload (OpenAI's files): the provider's id of the upload, which expires
        by itself. None where it takes none (Anthropic: requests inline; Vertex AI reads
        the staged payload itself)."""
        ...

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        """Create a batch from a staged payload, tagged so it can be found again. With
        `uploaded` (an `upload_input` id), from that upload, without uploading again; an
        upload the provider no longer has (expired, deleted) is made afresh."""
        ...

    def discard_input(self, file_id: str) -> None:
        """Delete an upload nobody will use (best effort: one already gone is fine)."""
        ...

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        """Batches that may be the one a submit for `tag` created, newest first.

        Where the provider keeps batch metadata, the batch carrying `tag` (at most one).
        Where it does not, every batch created between the two times (epoch seconds) with
        `request_count` requests: candidates, which the caller must tell apart.
        """
        ...

    def get_batch(self, batch_id: str) -> ProviderBatch: ...

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        """Every result the provider holds for an ended batch, in any order."""
        ...

    def cancel(self, batch_id: str) -> None: ...


@runtime_checkable
class UntaggedProvider(ProviderClient, Protocol):
    """A provider whose batches carry no tag (Anthropic): an unrecorded batch can only be
    told apart by when it was made, so its creates go one at a time through a create
    lock (`services/create_lock.py`), and `find_batches` lists by time and count."""

    def latest_batch(self) -> ProviderBatch | None:
        """The newest batch the provider lists (None: it lists none): the mark after which
        a create lock's holder creates."""
        ...
