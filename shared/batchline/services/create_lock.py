"""One create in flight per deployment at a provider whose batches carry no tag (Anthropic).

An Anthropic batch says nothing of the chunk it was made for, so a batch whose creator
died before recording it can only be told by when it was made. The create lock makes
"when" enough: every create is made under `provider_locks/{provider}`, a record taken in
a transaction (`claims.take_lock`), renewed by the holder's heartbeat, which names the
chunk being created and the mark before it (`CreateIntent`: the newest batch the provider
listed just before). The rules:

1. A batch is created only by the lock's live holder, after its intent is recorded.
2. The intent is closed (`claims.settle_intent`, `claims.release_lock`) only once its
   batch is accounted for: recorded on its chunk, or shown not to exist by a listing made
   after the last create call for it ended (answered, or died with its process).
3. Whoever takes over an expired lock first settles the intent it finds (`settle`).

So while an intent is open, every batch batchline creates is that intent's chunk's, and
a batch listed after the mark, with that chunk's request count, recorded by no chunk, is
that chunk's batch beyond doubt, however many chunks and jobs crashed together: it is
adopted for that chunk (by the lock's next holder, on its behalf), never by another. A
second such batch is a duplicate of the same requests: cancelled, and noted on the chunk
as an orphan for the summary; with two or more and none recorded, which one the holder
was about to record cannot be told, so all are cancelled and the chunk is sent again.
Other chunks wait (they stay due, and the next tick tries again; not a failure).

What the rules cannot see (README, "Exactly once"): a batch another program creates with
the same API key after a mark; and a create request that reaches Anthropic only after its
holder's lock expired and was settled (the holder cut off from Firestore, not from
Anthropic, for a whole lease, with its request in flight).
"""

from __future__ import annotations

import math

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseState, LeaseTerms
from batchline.domain.models import BatchTag, Chunk, ChunkState, CreateIntent, ProviderBatch
from batchline.errors import ProviderError
from batchline.log import fields, get_logger
from batchline.ports import ProviderClient, UntaggedProvider
from batchline.services.leases import contended

log = get_logger(__name__)


class CreateLock:
    """A provider's create lock as one invocation (`owner`) takes, holds and releases it."""

    def __init__(self, deps: Deps, provider: UntaggedProvider, owner: str) -> None:
        self._deps = deps
        self._provider = provider
        self._owner = owner
        self._held = False
        #: The intent open on the lock as this holder knows it: the one an earlier holder
        #: left (settle it before anything else), then the holder's own.
        self.open: CreateIntent | None = None
        self._accounted = False

    @classmethod
    def of(cls, deps: Deps, provider: ProviderClient, owner: str) -> CreateLock | None:
        """The create lock `provider` needs; None when its batches carry tags."""
        if isinstance(provider, UntaggedProvider):
            return cls(deps, provider, owner)
        return None

    def _terms(self) -> LeaseTerms:
        return LeaseTerms(self._deps.settings.lease_seconds)

    def busy(self) -> bool:
        """Another invocation's create is in flight: a plain read, no transaction."""
        lock = self._deps.store.get_lock(self._provider.name)
        now = self._deps.clock.now()
        return claims.lease_state(lock.lease, self._owner, now) is LeaseState.HELD

    def take(self) -> bool:
        """Take the lock (False: another holds it, or won the race for it)."""
        change = Change(claims.take_lock, self._owner, self._deps.clock.now(), self._terms())
        taken = contended(self._deps.store.update_lock, self._provider.name, change)
        if taken is None:
            return False
        self._held = True
        self.open = taken.intent
        return True

    def renew(self) -> bool:
        """The heartbeat's renewal: True while the lock is mine (or not taken yet)."""
        if not self._held:
            return True
        change = Change(claims.renew_lock, self._owner, self._deps.clock.now(), self._terms())
        return self._deps.store.update_lock(self._provider.name, change) is not None

    def declare(self, chunk: Chunk) -> CreateIntent | None:
        """Mark the provider's newest batch and record the intent to create `chunk`'s;
        None when the lock is no longer mine (nothing may be created then)."""
        mark = self._provider.latest_batch()
        intent = CreateIntent(
            chunk.job_id,
            chunk.index,
            chunk.request_count,
            self._deps.clock.now(),
            mark.batch_id if mark is not None else None,
            mark.created_at if mark is not None else None,
        )
        change = Change(claims.declare_intent, self._owner, intent)
        if self._deps.store.update_lock(self._provider.name, change) is None:
            return None
        self.open, self._accounted = intent, False
        return intent

    def accounted(self) -> None:
        """The open intent's batch is accounted for (recorded, or the provider answered
        that it made none): releasing the lock closes the intent."""
        self._accounted = True

    def settle(self, intent: CreateIntent) -> Chunk | None:
        """Account for what `intent`'s creates made: adopt its batch for its chunk if
        exactly one is found and the chunk still waits for one, cancel the rest, then
        close the intent. The chunk as it is now (None: it is gone)."""
        found = self._unrecorded(intent)
        chunk = self._chunk(intent.tag)
        if chunk is not None and chunk.state is ChunkState.SUBMITTING and len(found) == 1:
            self._deps.store.update_chunk(
                chunk.job_id,
                chunk.index,
                Change(claims.record_batch, found[0], self._deps.clock.now()),
            )
            chunk = self._chunk(intent.tag)
            log.info("adopted batch", extra=_context(intent, batch_id=found[0].batch_id))
        kept = chunk.batch_id if chunk is not None else None
        self._cancel(intent, chunk, [b for b in found if b.batch_id != kept])
        change = Change(claims.settle_intent, self._owner, self._deps.clock.now(), intent.tag)
        if self._deps.store.update_lock(self._provider.name, change) is not None:
            self.open = None
        return chunk

    def release(self) -> None:
        """Give the lock back, closing the open intent if it is accounted for; with an
        intent still open, the lock stays for its next holder to settle (it expires)."""
        if not self._held:
            return
        self._held = False
        settled = self.open.tag if self.open is not None and self._accounted else None
        change = Change(claims.release_lock, self._owner, self._deps.clock.now(), settled)
        if self._deps.store.update_lock(self._provider.name, change) is None:
            log.info("create lock left to expire", extra=fields(owner=self._owner))

    def _unrecorded(self, intent: CreateIntent) -> list[ProviderBatch]:
        """Batches listed after the intent's mark, with its chunk's request count, that
        no chunk has recorded."""
        after = intent.after_created_at if intent.after_created_at is not None else 0.0
        listed = self._provider.find_batches(intent.tag, after, math.inf, intent.request_count)
        store = self._deps.store
        return [
            b
            for b in listed
            if b.batch_id != intent.after_batch and store.batch_recorded_by(b.batch_id) is None
        ]

    def _chunk(self, tag: BatchTag) -> Chunk | None:
        chunks = self._deps.store.get_chunks(tag.job_id)
        return next((c for c in chunks if c.index == tag.chunk), None)

    def _cancel(
        self, intent: CreateIntent, chunk: Chunk | None, extra: list[ProviderBatch]
    ) -> None:
        """Cancel duplicates of the intent's requests that nobody will read (each checked
        again just before: one recorded meanwhile is somebody's), noted on the chunk."""
        cancelled = []
        for batch in extra:
            if self._deps.store.batch_recorded_by(batch.batch_id) is not None:
                continue
            log.warning(
                "cancelling an orphan batch", extra=_context(intent, batch_id=batch.batch_id)
            )
            try:
                self._provider.cancel(batch.batch_id)
            except ProviderError as exc:
                log.error(
                    "could not cancel an orphan batch", extra=_context(intent, error=str(exc))
                )
            cancelled.append(batch.batch_id)
        if cancelled and chunk is not None:
            note = Change(claims.note_orphans, cancelled)
            self._deps.store.update_chunk(chunk.job_id, chunk.index, note)


def _context(intent: CreateIntent, **more: object) -> dict[str, object]:
    return fields(job_id=intent.job_id, chunk=intent.chunk, **more)
