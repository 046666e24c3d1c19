"""A chunk whose batch holds another chunk's requests: found by collect, and put right.

The create lock makes an Anthropic batch's owner certain (`create_lock.py`); this is the
net under it, for what the lock cannot see (README, "Exactly once") and for any record
that went wrong. Collect matches every result to a line of the chunk's manifest by
batchline's request id; a result whose line is not the chunk's means the batch is
another's (`MixUp`). Writing `missing_result` for the chunk's own lines would be wrong
(they never ran), so nothing of the chunk is committed, and `put_right` fixes the
records in one transaction with the job's move back to running:

- the batch goes back to the chunk whose lines it holds (its owner) when that chunk's
  own record is mixed up too (two chunks swapped batches): nothing is sent again;
- otherwise it is an orphan (its owner has a batch of its own, or no owner is found):
  noted on the owner, else on the chunk, and reported in the summary (it ran, unread);
- the chunk forgets it and is sent again, once (`claims.resend`): its own requests.

A collect that dies before the transaction finds the same mix-ups again; one that comes
after it finds the job running, and leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change
from batchline.domain.ids import line_of
from batchline.domain.models import BatchState, Chunk, Job, ProviderBatch
from batchline.errors import BatchlineError
from batchline.log import fields, get_logger

log = get_logger(__name__)


class MixUp(BatchlineError):
    """The batch `chunk` recorded answers `request_id`, which is not one of its lines."""

    def __init__(self, chunk: Chunk, request_id: str) -> None:
        super().__init__(
            f"job {chunk.job_id} chunk {chunk.index}: batch {chunk.batch_id} answers "
            f"{request_id!r}, not one of the chunk's requests"
        )
        self.chunk = chunk
        self.request_id = request_id


def put_right(
    deps: Deps,
    job: Job,
    chunks: list[Chunk],
    found: list[MixUp],
    lines_of: Callable[[Chunk], Collection[int]],
) -> Job | None:
    """Fix the records of the chunks `found` mixed up (see the module docstring) and move
    the job back to running, in one transaction; the job as it is afterwards."""
    by_index = {c.index: c for c in chunks}
    owners = {m.chunk.index: _owner(chunks, m, lines_of) for m in found}
    fixed = _untangle(by_index, owners, deps.clock.now())
    for mixup in found:
        log.error(
            "a chunk's batch holds another chunk's requests; putting it right",
            extra=fields(
                job_id=job.job_id,
                chunk=mixup.chunk.index,
                batch_id=mixup.chunk.batch_id,
                owner=owners[mixup.chunk.index],
                sent_again=mixup.chunk.index in fixed and fixed[mixup.chunk.index].batch_id is None,
            ),
        )
    reopen = Change(claims.reopen_for_resend, deps.clock.now())
    reopened = deps.store.update_job(job.job_id, reopen, new_chunks=list(fixed.values()))
    return reopened or deps.store.get_job(job.job_id)


def _owner(
    chunks: list[Chunk], mixup: MixUp, lines_of: Callable[[Chunk], Collection[int]]
) -> int | None:
    """The chunk of the job whose lines the batch answers (the one of its request count
    first: a repair chunk holds some lines of the chunk it repairs); None: no chunk."""
    line = line_of(mixup.request_id)
    if line is None:
        return None
    count = mixup.chunk.batch_counts.get("total")
    others = [c for c in chunks if c.index != mixup.chunk.index]
    others.sort(key=lambda c: c.request_count != count)
    return next((c.index for c in others if line in lines_of(c)), None)


def _untangle(
    chunks: dict[int, Chunk], owners: dict[int, int | None], now: float
) -> dict[int, Chunk]:
    """The records of the mixed-up chunks, and of their owners, as they are to be."""
    fixed: dict[int, Chunk] = {}

    def current(index: int) -> Chunk:
        return fixed.get(index, chunks[index])

    taken: dict[str, int] = {}  # a batch given back to its owner
    for index, owner in owners.items():  # swaps: an owner mixed up too takes its own back
        held = chunks[index]
        if owner is not None and owner in owners and held.batch_id is not None:
            rebound = claims.rebind(current(owner), str(chunks[owner].batch_id), _batch(held), now)
            if isinstance(rebound, Chunk):
                fixed[owner], taken[held.batch_id] = rebound, owner
    for index in owners:  # the others are sent again: their own requests never ran
        if index not in taken.values():
            again = claims.resend(current(index), str(chunks[index].batch_id), now)
            if isinstance(again, Chunk):
                fixed[index] = again
    for index, owner in owners.items():  # what nobody takes ran unread: an orphan
        batch_id = str(chunks[index].batch_id)
        if batch_id in taken or (owner is not None and current(owner).batch_id == batch_id):
            continue
        keeper = owner if owner is not None else index
        noted = claims.note_orphans(current(keeper), [batch_id])
        if isinstance(noted, Chunk):
            fixed[keeper] = noted
    return fixed


def _batch(chunk: Chunk) -> ProviderBatch:
    """The batch `chunk` recorded, as it recorded it (ended: collect runs after that)."""
    return ProviderBatch(
        str(chunk.batch_id), chunk.batch_state or BatchState.COMPLETED, chunk.batch_counts
    )
