"""What the jobs page shows, built from the ports the API uses (`JobStore`, `BlobStore`).

While a job runs, everything comes from its records: the job's plan counts (lines,
invalid lines) and each chunk's provider batch and the counts its provider last reported
(poll records them). Once it has ended, its outputs say the rest, read through the API's
own `services.api.outputs` (which follows only the job record's own output prefix in the
deployment's output bucket): `summary.json` has the counts by status, the errors by type,
the cost at batch and at real-time prices; the first examples of each error type come
from the head of `results.jsonl`. Those outputs are written once and never change, so
what is read of a finished job is kept in a small per-instance cache; a running job is
read afresh every time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from batchline.bootstrap import Deps
from batchline.domain.models import Chunk, Job, JobState, ResultStatus
from batchline.errors import AccessDenied, NotFound
from batchline.ports import JobQuery
from batchline.services.api import outputs
from batchline.services.api.errors import Missing

#: Jobs per page of the list.
PAGE_SIZE = 25
#: Examples shown per error type.
EXAMPLES_PER_TYPE = 3
#: How much of results.jsonl is read for the examples: a job may have millions of lines,
#: and the first examples of each type are what a person reads first anyway.
MAX_SCAN_BYTES = 8 * 1024 * 1024
#: An example's message is cut to this many characters.
MAX_MESSAGE_CHARS = 500
#: Finished jobs whose outputs are kept per instance.
CACHE_SIZE = 512

STATUSES = tuple(str(s) for s in ResultStatus)


@dataclass(frozen=True)
class Progress:
    """How far a job is: `done` of `total` lines have their answer (or are invalid)."""

    done: int
    total: int
    note: str

    @property
    def percent(self) -> int:
        """Whole percent done, 100 only when everything is."""
        if self.total <= 0:
            return 0
        if self.done >= self.total:
            return 100
        return min(99, self.done * 100 // self.total)


@dataclass(frozen=True)
class Cost:
    """What a job cost at batch prices and would have cost in real time (None: unknown)."""

    batch_usd: float | None = None
    realtime_usd: float | None = None

    @property
    def saving_usd(self) -> float | None:
        if self.batch_usd is None or self.realtime_usd is None:
            return None
        return self.realtime_usd - self.batch_usd

    @property
    def saving_percent(self) -> int | None:
        saving = self.saving_usd
        if saving is None or not self.realtime_usd:
            return None
        return round(saving * 100 / self.realtime_usd)


@dataclass(frozen=True)
class ErrorExample:
    line: int | None
    custom_id: str
    message: str


@dataclass(frozen=True)
class ErrorGroup:
    """Lines that failed with one error type, and the first few of them."""

    type: str
    count: int
    examples: tuple[ErrorExample, ...] = ()


@dataclass(frozen=True)
class Finished:
    """What a finished job's summary says; `problem` says why it could not be read."""

    summary: dict[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True)
class JobRow:
    """One job as the list shows it."""

    job: Job
    progress: Progress
    providers: tuple[str, ...]
    cost: Cost

    @property
    def live(self) -> bool:
        """Still changing: the page refreshes while it shows such a job."""
        return not self.job.state.terminal

    @property
    def labels(self) -> list[tuple[str, str]]:
        return sorted(self.job.options.labels.items())


@dataclass(frozen=True)
class JobList:
    rows: list[JobRow]
    next_cursor: str | None
    state: JobState | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return any(row.live for row in self.rows)


@dataclass(frozen=True)
class JobDetail:
    """One job with its chunks, counts, errors and where its results are."""

    row: JobRow
    chunks: list[Chunk]
    #: (status, lines): the final counts once the job has ended, else what the providers
    #: have reported so far (with `waiting` for lines not yet answered).
    counts: list[tuple[str, int]]
    final: bool
    errors: list[ErrorGroup]
    #: Why the summary or the error examples could not be read (None: they were).
    problem: str | None
    usage: dict[str, int]

    @property
    def live(self) -> bool:
        return self.row.live

    @property
    def has_results(self) -> bool:
        job = self.row.job
        return job.state.terminal and job.state is not JobState.REJECTED


# ----------------------------------------------------------------------------- reading


def job_list(
    deps: Deps,
    *,
    state: JobState | None = None,
    labels: dict[str, str] | None = None,
    cursor: str | None = None,
    limit: int = PAGE_SIZE,
) -> JobList:
    """A page of jobs, newest first, as the list shows them."""
    labels = dict(labels or {})
    page = deps.store.list_jobs(
        JobQuery(
            state=state,
            labels=labels,
            created_after=None,
            created_before=None,
            limit=limit,
            cursor=cursor,
        )
    )
    rows = [_row(deps, job, _chunks(deps, job)) for job in page.jobs]
    return JobList(rows, page.next_cursor, state, labels)


def job_detail(deps: Deps, job_id: str) -> JobDetail | None:
    """Everything the job's own page shows; None when there is no such job."""
    job = deps.store.get_job(job_id)
    if job is None:
        return None
    chunks = _chunks(deps, job)
    row = _row(deps, job, chunks)
    if not job.state.terminal:
        return JobDetail(row, chunks, running_counts(job, chunks), False, [], None, job.usage)
    outputs = finished_outputs(deps, job)
    summary = outputs.summary or {}
    counts = summary.get("counts") or {s: n for s, n in job.counts.items() if s in STATUSES}
    errors: list[ErrorGroup] = []
    problem = outputs.problem
    by_type = summary.get("errors") or {}
    if by_type:
        try:
            examples = error_examples(deps, job)
        except (AccessDenied, NotFound, Missing) as exc:
            examples, problem = {}, f"the error examples cannot be read: {exc}"
        errors = [
            ErrorGroup(str(kind), int(n), tuple(examples.get(str(kind), ())))
            for kind, n in sorted(by_type.items(), key=lambda item: (-int(item[1]), item[0]))
        ]
    usage = summary.get("usage") or job.usage
    return JobDetail(row, chunks, _ordered(counts), True, errors, problem, usage)


def _chunks(deps: Deps, job: Job) -> list[Chunk]:
    if not job.state.terminal:
        return deps.store.get_chunks(job.job_id)
    return _CHUNKS.get(job.job_id, lambda: deps.store.get_chunks(job.job_id))


def _row(deps: Deps, job: Job, chunks: list[Chunk]) -> JobRow:
    providers = tuple(sorted({c.provider for c in chunks}))
    if not job.state.terminal:
        return JobRow(job, progress(job, chunks), providers, Cost())
    outputs = finished_outputs(deps, job)
    cost = (outputs.summary or {}).get("cost") or {}
    return JobRow(
        job,
        progress(job, chunks),
        providers,
        Cost(
            _number(cost.get("batch_usd"), job.cost_usd),
            _number(cost.get("realtime_usd"), None),
        ),
    )


def _number(value: Any, default: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) else default


# --------------------------------------------------------------------- pure read models


def progress(job: Job, chunks: list[Chunk]) -> Progress:
    """How many of the job's lines have their answer, from its records alone.

    A line is done once it is invalid (it never goes to a provider) or its provider
    batch reports it completed or failed. Lines sent again are counted once, by their
    first answer; the note says when a follow-up round (repair, retry, failover) runs.
    """
    lines = int(job.counts.get("lines", 0))
    state = job.state
    if state is JobState.REJECTED:
        return Progress(0, 0, "rejected")
    if state.terminal:
        total = sum(int(job.counts.get(s, 0)) for s in STATUSES) or lines
        return Progress(total, total, f"{total} of {total} lines")
    if state is JobState.ACCEPTED or not lines:
        return Progress(0, 0, "waiting to be planned")
    done = int(job.counts.get("invalid", 0))
    for chunk in chunks:
        if chunk.round == 0:
            done += _answered(chunk)
    done = min(done, lines)
    note = f"{done} of {lines} lines"
    again = [c for c in chunks if c.round > 0 and c.state.value != "ended"]
    if again:
        note += "; " + ", ".join(_follow_ups(again))
    elif state is JobState.COLLECTING:
        note += "; collecting the results"
    return Progress(done, lines, note)


_DOING = {"repair": "repairing", "retry": "retrying", "failover": "failing over"}


def _follow_ups(chunks: list[Chunk]) -> list[str]:
    """`repairing 3 lines`, `failing over 12 lines`: the follow-up rounds under way."""
    by_reason: dict[str, int] = {}
    for chunk in chunks:
        reason = chunk.round_reason or "repair"
        by_reason[reason] = by_reason.get(reason, 0) + chunk.request_count
    return [
        f"{_DOING.get(reason, reason)} {n} line{'s' if n != 1 else ''}"
        for reason, n in by_reason.items()
    ]


def _answered(chunk: Chunk) -> int:
    counts = chunk.batch_counts
    answered = int(counts.get("completed", 0)) + int(counts.get("failed", 0))
    if chunk.state.value == "ended" and not answered:
        # A chunk that ended without a batch (it could not be sent): its lines are settled.
        return chunk.request_count
    return min(answered, chunk.request_count)


def running_counts(job: Job, chunks: list[Chunk]) -> list[tuple[str, int]]:
    """What is known of a running job's lines: answered so far by the providers (first
    answers), invalid, and waiting."""
    first = [c for c in chunks if c.round == 0]
    succeeded = sum(min(int(c.batch_counts.get("completed", 0)), c.request_count) for c in first)
    failed = sum(int(c.batch_counts.get("failed", 0)) for c in first)
    invalid = int(job.counts.get("invalid", 0))
    lines = int(job.counts.get("lines", 0))
    waiting = max(0, lines - succeeded - failed - invalid)
    counts = {"succeeded": succeeded, "failed": failed, "invalid": invalid, "waiting": waiting}
    return [(status, n) for status, n in counts.items() if n or status == "waiting"]


def _ordered(counts: dict[str, Any]) -> list[tuple[str, int]]:
    known = [(s, int(counts[s])) for s in STATUSES if counts.get(s)]
    others = sorted((str(s), int(n)) for s, n in counts.items() if s not in STATUSES and n)
    return known + others


# -------------------------------------------------------------- a finished job's outputs


def finished_outputs(deps: Deps, job: Job) -> Finished:
    """The summary of a finished job (read once per instance: it never changes)."""
    return _OUTPUTS.get(job.job_id, lambda: _read_summary(deps, job))


def _place(deps: Deps) -> outputs.Outputs:
    return outputs.Outputs(deps.store, deps.blobs, deps.settings.output_bucket)


def _read_summary(deps: Deps, job: Job) -> Finished:
    try:
        data = orjson.loads(outputs.summary(_place(deps), job.job_id))
    except Missing as exc:
        return Finished(None, str(exc))
    except AccessDenied:
        return Finished(None, "this function may not read the output bucket")
    except orjson.JSONDecodeError as exc:
        return Finished(None, f"its summary.json is not JSON: {exc}")
    if not isinstance(data, dict):
        return Finished(None, "its summary.json is not a JSON object")
    return Finished(data)


def error_examples(deps: Deps, job: Job) -> dict[str, list[ErrorExample]]:
    """The first EXAMPLES_PER_TYPE lines of each error type in the job's results, from at
    most MAX_SCAN_BYTES of results.jsonl (read as a stream, once per instance)."""
    return _EXAMPLES.get(job.job_id, lambda: _scan_examples(deps, job))


def _scan_examples(deps: Deps, job: Job) -> dict[str, list[ErrorExample]]:
    found: dict[str, list[ErrorExample]] = {}
    blocks = outputs.results(_place(deps), job.job_id, outputs.ResultsWanted())
    try:
        for raw in _lines(blocks, MAX_SCAN_BYTES):
            if b'"error":{' not in raw and b'"error": {' not in raw:
                continue  # the cheap test first: most lines succeeded
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            error = record.get("error") if isinstance(record, dict) else None
            if not isinstance(error, dict):
                continue
            kind = str(error.get("type") or "unknown")
            examples = found.setdefault(kind, [])
            if len(examples) < EXAMPLES_PER_TYPE:
                examples.append(_example(record, error))
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()  # stops reading results.jsonl
    return found


def _example(record: dict[str, Any], error: dict[str, Any]) -> ErrorExample:
    message = str(error.get("message") or "")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    line = record.get("line")
    return ErrorExample(
        line if isinstance(line, int) else None, str(record.get("custom_id") or ""), message
    )


def _lines(blocks: Iterator[bytes], budget: int) -> Iterator[bytes]:
    """The lines of `blocks` (whole lines of JSONL), until `budget` bytes have been read."""
    read = 0
    for block in blocks:
        yield from block.splitlines()
        read += len(block)
        if read >= budget:
            return


# ---------------------------------------------------------------------------- caching

_V = TypeVar("_V")


class _Cache(Generic[_V]):
    """A small thread-safe LRU of what never changes once a job has ended. A transient
    failure while reading is not cached (it raises)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, read: Callable[[], _V]) -> _V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = read()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_OUTPUTS: _Cache[Finished] = _Cache(CACHE_SIZE)
_CHUNKS: _Cache[list[Chunk]] = _Cache(CACHE_SIZE)
_EXAMPLES: _Cache[dict[str, list[ErrorExample]]] = _Cache(CACHE_SIZE)


def clear_caches() -> None:
    """Forget what was read of finished jobs (tests that reuse job ids across stores)."""
    for cache in (_OUTPUTS, _CHUNKS, _EXAMPLES):
        cache.clear()
