"""Following a job's running batches: the provider status calls of one job, several at
once.

A poll invocation advances one job (`services.poll`); a job with hundreds of chunks would
spend hundreds of provider round trips in a row asking how its batches are doing. Here
those calls run on a small pool of threads (`STATUS_CALLS_AT_ONCE`), each recording its
chunk's new state in its own transaction (`dispatch.refresh`: different chunk records,
so they never contend). The provider clients are safe to share between threads (the
SDKs' HTTP clients are; the adapters build them once, under a lock), and so are the
stores.

The job's lease still rules: the calls are made while the caller holds it (its `Keeper`
renews it from its own thread), each call first checks that the lease is not lost and
the budget not spent, and the pool is joined before the caller goes on, so nothing runs
after the lease is given back. A status read changes nothing at the provider: a call
repeated after a crash only reads again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from batchline.bootstrap import Deps
from batchline.domain.models import Chunk, ChunkState
from batchline.errors import RetryableError
from batchline.log import fields, get_logger
from batchline.services import dispatch
from batchline.services.leases import Keeper

log = get_logger(__name__)

#: Provider status calls one invocation makes at once (a small pool: the providers'
#: read rate limits are per account, and the function has one CPU).
STATUS_CALLS_AT_ONCE = 8


def refresh_running(
    deps: Deps, chunks: list[Chunk], deadline: float, keeper: Keeper
) -> list[Chunk]:
    """`chunks` with every running chunk's batch state asked for and recorded, up to
    `STATUS_CALLS_AT_ONCE` calls at a time, until `deadline` or the lease is lost. A
    chunk whose call failed transiently is left as it was (the next poll asks again);
    any other failure is raised once every call has ended."""
    running = [i for i, c in enumerate(chunks) if c.state is ChunkState.RUNNING and c.batch_id]
    if not running:
        return chunks

    def follow(chunk: Chunk) -> Chunk | None:
        if deps.clock.now() >= deadline or keeper.lost:
            return None
        try:
            return dispatch.refresh(deps, chunk)
        except RetryableError as exc:
            log.warning(
                "batch state not read",
                extra=fields(job_id=chunk.job_id, chunk=chunk.index, error=str(exc)),
            )
            return None

    workers = min(STATUS_CALLS_AT_ONCE, len(running))
    with ThreadPoolExecutor(workers, thread_name_prefix="batch-status") as pool:
        futures = [pool.submit(follow, chunks[i]) for i in running]
    updated = list(chunks)
    for i, future in zip(running, futures, strict=True):
        chunk = future.result()  # raises what a call raised, after all have ended
        if chunk is not None:
            updated[i] = chunk
    return updated
