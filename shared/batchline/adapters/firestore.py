"""JobStore on Firestore (native mode; the emulator via FIRESTORE_EMULATOR_HOST).

`jobs/{job_id}` holds the job; `jobs/{job_id}/chunks/{nnnnn}` its chunks;
`idempotency_keys/{key_id}` the API keys claimed for jobs; `provider_locks/{provider}`
the create lock of a provider whose batches carry no tag; `quota_pools/{provider~model}`
what is in flight against a provider's quota. Every update is a transaction,
so two invocations racing on one record see one winner. Every call translates the
client's errors the same way (`adapters._google.translated`).

A transaction that loses a race is aborted (`ABORTED`, the emulator's "Transaction lock
timeout") and tried again; every aborted attempt is counted (`CONTENTION`) and logged, and
one that never commits raises `Contention`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from batchline.adapters import _listing
from batchline.adapters._google import translated
from batchline.domain.models import (
    BatchTag,
    Chunk,
    IdempotencyKey,
    Job,
    JobState,
    ProviderLock,
    QuotaPool,
)
from batchline.errors import Contention, RetryableError
from batchline.log import fields, get_logger
from batchline.ports import ChunkChange, JobChange, JobPage, JobQuery, LockChange, PoolChange

if TYPE_CHECKING:
    from google.cloud import firestore

JOBS = "jobs"
CHUNKS = "chunks"
KEYS = "idempotency_keys"
CREATED_AT = "created_at"
#: A job's labels as `key=value` strings, beside the job's fields (written by this adapter
#: only, never read back into a Job): Firestore filters one label with array-contains, and
#: an index can serve that for any key (a label key itself cannot be in an index).
LABEL_PAIRS = "label_pairs"
#: How many job documents one `list_jobs` page reads at most when filters it checks
#: itself (a second label) skip some: a sparse match returns a short page and a cursor.
LIST_SCAN_LIMIT = 1000
LOCKS = "provider_locks"
POOLS = "quota_pools"
#: Attempts of one update whose reads are aborted by concurrent transactions (an aborted
#: commit is retried by the client itself).
UPDATE_ATTEMPTS = 3

log = get_logger(__name__)


class ContentionCount:
    """Aborted transaction attempts in this process, by what they updated (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.aborted = 0
        self.given_up = 0

    def add(self, aborted: int, given_up: bool, doing: str) -> None:
        with self._lock:
            self.aborted += aborted
            self.given_up += int(given_up)
        log.warning(
            "transaction aborted by contention",
            extra=fields(doing=doing, aborted=aborted, given_up=given_up),
        )


CONTENTION = ContentionCount()
#: A key record whose job does not exist yet is its creator's for this long (it creates
#: the job right after the key); after that its creator is taken for dead.
KEY_CLAIM_GRACE_SECONDS = 60.0
ACTIVE_STATES = [
    str(s) for s in (JobState.ACCEPTED, JobState.SUBMITTING, JobState.RUNNING, JobState.COLLECTING)
]


def make_client(project: str, database: str | None = None) -> firestore.Client:
    from google.cloud import firestore

    return firestore.Client(project=project, database=database or "(default)")


def pool_doc_id(key: str) -> str:
    """A quota pool's document id: its key (`provider/model`) with no `/` in it."""
    return key.replace("/", "~")


def chunk_doc_id(index: int) -> str:
    return f"{index:05d}"


class FirestoreJobStore:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client

    def _job_ref(self, job_id: str) -> Any:
        return self._db.collection(JOBS).document(job_id)

    def _chunk_ref(self, job_id: str, index: int) -> Any:
        return self._job_ref(job_id).collection(CHUNKS).document(chunk_doc_id(index))

    def create_job(self, job: Job) -> bool:
        from google.api_core.exceptions import AlreadyExists, Conflict

        with translated(f"creating job {job.job_id}"):
            try:
                self._job_ref(job.job_id).create(_job_doc(job))
            except (AlreadyExists, Conflict):
                return False
        return True

    def get_job(self, job_id: str) -> Job | None:
        with translated(f"reading job {job_id}"):
            snapshot = self._job_ref(job_id).get()
        return _job_of(snapshot.to_dict() or {}) if snapshot.exists else None

    def job_for_key(self, key_id: str) -> tuple[IdempotencyKey, Job] | None:
        with translated(f"reading idempotency key {key_id}"):
            snapshot = self._db.collection(KEYS).document(key_id).get()
        if not snapshot.exists:
            return None
        key = IdempotencyKey.from_dict(snapshot.to_dict() or {})
        job = self.get_job(key.job_id)
        return (key, job) if job is not None else None

    def create_job_for_key(self, key: IdempotencyKey, job: Job) -> tuple[Job, bool]:
        """The key's record is created first (create-if-absent: one winner, no contention
        between concurrent callers), then the job. A record whose job is missing is
        either being finished by its creator (younger than KEY_CLAIM_GRACE_SECONDS: the
        caller is asked to retry) or left by a creator that died, or by a job whose
        record expired: it is taken over in a transaction."""
        from google.api_core.exceptions import AlreadyExists, Conflict

        key_ref = self._db.collection(KEYS).document(key.key_id)
        with translated(f"claiming idempotency key {key.key_id}"):
            try:
                key_ref.create(key.to_dict())
            except (AlreadyExists, Conflict):
                return self._held_or_taken_over(key, job)
            self._job_ref(job.job_id).create(_job_doc(job))
        return job, True

    def _held_or_taken_over(self, key: IdempotencyKey, job: Job) -> tuple[Job, bool]:
        key_ref = self._db.collection(KEYS).document(key.key_id)
        snapshot = key_ref.get()
        holder = IdempotencyKey.from_dict(snapshot.to_dict() or {}) if snapshot.exists else None
        if holder is not None:
            current = self.get_job(holder.job_id)
            if current is not None:
                return current, False
            if key.created_at - holder.created_at < KEY_CLAIM_GRACE_SECONDS:
                raise RetryableError(f"idempotency key {key.key_id} is being claimed")
        seen = holder.job_id if holder is not None else None

        def run(transaction: Any) -> tuple[Job, bool]:
            again = key_ref.get(transaction=transaction)
            if again.exists:
                now_holder = IdempotencyKey.from_dict(again.to_dict() or {})
                if now_holder.job_id != seen:
                    raise RetryableError(f"idempotency key {key.key_id} was just claimed")
            transaction.set(key_ref, key.to_dict())
            transaction.create(self._job_ref(job.job_id), _job_doc(job))
            return job, True

        result: tuple[Job, bool] = _transact(self._db, run, f"claiming key {key.key_id}")
        return result

    def update_job(
        self, job_id: str, change: JobChange, new_chunks: Sequence[Chunk] = ()
    ) -> Job | None:
        ref = self._job_ref(job_id)

        def run(transaction: Any) -> Job | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            current = _job_of(snapshot.to_dict() or {})
            updated = change(current)
            if updated is None:
                return None
            updated = _bump(updated, current.version)
            transaction.set(ref, _job_doc(updated))
            for chunk in new_chunks:
                transaction.set(self._chunk_ref(job_id, chunk.index), chunk.to_dict())
            return updated

        result: Job | None = _transact(self._db, run, f"updating job {job_id}")
        return result

    def get_chunks(self, job_id: str) -> list[Chunk]:
        with translated(f"reading the chunks of job {job_id}"):
            docs = list(self._job_ref(job_id).collection(CHUNKS).stream())
        chunks = [Chunk.from_dict(doc.to_dict()) for doc in docs]
        return sorted(chunks, key=lambda c: c.index)

    def update_chunk(self, job_id: str, index: int, change: ChunkChange) -> Chunk | None:
        ref = self._chunk_ref(job_id, index)

        def run(transaction: Any) -> Chunk | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            updated = change(Chunk.from_dict(snapshot.to_dict()))
            if updated is not None:
                transaction.set(ref, updated.to_dict())
            return updated

        doing = f"updating chunk {index} of job {job_id}"
        result: Chunk | None = _transact(self._db, run, doing)
        return result

    def get_lock(self, provider: str) -> ProviderLock:
        with translated(f"reading the {provider} create lock"):
            snapshot = self._db.collection(LOCKS).document(provider).get()
        if not snapshot.exists:
            return ProviderLock(provider)
        return ProviderLock.from_dict(snapshot.to_dict() or {})

    def update_lock(self, provider: str, change: LockChange) -> ProviderLock | None:
        ref = self._db.collection(LOCKS).document(provider)

        def run(transaction: Any) -> ProviderLock | None:
            snapshot = ref.get(transaction=transaction)
            current = (
                ProviderLock.from_dict(snapshot.to_dict() or {})
                if snapshot.exists
                else ProviderLock(provider)
            )
            updated = change(current)
            if updated is not None:
                transaction.set(ref, updated.to_dict())
            return updated

        result: ProviderLock | None = _transact(self._db, run, f"updating the {provider} lock")
        return result

    def get_pool(self, key: str) -> QuotaPool:
        with translated(f"reading quota pool {key}"):
            snapshot = self._db.collection(POOLS).document(pool_doc_id(key)).get()
        if not snapshot.exists:
            return QuotaPool(key)
        return QuotaPool.from_dict(snapshot.to_dict() or {})

    def update_pool(self, key: str, change: PoolChange) -> QuotaPool | None:
        ref = self._db.collection(POOLS).document(pool_doc_id(key))

        def run(transaction: Any) -> QuotaPool | None:
            snapshot = ref.get(transaction=transaction)
            current = (
                QuotaPool.from_dict(snapshot.to_dict() or {}) if snapshot.exists else QuotaPool(key)
            )
            updated = change(current)
            if updated is not None:
                transaction.set(ref, updated.to_dict())
            return updated

        result: QuotaPool | None = _transact(self._db, run, f"updating quota pool {key}")
        return result

    def active_jobs(self) -> list[Job]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._db.collection(JOBS).where(filter=FieldFilter("state", "in", ACTIVE_STATES))
        with translated("listing active jobs"):
            docs = list(query.stream())
        return [_job_of(doc.to_dict() or {}) for doc in docs]

    def jobs_to_notify(self) -> list[Job]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._db.collection(JOBS).where(filter=FieldFilter("notify_pending", "==", True))
        with translated("listing jobs with a webhook to publish"):
            docs = list(query.stream())
        return [_job_of(doc.to_dict() or {}) for doc in docs]

    def batch_recorded_by(self, batch_id: str) -> BatchTag | None:
        """A collection-group query over every job's chunks. It needs the single-field
        index on `batch_id` with collection-group scope, which Firestore does not keep by
        default: infra/ must declare it. The emulator needs none."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = (
            self._db.collection_group(CHUNKS)
            .where(filter=FieldFilter("batch_id", "==", batch_id))
            .limit(1)
        )
        with translated(f"looking up the chunk that recorded batch {batch_id}"):
            docs = list(query.stream())
        for doc in docs:
            data = doc.to_dict() or {}
            return BatchTag(str(data["job_id"]), int(data["index"]))
        return None

    def list_jobs(self, query: JobQuery) -> JobPage:
        """Newest first: the query orders by `created_at` descending, and Firestore breaks
        ties by document id in the same direction (the client adds that order explicitly
        when it starts after a cursor). The state and the first label are filtered by
        Firestore (infra/firestore.tf has the composite indexes), further labels here."""
        key = _listing.store_key(self._db.project, getattr(self._db, "_database", ""))
        position = _listing.decode(key, query)
        jobs: list[Job] = []
        scanned = 0
        with translated("listing jobs"):
            for job in self._scan(query, position):
                scanned += 1
                if query.matches(job):
                    if len(jobs) == query.limit:  # one more exists: this page is full
                        newest = jobs[-1]
                        return JobPage(jobs, _listing.encode(key, query, *_at(newest)))
                    jobs.append(job)
                if scanned >= LIST_SCAN_LIMIT:  # enough work for one page: go on from here
                    return JobPage(jobs, _listing.encode(key, query, *_at(job)))
        return JobPage(jobs, None)

    def _scan(self, query: JobQuery, position: tuple[float, str] | None) -> Iterator[Job]:
        """The jobs after `position` that Firestore's filters let through, newest first,
        read a batch at a time."""
        from google.cloud.firestore_v1.base_document import DocumentSnapshot
        from google.cloud.firestore_v1.base_query import FieldFilter

        batch = query.limit + 1
        while True:
            page = self._list_query(query)
            if query.created_after is not None:
                page = page.where(filter=FieldFilter(CREATED_AT, ">", query.created_after))
            if query.created_before is not None:
                page = page.where(filter=FieldFilter(CREATED_AT, "<", query.created_before))
            if position is not None:
                after = self._job_ref(position[1])
                snapshot = DocumentSnapshot(
                    after, {CREATED_AT: position[0]}, True, None, None, None
                )
                page = page.start_after(snapshot)
            docs = list(page.limit(batch).stream())
            for doc in docs:
                job = _job_of(doc.to_dict() or {})
                position = _at(job)
                yield job
            if len(docs) < batch:
                return
            batch = min(batch * 2, LIST_SCAN_LIMIT)

    def _list_query(self, query: JobQuery) -> Any:
        """The query for the state and the first label, one whole chain per shape so that
        tests/infra reads each one and finds the index that serves it."""
        from google.cloud import firestore
        from google.cloud.firestore_v1.base_query import FieldFilter

        state = None if query.state is None else str(query.state)
        label = next((f"{k}={v}" for k, v in sorted(query.labels.items())), None)
        if state is not None and label is not None:
            return (
                self._db.collection(JOBS)
                .where(filter=FieldFilter("state", "==", state))
                .where(filter=FieldFilter(LABEL_PAIRS, "array_contains", label))
                .order_by(CREATED_AT, direction=firestore.Query.DESCENDING)
            )
        if state is not None:
            return (
                self._db.collection(JOBS)
                .where(filter=FieldFilter("state", "==", state))
                .order_by(CREATED_AT, direction=firestore.Query.DESCENDING)
            )
        if label is not None:
            return (
                self._db.collection(JOBS)
                .where(filter=FieldFilter(LABEL_PAIRS, "array_contains", label))
                .order_by(CREATED_AT, direction=firestore.Query.DESCENDING)
            )
        return self._db.collection(JOBS).order_by(CREATED_AT, direction=firestore.Query.DESCENDING)


def _at(job: Job) -> tuple[float, str]:
    return job.created_at, job.job_id


def _job_doc(job: Job) -> dict[str, Any]:
    """A job as its document: its fields, and its labels as `key=value` for listing."""
    doc = job.to_dict()
    doc[LABEL_PAIRS] = sorted(f"{k}={v}" for k, v in job.options.labels.items())
    return doc


def _job_of(doc: dict[str, Any]) -> Job:
    return Job.from_dict({k: v for k, v in doc.items() if k != LABEL_PAIRS})


def _transact(db: Any, body: Callable[[Any], Any], doing: str) -> Any:
    """Run `body(transaction)` in a transaction, counting aborted attempts. The client
    retries an aborted commit itself (5 attempts); an abort while reading is tried again
    here, a little later so that racers spread out. One that never commits raises
    `Contention`."""
    from google.api_core.exceptions import Aborted
    from google.cloud import firestore

    calls = 0

    def counted(transaction: Any) -> Any:
        nonlocal calls
        calls += 1
        return body(transaction)

    run = firestore.transactional(counted)
    aborted = 0
    for attempt in range(UPDATE_ATTEMPTS):
        before = calls
        try:
            with translated(doing):
                result = run(db.transaction())
        except (RetryableError, ValueError) as exc:
            if not _aborted(exc, Aborted):
                raise
            aborted += max(calls - before, 1)
            if isinstance(exc, ValueError) or attempt + 1 == UPDATE_ATTEMPTS:
                break  # the client's own retries are spent: others keep winning
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
            continue
        aborted += calls - before - 1
        if aborted:
            CONTENTION.add(aborted, False, doing)
        return result
    CONTENTION.add(aborted, True, doing)
    raise Contention(f"{doing}: the transaction kept losing to concurrent ones")


def _aborted(exc: BaseException, aborted: type[BaseException]) -> bool:
    """Whether `exc` is (or wraps) Firestore's ABORTED: a transaction lost a race."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, aborted):
            return True
        seen = seen.__cause__
    return False


def _bump(job: Job, version: int) -> Job:
    from dataclasses import replace

    return replace(job, version=version + 1)
