"""The domain's nouns: jobs, chunks, provider batches and result lines.

Plain dataclasses with explicit `to_dict`/`from_dict` so that Firestore documents, JSON
files and logs all use the same field names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from batchline.errors import InvalidTransition


class JobState(StrEnum):
    """Where a job is: accepted, submitting, running, collecting, or ended (terminal)."""

    ACCEPTED = "accepted"
    SUBMITTING = "submitting"
    RUNNING = "running"
    COLLECTING = "collecting"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        """The job has ended: nothing moves it again."""
        return self in _TERMINAL_JOB_STATES


_TERMINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELED, JobState.REJECTED}
)

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.ACCEPTED: frozenset({JobState.SUBMITTING, JobState.REJECTED, JobState.COLLECTING}),
    # A canceled job is collected too (every line gets its result): canceled comes after.
    JobState.SUBMITTING: frozenset({JobState.RUNNING, JobState.COLLECTING}),
    JobState.RUNNING: frozenset({JobState.COLLECTING}),
    # Back to running: answers that failed their schema are repaired in follow-up batches.
    JobState.COLLECTING: frozenset(
        {JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELED, JobState.RUNNING}
    ),
}


def check_job_transition(current: JobState, target: JobState) -> None:
    """Raise InvalidTransition unless a job may go from `current` to `target` (JOB_TRANSITIONS)."""
    if target not in JOB_TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"job cannot go from {current} to {target}")


class ChunkState(StrEnum):
    """Where a chunk is on its way to and from its provider batch."""

    PENDING = "pending"  # staged in the work bucket, not yet at the provider
    SUBMITTING = "submitting"  # leased by one invocation that is creating the provider batch
    RUNNING = "running"  # the provider batch exists and has not ended
    ENDED = "ended"  # the provider batch ended (or could not be created): ready to collect


CHUNK_TRANSITIONS: dict[ChunkState, frozenset[ChunkState]] = {
    ChunkState.PENDING: frozenset({ChunkState.SUBMITTING, ChunkState.ENDED}),
    # Back to pending: the provider's quota was full (a create refused, or a batch failed
    # for it); the chunk waits and is sent again, its lines untouched.
    ChunkState.SUBMITTING: frozenset(
        {ChunkState.SUBMITTING, ChunkState.RUNNING, ChunkState.ENDED, ChunkState.PENDING}
    ),
    ChunkState.RUNNING: frozenset({ChunkState.RUNNING, ChunkState.ENDED, ChunkState.PENDING}),
    # Sent again: its recorded batch turned out to hold another chunk's requests.
    ChunkState.ENDED: frozenset({ChunkState.PENDING}),
}


def check_chunk_transition(current: ChunkState, target: ChunkState) -> None:
    """Raise InvalidTransition unless a chunk may go from `current` to `target` (CHUNK_TRANSITIONS)."""
    if target not in CHUNK_TRANSITIONS[current]:
        raise InvalidTransition(f"chunk cannot go from {current} to {target}")


class BatchState(StrEnum):
    """A provider batch's state, normalised across providers."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELING = "canceling"
    CANCELED = "canceled"

    @property
    def ended(self) -> bool:
        """The provider batch will not change again: its results can be read."""
        return self in {
            BatchState.COMPLETED,
            BatchState.FAILED,
            BatchState.EXPIRED,
            BatchState.CANCELED,
        }


class ResultStatus(StrEnum):
    """How one input line ended, as its result line says."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELED = "canceled"
    INVALID = "invalid"


@dataclass(frozen=True)
class Source:
    """Where a job's input lives: a GCS object pinned to one generation."""

    bucket: str
    name: str
    generation: str
    size: int
    md5: str | None = None
    content_encoding: str | None = None

    @property
    def uri(self) -> str:
        """The input object's gs:// URI."""
        return f"gs://{self.bucket}/{self.name}"


#: What a job's `model: "auto"` lines are chosen for (`prefer`); the first is the default.
PREFERENCES = ("cost", "speed")


@dataclass(frozen=True)
class JobOptions:
    """What the user asked of a job as a whole: default model, labels, schema, repair attempts, budget, webhook, and how `model: "auto"` chooses."""

    model: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: The default schema of the job's batchline lines: a registered schema's name, or an
    #: inline JSON Schema (`{"name", "schema"}` or a bare schema; API jobs).
    schema: str | None = None
    response_schema: dict[str, Any] | None = None
    #: Repairs of an answer that fails its schema; None: the deployment's default.
    max_repair_attempts: int | None = None
    #: Reject the job before anything is sent when its worst-case estimate is above this.
    max_cost_usd: float | None = None
    #: Where the job's `job.completed` webhook is POSTed when it ends (services.notify).
    notify_url: str | None = None
    #: Times a line that failed for a passing reason (a 5xx or 429 in its result, an
    #: expired batch) is sent again to the same model; None: the default (1).
    max_retries: int | None = None
    #: Models (`provider/model`) a line that still fails goes to, in order.
    fallback: tuple[str, ...] = ()
    #: A batch still queued at its provider after this long is cancelled and its lines
    #: fail over; None: no limit.
    max_queue_hours: float | None = None
    #: The models (`provider/model`) `model: "auto"` chooses from; None: the deployment's.
    candidates: list[str] | None = None
    #: What "auto" chooses for: one of `PREFERENCES`; None: the first ("cost").
    prefer: str | None = None


@dataclass(frozen=True)
class Lease:
    """An invocation's claim on a job or chunk: `owner` may act on it until `until`
    (epoch seconds). The rules for taking, renewing and releasing one are
    `domain/claims.py`."""

    owner: str
    until: float


@dataclass(frozen=True)
class CreateIntent:
    """What the holder of a provider's create lock is creating: the batch of chunk
    `chunk` of `job_id`, with `request_count` requests. `after_batch` and
    `after_created_at` mark the newest batch the provider listed before the create
    (None: it listed none): a batch the provider lists after the mark, while this intent
    is open, can only be this chunk's (`services/create_lock.py`)."""

    job_id: str
    chunk: int
    request_count: int
    declared_at: float
    after_batch: str | None = None
    after_created_at: float | None = None

    @property
    def tag(self) -> BatchTag:
        """The job and chunk the intent's batch is for."""
        return BatchTag(self.job_id, self.chunk)


@dataclass(frozen=True)
class ProviderLock:
    """The one create in flight at a provider whose batches carry no tag (Anthropic):
    its holder's lease, and what it is creating. `provider_locks/{provider}` in
    Firestore; a lock never written is free."""

    provider: str
    lease: Lease | None = None
    intent: CreateIntent | None = None

    def to_dict(self) -> dict[str, Any]:
        """The lock as its Firestore document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProviderLock:
        """The lock its Firestore document holds."""
        lease = data.get("lease")
        intent = data.get("intent")
        return cls(
            provider=data["provider"],
            lease=Lease(**lease) if lease else None,
            intent=CreateIntent(**intent) if intent else None,
        )


@dataclass(frozen=True)
class Hold:
    """Room one chunk holds in a quota pool: `amount` of the quota's unit, taken (or
    taken again by the chunk's next submitter) at `taken_at`."""

    amount: int
    taken_at: float


@dataclass(frozen=True)
class Waiter:
    """A job with a chunk waiting for room in a quota pool: the job's `created_at`, what
    its next chunk needs, when it last asked, and since when it has been waiting (its
    place in the queue; 0: noted before that was kept, its last ask stands for it)."""

    created_at: float
    amount: int
    seen_at: float
    since: float = 0.0

    @property
    def waiting_since(self) -> float:
        """Since when the job has waited for room."""
        return self.since or self.seen_at


@dataclass(frozen=True)
class QuotaPool:
    """What is in flight against one quota, across every job of the deployment:
    `quota_pools/{key}` in Firestore (a pool never written is empty). `holds` by chunk
    (`job_id/index`), `waiters` by job."""

    key: str
    holds: dict[str, Hold] = field(default_factory=dict)
    waiters: dict[str, Waiter] = field(default_factory=dict)

    @property
    def in_use(self) -> int:
        """The room its holds take."""
        return sum(h.amount for h in self.holds.values())

    def held_by(self, job_id: str) -> int:
        """How many chunks of `job_id` hold room in it."""
        prefix = f"{job_id}/"
        return sum(1 for tag in self.holds if tag.startswith(prefix))

    def to_dict(self) -> dict[str, Any]:
        """The pool as its Firestore document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuotaPool:
        """The pool its Firestore document holds."""
        return cls(
            key=data["key"],
            holds={k: Hold(**v) for k, v in (data.get("holds") or {}).items()},
            waiters={k: Waiter(**v) for k, v in (data.get("waiters") or {}).items()},
        )


def hold_key(job_id: str, index: int) -> str:
    """The key a chunk's hold has in its pool."""
    return f"{job_id}/{index}"


@dataclass(frozen=True)
class Job:
    """A job's record in Firestore: one input file (or API request) on its way to one results file."""

    job_id: str
    source: Source
    options: JobOptions
    output_prefix: str  # gs://OUT/<path>/<job_id>/
    origin: str = "gcs"  # "gcs" (bucket trigger) or "api"
    idempotency_key: str | None = None
    request_digest: str | None = None  # API jobs: what the Idempotency-Key was first used for
    state: JobState = JobState.ACCEPTED
    lease: Lease | None = None
    counts: dict[str, int] = field(default_factory=dict)
    chunk_count: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    submitted_at: float | None = None
    collect_requested_at: float | None = None
    #: When the collect message asked for at `collect_requested_at` went out (None: not
    #: yet, or its sender died before it did).
    collect_sent_at: float | None = None
    #: Someone asked to cancel the job (API or CLI); poll carries it out.
    cancel_requested_at: float | None = None
    ended_at: float | None = None
    event_published: bool = False
    #: The job ended and its webhook is still to be handed to the notify topic; set with
    #: the terminal state (`to`), cleared once published (services.notify).
    notify_pending: bool = False
    #: How the webhook's delivery went: published_at, attempts, delivered_at, last_error.
    notify: dict[str, Any] = field(default_factory=dict)
    expire_at: datetime | None = None  # for a Firestore TTL policy, once the job has ended
    #: Why some of its chunks wait to be sent (a provider's quota is full, or older jobs
    #: go first), as the last advance found; None: nothing waits.
    waiting: str | None = None
    #: An advance was asked for (a poll message, an OpenAI webhook) while another
    #: invocation held the job's lease: its holder goes round once more before it gives
    #: the lease back (`claims.release_unless_asked`).
    advance_asked_at: float | None = None
    version: int = 0

    @property
    def results_uri(self) -> str:
        """Where the job's results.jsonl is (or will be) written."""
        return self.output_prefix + "results.jsonl"

    @property
    def summary_uri(self) -> str:
        """Where the job's summary.json is (or will be) written."""
        return self.output_prefix + "summary.json"

    def to(self, target: JobState, now: float, **changes: Any) -> Job:
        """A copy moved to `target` at `now` with `changes`; InvalidTransition if the move is not allowed. An end also marks the webhook pending when the job has one."""
        check_job_transition(self.state, target)
        if target.terminal and self.options.notify_url is not None:
            # In the same write as the end: a crash before the webhook is published
            # leaves it pending, for a redelivery or the next poll tick to publish.
            changes.setdefault("notify_pending", True)
        return replace(self, state=target, updated_at=now, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored in Firestore (the response schema as JSON text)."""
        data = asdict(self)
        data["state"] = str(self.state)
        data["options"]["fallback"] = list(self.options.fallback)
        # A user's JSON Schema is stored as text: as a map it would meet Firestore's
        # limits on nesting (20 levels) and field names (`__x__` is reserved).
        if self.options.response_schema is not None:
            data["options"]["response_schema"] = orjson.dumps(self.options.response_schema).decode()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """The record `to_dict` stored, read back."""
        data = dict(data)
        data["source"] = Source(**data["source"])
        options = dict(data["options"])
        if isinstance(options.get("response_schema"), str):
            options["response_schema"] = orjson.loads(options["response_schema"])
        if "fallback" in options:
            options["fallback"] = tuple(options["fallback"] or ())
        data["options"] = JobOptions(**options)
        data["state"] = JobState(data["state"])
        data["lease"] = Lease(**data["lease"]) if data.get("lease") else None
        return cls(**data)


@dataclass(frozen=True)
class IdempotencyKey:
    """An API Idempotency-Key, claimed for one job: `key_id` is a digest of the key (the
    record's id), `request_digest` what the key was first used for. A key whose job no
    longer exists (its record expired) is free again, for a new job with a new id."""

    key_id: str
    job_id: str
    request_digest: str
    created_at: float
    expire_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as stored in Firestore."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdempotencyKey:
        """The record `to_dict` stored, read back."""
        return cls(**data)


@dataclass(frozen=True)
class Chunk:
    """A chunk's record in Firestore: requests staged together for one provider batch, and that batch's progress."""

    job_id: str
    index: int
    provider: str
    model: str
    request_count: int
    payload_bytes: int
    payload_uri: str  # gs://WORK/jobs/<job>/chunks/<n>/input.jsonl
    manifest_uri: str  # line number and custom_id of each request, in payload order
    state: ChunkState = ChunkState.PENDING
    lease: Lease | None = None
    submit_started_at: float | None = None
    attempts: int = 0
    batch_id: str | None = None
    batch_state: BatchState | None = None
    batch_counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    updated_at: float = 0.0
    expire_at: datetime | None = None  # set with the job's, once the job has ended
    #: 0 for the first round; n for the n-th follow-up round (`domain/rounds.py`).
    round: int = 0
    #: A follow-up chunk: the chunk whose lines it sends again.
    round_of: int | None = None
    #: Why a follow-up chunk's lines are sent again (`RoundReason`): repair, retry or
    #: failover; None for the first round.
    round_reason: str | None = None
    #: Batches made with this chunk's requests that nobody reads (duplicates found and
    #: cancelled): reported in the job's summary.
    orphans: list[str] = field(default_factory=list)
    #: The `webhook-id`s of the provider webhooks already acted on for this batch (the
    #: latest few), so that a redelivered one is ignored (services.openai_webhooks).
    webhook_ids: list[str] = field(default_factory=list)
    #: Each request as planning accepted it, in payload order (`domain/workfiles/requests`):
    #: what a later round encodes again. None: planned before batchline kept them.
    requests_uri: str | None = None
    #: The input tokens planning estimated for its requests (None: not counted, e.g. a
    #: repair round's): what it holds of a quota that counts tokens (`domain/quotas`).
    input_tokens: int | None = None
    #: Not to be submitted before this time (epoch seconds): the provider said its quota
    #: was full, and the chunk was put back to wait (`claims.requeue_*`).
    not_before: float | None = None
    #: Times the provider's quota sent it back: the next wait doubles with each.
    requeues: int = 0
    #: Batches the provider created for it and then failed for its quota: never adopted.
    quota_refused: list[str] = field(default_factory=list)
    #: The provider's id of the chunk's input, uploaded while the chunk waited for its
    #: quota (`services/upload_ahead.py`): its batch is created from it, with no upload
    #: inside the hold. Kept when the chunk is sent again (one file feeds several batches).
    uploaded_input: str | None = None

    def to(self, target: ChunkState, now: float, **changes: Any) -> Chunk:
        """A copy moved to `target` at `now` with `changes`; InvalidTransition if the move is not allowed."""
        check_chunk_transition(self.state, target)
        return replace(self, state=target, updated_at=now, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored in Firestore."""
        data = asdict(self)
        data["state"] = str(self.state)
        data["batch_state"] = str(self.batch_state) if self.batch_state else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        """The record `to_dict` stored, read back."""
        data = dict(data)
        data["state"] = ChunkState(data["state"])
        data["batch_state"] = BatchState(data["batch_state"]) if data.get("batch_state") else None
        data["lease"] = Lease(**data["lease"]) if data.get("lease") else None
        # Records written before follow-up rounds had one name were repairs.
        if "repair_round" in data:
            data["round"] = data.pop("repair_round")
            data["round_of"] = data.pop("repair_of", None)
            data["round_reason"] = "repair" if data["round"] else None
        return cls(**data)


@dataclass(frozen=True)
class BatchTag:
    """What identifies a provider batch as ours: the job and chunk it was made for."""

    job_id: str
    chunk: int


@dataclass(frozen=True)
class ProviderBatch:
    """A provider batch as batchline sees it, whatever the provider."""

    batch_id: str
    state: BatchState
    counts: dict[str, int]
    tag: BatchTag | None = None
    created_at: float | None = None
    errors: tuple[str, ...] = ()
    native: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderResult:
    """One request's outcome at the provider, normalised; `request_id` is batchline's id."""

    request_id: str
    status: ResultStatus
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: dict[str, Any] | None = None
    response: Any = None
    #: The answer as an object, when the provider gives one rather than text (the input
    #: of Anthropic's forced tool call).
    structured: dict[str, Any] | None = None
