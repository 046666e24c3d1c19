"""Staging the chunks the chunk planner cuts: their files in the work bucket and their
`Chunk` records, for the first round (planning) and for every follow-up round after it.

While a chunk fills, its stored requests stream to their file (`open_sink`); once the
planner hands the chunk out, `stage` writes its payload and manifest, finishes the stored
requests and makes the chunk's record (committed later, with the job, by the caller).
Every name is deterministic and every write create-if-absent, so an invocation that takes
over from one that died stages the same files again harmlessly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from batchline.bootstrap import Deps
from batchline.domain.estimate import estimate_input_tokens
from batchline.domain.models import Chunk
from batchline.domain.paths import WorkPaths
from batchline.domain.planning import ChunkPlanner, Observer, PlannedChunk, Sink
from batchline.domain.workfiles import StreamedFile
from batchline.domain.workfiles.manifest import write_manifest
from batchline.domain.workfiles.payload import write_payload
from batchline.domain.workfiles.requests import stream_stored


class ChunkStager:
    """Stages chunks as `index`, `index + 1`, ... in the order they are handed out. A
    follow-up round's chunks name their round, why it runs and the chunk whose lines they
    send again (`round_of`).
    `store_requests=False` keeps no stored requests (a repair of a chunk that has none)."""

    def __init__(
        self,
        deps: Deps,
        paths: WorkPaths,
        index: int = 0,
        *,
        round_number: int = 0,
        round_of: int | None = None,
        round_reason: str | None = None,
        store_requests: bool = True,
    ) -> None:
        self._deps = deps
        self._paths = paths
        self._next = index
        self._round = round_number
        self._round_of = round_of
        self._round_reason = round_reason
        self._store_requests = store_requests

    def planner(self, observe: Observer | None = None) -> ChunkPlanner:
        """A chunk planner under the deployment's limits and encoders whose chunks' stored
        requests stream to this stager's files; `observe` sees every request it takes."""
        deps = self._deps
        sink = self.open_sink if self._store_requests else _discard
        return ChunkPlanner(
            deps.limits,
            deps.encoder,
            observe,
            open_sink=sink,
            narrow=deps.settings.quotas.narrow,
            count=estimate_input_tokens,
        )

    def open_sink(self, provider: str, model: str, first_line: int) -> StreamedFile:
        """The file a new chunk's stored requests stream to (the planner's `open_sink`)."""
        return stream_stored(self._deps.blobs, self._paths.requests(self._round, first_line))

    def stage(self, planned: PlannedChunk) -> Chunk:
        """Write a cut chunk's files and return its record (not yet committed)."""
        index = self._next
        self._next += 1
        paths, blobs = self._paths, self._deps.blobs
        requests_uri = None
        if isinstance(planned.requests, StreamedFile):
            planned.requests.commit()
            requests_uri = planned.requests.uri
        payload_uri, manifest_uri = paths.payload(index), paths.manifest(index)
        # False means an invocation before us wrote the same bytes: nothing to do.
        write_payload(blobs, payload_uri, planned.payload.getvalue())
        write_manifest(blobs, manifest_uri, planned.manifest.getvalue())
        return Chunk(
            job_id=self._paths.job_id,
            index=index,
            provider=planned.provider,
            model=planned.model,
            request_count=planned.request_count,
            payload_bytes=planned.payload_bytes,
            payload_uri=payload_uri,
            manifest_uri=manifest_uri,
            requests_uri=requests_uri,
            input_tokens=planned.input_tokens,
            updated_at=self._deps.clock.now(),
            round=self._round,
            round_of=self._round_of,
            round_reason=self._round_reason,
        )

    @contextmanager
    def abandoning(self, planner: ChunkPlanner) -> Iterator[None]:
        """On failure inside, give up the files of the chunks `planner` still fills."""
        try:
            yield
        except BaseException as exc:
            for chunk in planner.open_chunks():
                if isinstance(chunk.requests, StreamedFile):
                    chunk.requests.abandon(exc)
            raise


def _discard(provider: str, model: str, first_line: int) -> Sink:
    return _Discard()


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)
