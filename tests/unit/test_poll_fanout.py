"""Poll's fan-out on in-memory ports: a tick publishes one message per active job, a job
message advances that job alone, every message delivered twice, late or out of order
does nothing twice, and a job's status calls run several at once, bounded."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import orjson
import pytest

from batchline.bootstrap import Deps
from batchline.domain import claims
from batchline.domain.claims import Change, LeaseTerms
from batchline.domain.models import BatchState, ChunkState, JobState, ProviderBatch
from batchline.errors import ProviderError, RetryableError
from batchline.services import follow
from batchline.services.collect import collect
from batchline.services.poll import PUBLISHES_AT_ONCE, advance_one, fan_out, handle
from batchline.services.submit import ObjectFinalized, handle_object_finalized
from batchline_tools.memory import MemoryBlobStore, RecordingPublisher

from .fakes import CrashAfterSubmit, FakeProvider, make_deps
from .test_admission import POOL, TOKENS, quota_deps, states
from .test_admission import submit as submit_waiting

POLL = "batchline-poll"
COLLECT = "batchline-collect"
MSG = [{"role": "user", "content": "hi"}]


def submit(deps: Deps, name: str, lines: int = 3) -> str:
    """A job of `lines` one-request chunks, planned and sent (its batches running)."""
    data = b"\n".join(
        orjson.dumps({"model": "openai/gpt-4o-mini", "messages": MSG, "custom_id": f"r{i}"})
        for i in range(lines)
    )
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    generation = blobs.put(f"gs://in/{name}.jsonl", data)
    job = handle_object_finalized(
        deps, ObjectFinalized("in", f"{name}.jsonl", generation, len(data))
    )
    assert job is not None and job.state is JobState.RUNNING, job
    return job.job_id


def published(deps: Deps, topic: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    return [(m, a) for t, m, a in publisher.messages if t == topic]


def deliver_poll(deps: Deps) -> list[str]:
    """Deliver every job message published to the poll topic so far, once each, in turn
    (as the trigger does, one invocation each); returns the job ids delivered."""
    ids = [m["job_id"] for m, _ in published(deps, POLL)]
    for job_id in ids:
        handle(deps, {"job_id": job_id})
    return ids


def end_batches(provider: FakeProvider, *batch_ids: str) -> None:
    for batch_id in batch_ids or list(provider.batches):
        fake = provider.batches[batch_id]
        fake.batch = replace(fake.batch, state=BatchState.COMPLETED)


def batches_of(deps: Deps, job_id: str) -> list[str]:
    return [c.batch_id for c in deps.store.get_chunks(job_id) if c.batch_id is not None]


def state(deps: Deps, job_id: str) -> JobState:
    job = deps.store.get_job(job_id)
    assert job is not None
    return job.state


class Gauge:
    """Counts the calls in flight: each waits (up to 5 s) until `expected` are in flight
    at once, so a pool that runs fewer side by side shows as a lower peak, and one that
    runs more as a higher one."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.now = self.peak = 0
        self.cond = threading.Condition()

    def __enter__(self) -> None:
        with self.cond:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.peak >= self.expected, timeout=5)

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.005)
        with self.cond:
            self.now -= 1


def test_a_tick_publishes_one_message_per_active_job_and_advances_none() -> None:
    deps, provider, _ = make_deps(max_requests=1)
    jobs = [submit(deps, f"in{i}") for i in range(4)]
    ended = submit(deps, "done")
    deps.store.update_job(ended, lambda j: replace(j, state=JobState.SUCCEEDED))
    end_batches(provider)
    versions = {j: deps.store.get_job(j).version for j in jobs}  # type: ignore[union-attr]

    report = fan_out(deps)

    messages = published(deps, POLL)
    assert sorted(m["job_id"] for m, _ in messages) == sorted(jobs)
    assert all(a == {"job_id": m["job_id"]} for m, a in messages)
    assert report.jobs == 4 and report.errors == []
    # Nothing advanced: no job record written, no batch state read into a chunk.
    assert {j: deps.store.get_job(j).version for j in jobs} == versions  # type: ignore[union-attr]
    assert all(c.batch_state is BatchState.RUNNING for j in jobs for c in deps.store.get_chunks(j))


def test_a_tick_with_no_active_job_publishes_nothing() -> None:
    deps, _, _ = make_deps()
    assert fan_out(deps).jobs == 0
    assert published(deps, POLL) == []


def test_a_job_message_advances_only_that_job() -> None:
    deps, provider, _ = make_deps(max_requests=1)
    a, b = submit(deps, "a"), submit(deps, "b")
    end_batches(provider)

    report = handle(deps, {"job_id": a})

    assert report.jobs == 1 and report.errors == []
    assert state(deps, a) is JobState.COLLECTING
    assert state(deps, b) is JobState.RUNNING
    assert all(c.batch_state is BatchState.RUNNING for c in deps.store.get_chunks(b))
    assert [m["job_id"] for m, _ in published(deps, COLLECT)] == [a]


def test_any_message_without_a_job_id_is_a_tick() -> None:
    deps, _, _ = make_deps(max_requests=1)
    job_id = submit(deps, "a")
    for tick in ({"source": "scheduler"}, {"tick": "poll"}, None, {"job_id": 7}, "x"):
        handle(deps, tick)
    assert [m["job_id"] for m, _ in published(deps, POLL)] == [job_id] * 5


def test_duplicate_job_messages_do_nothing_twice() -> None:
    deps, provider, _ = make_deps(max_requests=1)
    job_id = submit(deps, "a")
    created = len(provider.batches)
    end_batches(provider)

    for _ in range(3):
        handle(deps, {"job_id": job_id})

    assert state(deps, job_id) is JobState.COLLECTING
    assert len(provider.batches) == created  # nothing sent again
    assert [m["job_id"] for m, _ in published(deps, COLLECT)] == [job_id]  # asked once


@pytest.mark.parametrize(
    ("message", "rounds"),
    [
        pytest.param({}, 1, id="a duplicate or a tick: read, left, no write"),
        pytest.param({"source": "openai-webhook"}, 2, id="news: the holder goes round again"),
    ],
)
def test_a_job_message_delivered_while_another_advances_the_job(
    message: dict[str, str], rounds: int
) -> None:
    """Two deliveries at once: the second finds the job's lease live and makes no
    provider call itself. Without news it leaves the job as it is; with news (OpenAI's
    webhook) it notes an ask, and the first goes round once more before letting go."""
    deps, provider, _ = make_deps(max_requests=1)
    job_id = submit(deps, "a", lines=2)
    inside, release = threading.Event(), threading.Event()
    calls: Counter[str] = Counter()
    get_batch = provider.get_batch

    def slow_get(batch_id: str) -> ProviderBatch:
        calls[batch_id] += 1
        inside.set()
        assert release.wait(10)
        return get_batch(batch_id)

    provider.get_batch = slow_get  # type: ignore[method-assign]
    first = threading.Thread(target=handle, args=(deps, {"job_id": job_id}))
    first.start()
    assert inside.wait(10)
    seen, version = sum(calls.values()), deps.store.get_job(job_id).version  # type: ignore[union-attr]
    report = handle(deps, {"job_id": job_id, **message})  # while the first holds it
    assert sum(calls.values()) == seen  # the second asked nothing of the provider
    after = deps.store.get_job(job_id)
    assert after is not None
    assert (after.advance_asked_at is not None) == (rounds == 2)
    assert after.version == version + (rounds == 2)  # one write for news, none otherwise
    release.set()
    first.join(10)

    assert report.errors == []
    assert sum(calls.values()) == 2 * rounds  # the first delivery's two status calls a round
    done = deps.store.get_job(job_id)
    assert done is not None and done.lease is None and done.advance_asked_at is None


def test_a_batch_that_ends_while_its_job_is_at_work_frees_its_quota_for_the_next_chunk_at_once() -> (
    None
):
    """OpenAI's webhook for an ended batch comes while another invocation advances the
    job: the webhook's job message asks the holder, which sees the batch ended, releases
    its quota and sends the waiting chunk before it lets go, not a tick later."""
    deps, provider, _ = quota_deps(TOKENS, max_requests=1)
    job_id = submit_waiting(deps, 2, "a")
    assert states(deps, job_id) == [ChunkState.RUNNING, ChunkState.PENDING]
    get_batch = provider.get_batch
    webhook_sent: list[bool] = []

    def ends_after_this_read(batch_id: str) -> ProviderBatch:
        read = get_batch(batch_id)  # still running, as the holder reads it
        if not webhook_sent:
            end_batches(provider, batch_id)  # ...and ends right after
            news = {"job_id": job_id, "source": "openai-webhook"}  # as the webhook sends
            webhook_sent.append(handle(deps, news).errors == [])
        return read

    provider.get_batch = ends_after_this_read  # type: ignore[method-assign]
    handle(deps, {"job_id": job_id})

    assert webhook_sent == [True]
    assert states(deps, job_id) == [ChunkState.ENDED, ChunkState.RUNNING]
    assert len(provider.batches) == 2
    assert deps.store.get_pool(POOL).in_use == TOKENS
    job = deps.store.get_job(job_id)
    assert job is not None and job.lease is None and job.advance_asked_at is None


def test_without_an_ask_the_holder_lets_go_after_one_round() -> None:
    """The control: the same batch ending unseen waits for the next message."""
    deps, provider, _ = quota_deps(TOKENS, max_requests=1)
    job_id = submit_waiting(deps, 2, "a")
    get_batch = provider.get_batch

    def ends_after_this_read(batch_id: str) -> ProviderBatch:
        read = get_batch(batch_id)
        end_batches(provider, batch_id)
        return read

    provider.get_batch = ends_after_this_read  # type: ignore[method-assign]
    handle(deps, {"job_id": job_id})
    assert states(deps, job_id) == [ChunkState.RUNNING, ChunkState.PENDING]
    provider.get_batch = get_batch  # type: ignore[method-assign]
    handle(deps, {"job_id": job_id})  # the next tick
    assert states(deps, job_id) == [ChunkState.ENDED, ChunkState.RUNNING]


def test_a_job_message_for_an_unknown_or_ended_job_does_nothing() -> None:
    deps, provider, _ = make_deps(max_requests=1)
    job_id = submit(deps, "a")
    end_batches(provider)
    handle(deps, {"job_id": job_id})
    (message,) = published(deps, COLLECT)
    collect(deps, message[0]["job_id"])
    done = deps.store.get_job(job_id)
    assert done is not None and done.state.terminal
    before = len(deps.publisher.messages)  # type: ignore[attr-defined]

    for job in (job_id, "no-such-job"):
        report = advance_one(deps, job)
        assert report.jobs == 0 and report.errors == []

    assert deps.store.get_job(job_id) == done  # not written
    assert len(deps.publisher.messages) == before  # type: ignore[attr-defined]


def test_a_redelivered_tick_advances_every_job_once() -> None:
    deps, provider, _ = make_deps(max_requests=1)
    jobs = [submit(deps, f"in{i}") for i in range(3)]
    created = len(provider.batches)
    end_batches(provider)

    fan_out(deps)
    fan_out(deps)  # the same tick, delivered again
    assert len(deliver_poll(deps)) == 6

    assert all(state(deps, j) is JobState.COLLECTING for j in jobs)
    assert len(provider.batches) == created
    assert sorted(m["job_id"] for m, _ in published(deps, COLLECT)) == sorted(jobs)


def test_a_job_message_before_any_tick_plans_and_sends_the_job() -> None:
    """Out of order: the api's job message (the job only accepted) comes first."""
    deps, provider, _ = make_deps(max_requests=1)
    job_id = submit(deps, "a")
    # Play a job the api accepted but nobody planned.
    deps.store.update_job(job_id, lambda j: replace(j, state=JobState.ACCEPTED, lease=None))
    deps.store.chunks.pop(job_id)  # type: ignore[attr-defined]
    provider.batches.clear()

    handle(deps, {"job_id": job_id})

    assert state(deps, job_id) is JobState.RUNNING
    assert len(provider.batches) == 3


def test_a_tick_that_dies_halfway_through_publishing_is_made_good_by_the_next() -> None:
    """The crash gap of the fan-out: some job messages out, the rest not (the process
    died, or publishing failed). The next tick publishes for every active job."""
    deps, provider, _ = make_deps(max_requests=1)
    jobs = [submit(deps, f"in{i}") for i in range(3)]
    end_batches(provider)
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    publish = publisher.publish
    sent: list[str] = []

    def dies_after_one(topic: str, message: dict[str, Any], **attributes: str) -> None:
        if topic == POLL:
            if sent:
                raise RetryableError("pubsub unavailable")
            sent.append(message["job_id"])
        publish(topic, message, **attributes)

    publisher.publish = dies_after_one  # type: ignore[method-assign]
    report = fan_out(deps)
    assert report.jobs == 1 and len(report.errors) == 2
    deliver_poll(deps)
    publisher.publish = publish  # type: ignore[method-assign]

    fan_out(deps)
    deliver_poll(deps)  # the first tick's message again too: harmless

    assert all(state(deps, j) is JobState.COLLECTING for j in jobs)
    assert sorted(m["job_id"] for m, _ in published(deps, COLLECT)) == sorted(jobs)


def test_the_status_calls_of_one_job_run_at_once_bounded() -> None:
    deps, provider, _ = make_deps(max_requests=1)
    chunks = follow.STATUS_CALLS_AT_ONCE * 2 + 3
    job_id = submit(deps, "big", lines=chunks)
    end_batches(provider)
    gauge = Gauge(follow.STATUS_CALLS_AT_ONCE)
    get_batch = provider.get_batch

    def counted(batch_id: str) -> ProviderBatch:
        with gauge:
            return get_batch(batch_id)

    provider.get_batch = counted  # type: ignore[method-assign]
    handle(deps, {"job_id": job_id})

    assert gauge.peak == follow.STATUS_CALLS_AT_ONCE
    assert state(deps, job_id) is JobState.COLLECTING


def test_a_failing_status_call_leaves_its_chunk_and_records_the_others() -> None:
    deps, provider, _ = make_deps(max_requests=1)
    job_id = submit(deps, "a", lines=3)
    end_batches(provider)
    flaky = batches_of(deps, job_id)[1]
    get_batch = provider.get_batch

    def failing(batch_id: str) -> ProviderBatch:
        if batch_id == flaky:
            raise ProviderError("503 from the provider", retryable=True)
        return get_batch(batch_id)

    provider.get_batch = failing  # type: ignore[method-assign]
    handle(deps, {"job_id": job_id})
    states = {c.batch_id: c.batch_state for c in deps.store.get_chunks(job_id)}
    assert states[flaky] is BatchState.RUNNING
    assert [s for b, s in states.items() if b != flaky] == [BatchState.COMPLETED] * 2
    assert state(deps, job_id) is JobState.RUNNING

    provider.get_batch = get_batch  # type: ignore[method-assign]
    handle(deps, {"job_id": job_id})
    assert state(deps, job_id) is JobState.COLLECTING


def test_an_invocation_that_dies_among_its_status_calls_is_taken_over() -> None:
    """The crash gap of the concurrent follow: some chunks' states recorded, the process
    dies before the rest (and before giving the job's lease back). A job message within
    the lease leaves the job; one after it finishes the work."""
    deps, provider, clock = make_deps(max_requests=1)
    job_id = submit(deps, "a", lines=4)
    end_batches(provider)
    doomed = batches_of(deps, job_id)[2]
    get_batch = provider.get_batch

    def dies(batch_id: str) -> ProviderBatch:
        if batch_id == doomed:
            raise CrashAfterSubmit
        return get_batch(batch_id)

    provider.get_batch = dies  # type: ignore[method-assign]
    with pytest.raises(CrashAfterSubmit):
        handle(deps, {"job_id": job_id})
    provider.get_batch = get_batch  # type: ignore[method-assign]
    chunks = deps.store.get_chunks(job_id)
    assert [c.batch_state for c in chunks].count(BatchState.COMPLETED) == 3
    # A dead process runs no `finally`: its lease stays until it runs out.
    terms = LeaseTerms(deps.settings.lease_seconds)
    take = Change(claims.take_for_advance, "dead", clock.now(), terms)
    assert deps.store.update_job(job_id, take) is not None

    handle(deps, {"job_id": job_id})
    assert state(deps, job_id) is JobState.RUNNING  # its lease is live: left alone

    clock.advance(deps.settings.lease_seconds + 1)
    handle(deps, {"job_id": job_id})
    assert state(deps, job_id) is JobState.COLLECTING
    assert all(c.state is ChunkState.ENDED for c in deps.store.get_chunks(job_id))
    assert [m["job_id"] for m, _ in published(deps, COLLECT)] == [job_id]


def test_a_tick_publishes_many_jobs_at_once_bounded() -> None:
    deps, _, _ = make_deps(max_requests=1)
    for i in range(PUBLISHES_AT_ONCE + 5):
        submit(deps, f"in{i}", lines=1)
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    publish = publisher.publish
    gauge = Gauge(PUBLISHES_AT_ONCE)

    def slow(topic: str, message: dict[str, Any], **attributes: str) -> None:
        with gauge:
            publish(topic, message, **attributes)

    publisher.publish = slow  # type: ignore[method-assign]
    assert fan_out(deps).jobs == PUBLISHES_AT_ONCE + 5
    assert gauge.peak == PUBLISHES_AT_ONCE
    assert len(published(deps, POLL)) == PUBLISHES_AT_ONCE + 5


class StubKeeper:
    """A job lease's keeper whose renewal found the lease taken over (`lost`)."""

    def __init__(self, lost: bool) -> None:
        self.lost = lost


@pytest.mark.parametrize("why", ["lease lost", "budget spent"])
def test_no_status_call_is_made_once_the_lease_is_lost_or_the_budget_spent(why: str) -> None:
    deps, provider, clock = make_deps(max_requests=1)
    job_id = submit(deps, "a", lines=3)
    end_batches(provider)
    calls: list[str] = []
    get_batch = provider.get_batch

    def counted(batch_id: str) -> ProviderBatch:
        calls.append(batch_id)
        return get_batch(batch_id)

    provider.get_batch = counted  # type: ignore[method-assign]
    chunks = deps.store.get_chunks(job_id)
    lost = why == "lease lost"
    deadline = clock.now() + (60 if lost else 0)

    followed = follow.refresh_running(deps, chunks, deadline, StubKeeper(lost))  # type: ignore[arg-type]

    assert calls == [] and followed == chunks
    assert all(c.batch_state is BatchState.RUNNING for c in deps.store.get_chunks(job_id))
