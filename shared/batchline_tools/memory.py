"""In-memory implementations of the storage ports, for unit tests and benchmarks.

They keep the semantics that matter (create-if-absent, transactional updates under one
lock, generation pinning) so that service logic tested on them means something. Never
used by the deployed functions or by integration tests.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, BinaryIO

from batchline.adapters import _listing
from batchline.domain.models import BatchTag, Chunk, IdempotencyKey, Job, ProviderLock, QuotaPool
from batchline.errors import NotFound, PreconditionFailed
from batchline.ports import (
    ChunkChange,
    JobChange,
    JobPage,
    JobQuery,
    LockChange,
    ObjectInfo,
    PoolChange,
)


class MemoryJobStore:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.chunks: dict[str, dict[int, Chunk]] = {}
        self.keys: dict[str, IdempotencyKey] = {}
        self.locks: dict[str, ProviderLock] = {}
        self.pools: dict[str, QuotaPool] = {}

        self._cursor_key = _listing.store_key("memory", os.urandom(16).hex())

    def create_job(self, job: Job) -> bool:
        with self._lock:
            if job.job_id in self.jobs:
                return False
            self.jobs[job.job_id] = job
            return True

    def get_job(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def job_for_key(self, key_id: str) -> tuple[IdempotencyKey, Job] | None:
        with self._lock:
            key = self.keys.get(key_id)
            job = self.jobs.get(key.job_id) if key is not None else None
            return (key, job) if key is not None and job is not None else None

    def create_job_for_key(self, key: IdempotencyKey, job: Job) -> tuple[Job, bool]:
        with self._lock:
            held = self.job_for_key(key.key_id)
            if held is not None:
                return held[1], False
            self.keys[key.key_id] = key
            self.jobs[job.job_id] = job
            return job, True

    def update_job(
        self, job_id: str, change: JobChange, new_chunks: Sequence[Chunk] = ()
    ) -> Job | None:
        with self._lock:
            current = self.jobs.get(job_id)
            if current is None:
                return None
            updated = change(current)
            if updated is None:
                return None
            updated = replace(updated, version=current.version + 1)
            self.jobs[job_id] = updated
            for chunk in new_chunks:
                self.chunks.setdefault(job_id, {})[chunk.index] = chunk
            return updated

    def get_chunks(self, job_id: str) -> list[Chunk]:
        with self._lock:
            return [c for _, c in sorted(self.chunks.get(job_id, {}).items())]

    def update_chunk(self, job_id: str, index: int, change: ChunkChange) -> Chunk | None:
        with self._lock:
            current = self.chunks.get(job_id, {}).get(index)
            if current is None:
                return None
            updated = change(current)
            if updated is not None:
                self.chunks[job_id][index] = updated
            return updated

    def active_jobs(self) -> list[Job]:
        with self._lock:
            return [j for j in self.jobs.values() if not j.state.terminal]

    def jobs_to_notify(self) -> list[Job]:
        with self._lock:
            return [j for j in self.jobs.values() if j.notify_pending]

    def batch_recorded_by(self, batch_id: str) -> BatchTag | None:
        with self._lock:
            for job_id, chunks in self.chunks.items():
                for index, chunk in sorted(chunks.items()):
                    if chunk.batch_id == batch_id:
                        return BatchTag(job_id, index)
            return None

    def get_lock(self, provider: str) -> ProviderLock:
        with self._lock:
            return self.locks.get(provider, ProviderLock(provider))

    def update_lock(self, provider: str, change: LockChange) -> ProviderLock | None:
        with self._lock:
            updated = change(self.locks.get(provider, ProviderLock(provider)))
            if updated is not None:
                self.locks[provider] = updated
            return updated

    def get_pool(self, key: str) -> QuotaPool:
        with self._lock:
            return self.pools.get(key, QuotaPool(key))

    def update_pool(self, key: str, change: PoolChange) -> QuotaPool | None:
        with self._lock:
            updated = change(self.pools.get(key, QuotaPool(key)))
            if updated is not None:
                self.pools[key] = updated
            return updated

    def list_jobs(self, query: JobQuery) -> JobPage:
        position = _listing.decode(self._cursor_key, query)
        with self._lock:
            found = sorted(
                (j for j in self.jobs.values() if query.matches(j)),
                key=lambda j: (j.created_at, j.job_id),
                reverse=True,
            )
        if position is not None:
            found = [j for j in found if (j.created_at, j.job_id) < position]
        page = found[: query.limit]
        more = len(found) > query.limit
        last = page[-1] if more else None
        cursor = (
            None
            if last is None
            else _listing.encode(self._cursor_key, query, last.created_at, last.job_id)
        )
        return JobPage(page, cursor)


class MemoryBlobStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, tuple[int, bytes]] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self._generation = 1000

    def put(
        self,
        uri: str,
        data: bytes | BinaryIO,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Create or overwrite (as a user's upload does); returns the new generation."""
        body = data if isinstance(data, bytes) else data.read()
        with self._lock:
            self._generation += 1
            self.objects[uri] = (self._generation, body)
            self.metadata[uri] = dict(metadata or {})
            return str(self._generation)

    def _get(self, uri: str, generation: str | None = None) -> bytes:
        with self._lock:
            found = self.objects.get(uri)
        if found is None or (generation is not None and str(found[0]) != str(generation)):
            raise NotFound(f"{uri} (generation {generation}) does not exist")
        return found[1]

    @contextmanager
    def open_read(
        self, uri: str, generation: str | None = None, *, buffer_bytes: int | None = None
    ) -> Iterator[BinaryIO]:
        yield io.BytesIO(self._get(uri, generation))

    def read_bytes(self, uri: str) -> bytes:
        return self._get(uri)

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> bool:
        with self._lock:
            if uri in self.objects:
                return False
            self._generation += 1
            self.objects[uri] = (self._generation, bytes(data))
            return True

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        if uri in self.objects:
            raise PreconditionFailed(f"{uri} already exists")
        buffer = io.BytesIO()
        yield buffer
        if not self.write_bytes(uri, buffer.getvalue(), content_type):
            raise PreconditionFailed(f"{uri} already exists")

    def exists(self, uri: str) -> bool:
        with self._lock:
            return uri in self.objects

    def create(self, uri: str, data: bytes, content_type: str) -> str:
        with self._lock:
            if uri in self.objects:
                raise PreconditionFailed(f"{uri} already exists")
            self._generation += 1
            self.objects[uri] = (self._generation, bytes(data))
            return str(self._generation)

    def describe(self, uri: str) -> ObjectInfo:
        with self._lock:
            found = self.objects.get(uri)
        if found is None:
            raise NotFound(f"{uri} does not exist")
        return ObjectInfo(
            generation=str(found[0]), size=len(found[1]), metadata=self.metadata.get(uri, {})
        )

    def list_prefix(self, prefix: str) -> Iterator[str]:
        with self._lock:
            found = sorted(uri for uri in self.objects if uri.startswith(prefix))
        yield from found


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def publish(self, topic: str, message: dict[str, Any], **attributes: str) -> None:
        self.messages.append((topic, message, attributes))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [m for t, m, _ in self.messages if t == topic]
