"""JobStore on Firestore (native mode; the emulator via FIRESTORE_EMULATOR_HOST).

`jobs/{job_id}` holds the job; `jobs/{job_id}/chunks/{nnnnn}` its chunks;
`idempotency_keys/{key_id}` the API keys claimed for jobs. Every update is a transaction,
so two invocations racing on one record see one winner. Every call translates the
client's errors the same way (`adapters._google.translated`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from batchline.adapters._google import translated
from batchline.domain.models import BatchTag, Chunk, IdempotencyKey, Job, JobState
from batchline.errors import RetryableError
from batchline.ports import ChunkChange, JobChange

if TYPE_CHECKING:
    from google.cloud import firestore

JOBS = "jobs"
CHUNKS = "chunks"
KEYS = "idempotency_keys"
#: A key record whose job does not exist yet is its creator's for this long (it creates
#: the job right after the key); after that its creator is taken for dead.
KEY_CLAIM_GRACE_SECONDS = 60.0
ACTIVE_STATES = [
    str(s) for s in (JobState.ACCEPTED, JobState.SUBMITTING, JobState.RUNNING, JobState.COLLECTING)
]


def make_client(project: str, database: str | None = None) -> firestore.Client:
    from google.cloud import firestore

    return firestore.Client(project=project, database=database or "(default)")


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
                self._job_ref(job.job_id).create(job.to_dict())
            except (AlreadyExists, Conflict):
                return False
        return True

    def get_job(self, job_id: str) -> Job | None:
        with translated(f"reading job {job_id}"):
            snapshot = self._job_ref(job_id).get()
        return Job.from_dict(snapshot.to_dict()) if snapshot.exists else None

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
            self._job_ref(job.job_id).create(job.to_dict())
        return job, True

    def _held_or_taken_over(self, key: IdempotencyKey, job: Job) -> tuple[Job, bool]:
        from google.cloud import firestore

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

        @firestore.transactional
        def run(transaction: Any) -> tuple[Job, bool]:
            again = key_ref.get(transaction=transaction)
            if again.exists:
                now_holder = IdempotencyKey.from_dict(again.to_dict() or {})
                if now_holder.job_id != seen:
                    raise RetryableError(f"idempotency key {key.key_id} was just claimed")
            transaction.set(key_ref, key.to_dict())
            transaction.create(self._job_ref(job.job_id), job.to_dict())
            return job, True

        result: tuple[Job, bool] = _committed(run, self._db.transaction())
        return result

    def update_job(
        self, job_id: str, change: JobChange, new_chunks: Sequence[Chunk] = ()
    ) -> Job | None:
        from google.cloud import firestore

        ref = self._job_ref(job_id)

        @firestore.transactional
        def run(transaction: Any) -> Job | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            current = Job.from_dict(snapshot.to_dict())
            updated = change(current)
            if updated is None:
                return None
            updated = _bump(updated, current.version)
            transaction.set(ref, updated.to_dict())
            for chunk in new_chunks:
                transaction.set(self._chunk_ref(job_id, chunk.index), chunk.to_dict())
            return updated

        with translated(f"updating job {job_id}"):
            result: Job | None = _committed(run, self._db.transaction())
        return result

    def get_chunks(self, job_id: str) -> list[Chunk]:
        with translated(f"reading the chunks of job {job_id}"):
            docs = list(self._job_ref(job_id).collection(CHUNKS).stream())
        chunks = [Chunk.from_dict(doc.to_dict()) for doc in docs]
        return sorted(chunks, key=lambda c: c.index)

    def update_chunk(self, job_id: str, index: int, change: ChunkChange) -> Chunk | None:
        from google.cloud import firestore

        ref = self._chunk_ref(job_id, index)

        @firestore.transactional
        def run(transaction: Any) -> Chunk | None:
            snapshot = ref.get(transaction=transaction)
            if not snapshot.exists:
                return None
            updated = change(Chunk.from_dict(snapshot.to_dict()))
            if updated is not None:
                transaction.set(ref, updated.to_dict())
            return updated

        with translated(f"updating chunk {index} of job {job_id}"):
            result: Chunk | None = _committed(run, self._db.transaction())
        return result

    def active_jobs(self) -> list[Job]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._db.collection(JOBS).where(filter=FieldFilter("state", "in", ACTIVE_STATES))
        with translated("listing active jobs"):
            docs = list(query.stream())
        return [Job.from_dict(doc.to_dict() or {}) for doc in docs]

    def jobs_to_notify(self) -> list[Job]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._db.collection(JOBS).where(filter=FieldFilter("notify_pending", "==", True))
        with translated("listing jobs with a webhook to publish"):
            docs = list(query.stream())
        return [Job.from_dict(doc.to_dict() or {}) for doc in docs]

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


def _committed(run: Any, transaction: Any) -> Any:
    """Run a transactional function; contention that outlasts the client's own retries is
    a retryable failure (the client raises a bare ValueError from Aborted for it)."""
    from google.api_core.exceptions import Aborted

    try:
        return run(transaction)
    except ValueError as exc:
        if isinstance(exc.__cause__, Aborted):
            raise RetryableError(f"Firestore transaction did not commit: {exc}") from exc
        raise


def _bump(job: Job, version: int) -> Job:
    from dataclasses import replace

    return replace(job, version=version + 1)
