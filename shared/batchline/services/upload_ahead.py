"""Uploading a waiting chunk's input to its provider ahead of its quota admission.

A provider that takes a batch's input as an upload of its own (OpenAI's files) would
otherwise get it inside the chunk's quota hold (`admission.admit`, then `dispatch`): for
a chunk of 100-200 MB, tens of seconds in which the quota is held while the provider's
queue does not hold the batch yet. So a chunk told to wait for its quota has its input
uploaded while it waits; once admitted, only the batch's create runs inside the hold
(`submitting.create` passes the upload's id). Uploads expire by themselves at the
provider (OpenAI: `UPLOAD_TTL_SECONDS`, 7 days: more than a chunk's longest wait and its
batch's window).

The steps, and what a crash right after each leaves:

1. `ProviderClient.upload_input`: a file at the provider that no chunk names. The next
   advance uploads the chunk again (or its create does, if it is admitted first); the
   orphan expires by itself.
2. `claims.note_upload`: the chunk names its file; the dispatch that follows creates the
   batch from it, without a second upload. The rule notes only the first upload of a
   pending chunk: an uploader that lost a race (or finds the chunk gone on) deletes its
   own file (`discard_input`; dying before that leaves an orphan that expires).

A file the provider no longer has when the batch is created (expired, deleted) is
uploaded afresh by the adapter (`create_batch`). A chunk sent back by its quota keeps
its file: one file feeds several batches.
"""

from __future__ import annotations

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.models import BatchTag, Chunk, ChunkState
from batchline.errors import ProviderError
from batchline.log import get_logger
from batchline.services import admission
from batchline.services.leases import Keeper, contended
from batchline.services.submitting import context, staged

log = get_logger(__name__)

#: A job keeps at most this many chunks uploaded and waiting: enough for the next
#: batches that end (they end one at a time), while the provider's file storage and the
#: advancing invocation's time (an ended batch waits while an upload runs) stay small.
UPLOAD_AHEAD = 2


def upload_waiting(
    deps: Deps, chunks: list[Chunk], waits: dict[str, str], deadline: float, keeper: Keeper
) -> int:
    """Upload the inputs of `chunks` that wait for their quota (pending, in a pool that
    `waits` names) and have none uploaded yet, in chunk order, until `UPLOAD_AHEAD` of the
    job's pending chunks have one, while the `deadline` and the job's lease (`keeper`)
    allow. Returns how many it uploaded. A provider that fails an upload is not asked
    again in this advance (the chunk is uploaded in its create if its turn comes first)."""
    ahead = sum(1 for c in chunks if c.state is ChunkState.PENDING and c.uploaded_input)
    done = 0
    for chunk in chunks:
        if ahead >= UPLOAD_AHEAD or deps.clock.now() >= deadline or keeper.lost:
            break
        if not _waiting(deps, chunk, waits):
            continue
        try:
            file_id = _upload(deps, chunk)
        except ProviderError as exc:
            log.warning("upload ahead failed", extra=context(chunk, error=str(exc)))
            break
        if file_id is not None:
            done += 1
            ahead += 1
            _note(deps, chunk, file_id)
    return done


def _waiting(deps: Deps, chunk: Chunk, waits: dict[str, str]) -> bool:
    return (
        chunk.state is ChunkState.PENDING
        and chunk.uploaded_input is None
        and admission.quota_of(deps, chunk).key in waits
    )


def _upload(deps: Deps, chunk: Chunk) -> str | None:
    provider = deps.providers.get(chunk.provider)
    file_id = provider.upload_input(staged(deps, chunk), BatchTag(chunk.job_id, chunk.index))
    if file_id is not None:
        log.info("input uploaded ahead", extra=context(chunk, file_id=file_id))
    return file_id


def _note(deps: Deps, chunk: Chunk, file_id: str) -> None:
    """Name the upload on the chunk's record; an upload the chunk does not take (another
    was noted first, or the chunk moved on) is discarded. One whose note lost a store
    race is left to expire: it may yet be the one noted, so it is not deleted."""
    change = Change(claims.note_upload, file_id, deps.clock.now())
    if contended(deps.store.update_chunk, chunk.job_id, chunk.index, change) is not None:
        return
    if change.left is None:
        log.warning("could not note an upload; it expires", extra=context(chunk, file_id=file_id))
        return
    log.info(
        "input uploaded twice; discarding ours",
        extra=context(chunk, file_id=file_id, left=str(change.left)),
    )
    discard(deps, chunk, file_id)


def discard(deps: Deps, chunk: Chunk, file_id: str) -> None:
    """Delete an upload of `chunk`'s input that will feed no batch, best effort: one left
    behind (by a failure, or a crash right before) expires by itself."""
    try:
        deps.providers.get(chunk.provider).discard_input(file_id)
    except ProviderError as exc:
        log.warning("could not discard an upload", extra=context(chunk, error=str(exc)))
