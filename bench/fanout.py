"""Poll's fan-out at scale, on the in-memory ports: many active jobs with running
chunks, a provider that takes `latency` seconds to answer each status call and a
publisher that takes `publish_latency` seconds to acknowledge each message.

- fan-out: one tick (`services.poll.fan_out`) lists the active jobs and publishes one
  message per job; measured wall time, checked to publish exactly one message per job.
- advance: every job message delivered to `services.poll.handle`, as the trigger
  delivers them, by `instances` invocations side by side (poll's `max_instances` in
  infra) and, for comparison, by one at a time; each job's status calls run
  `follow.STATUS_CALLS_AT_ONCE` at once. Checked: every job advanced to `collecting`,
  every chunk ended, one collect request per job, no provider call beyond one per chunk.

    .venv/bin/python bench/run.py --only poll-fanout
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from batchline.bootstrap import Deps, Providers, SystemClock
from batchline.config import Settings
from batchline.domain.models import (
    BatchState,
    Chunk,
    ChunkState,
    Job,
    JobOptions,
    JobState,
    ProviderBatch,
    Source,
)
from batchline.services.follow import STATUS_CALLS_AT_ONCE
from batchline.services.poll import PUBLISHES_AT_ONCE, fan_out, handle
from batchline_tools.memory import MemoryBlobStore, MemoryJobStore, RecordingPublisher

POLL_TOPIC, COLLECT_TOPIC = "batchline-poll", "batchline-collect"


class SlowProvider:
    """A provider whose every batch has ended, answering each status call after
    `latency` seconds (as a provider's API does over the network); counts the calls."""

    name = "openai"

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls = 0
        self._lock = threading.Lock()

    def get_batch(self, batch_id: str) -> ProviderBatch:
        time.sleep(self.latency)
        with self._lock:
            self.calls += 1
        return ProviderBatch(batch_id, BatchState.COMPLETED, {"total": 1, "completed": 1})

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(f"the bench's provider does not {name}")


class SlowPublisher(RecordingPublisher):
    """Records messages; each publish waits `latency` seconds for its acknowledgement."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self._lock = threading.Lock()

    def publish(self, topic: str, message: dict[str, Any], **attributes: str) -> None:
        time.sleep(self.latency)
        with self._lock:
            super().publish(topic, message, **attributes)


@dataclass(frozen=True)
class FanOutFigures:
    jobs: int
    chunks: int
    fan_out_seconds: float
    messages: int
    advance_seconds: dict[int, float]  # invocations side by side -> wall seconds
    advanced: dict[int, bool]  # ... -> every job collecting, every chunk ended, once
    status_calls: dict[int, int]


def running_jobs(deps: Deps, jobs: int, chunks: int) -> list[str]:
    """`jobs` running jobs of `chunks` running chunks each, one batch a chunk."""
    now = deps.clock.now()
    ids = []
    for j in range(jobs):
        job_id = f"job-bench-{j:05d}"
        job = Job(
            job_id=job_id,
            source=Source("bench-in", f"fanout/{j}.jsonl", "1", 100),
            options=JobOptions(),
            output_prefix=f"gs://bench-out/fanout/{j}/{job_id}/",
            state=JobState.RUNNING,
            chunk_count=chunks,
            created_at=now,
        )
        base = f"gs://bench-work/jobs/{job_id}/chunks"
        records = [
            Chunk(
                job_id,
                i,
                "openai",
                "gpt-4.1-mini",
                1,
                100,
                f"{base}/{i}/input.jsonl",
                f"{base}/{i}/manifest.jsonl",
                state=ChunkState.RUNNING,
                attempts=1,
                batch_id=f"batch-{j}-{i}",
                batch_state=BatchState.RUNNING,
            )
            for i in range(chunks)
        ]
        deps.store.create_job(job)
        deps.store.update_job(job_id, lambda x: x, new_chunks=records)
        ids.append(job_id)
    return ids


def make_deps(latency: float, publish_latency: float) -> tuple[Deps, SlowProvider]:
    provider = SlowProvider(latency)
    settings = Settings(project="bench", input_bucket="in", output_bucket="out", work_bucket="w")
    deps = Deps(
        settings=settings,
        store=MemoryJobStore(),
        blobs=MemoryBlobStore(),
        publisher=SlowPublisher(publish_latency),
        providers=Providers({"openai": lambda: provider}),  # type: ignore[dict-item]
        clock=SystemClock(),
    )
    return deps, provider


def advance_all(deps: Deps, messages: list[dict[str, Any]], instances: int) -> float:
    """Deliver every job message, `instances` invocations at a time; wall seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(instances) as pool:
        list(pool.map(lambda m: handle(deps, m), messages))
    return time.perf_counter() - started


def all_advanced(deps: Deps, job_ids: list[str]) -> bool:
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    collects = sorted(m["job_id"] for m in publisher.on(COLLECT_TOPIC))
    return collects == sorted(job_ids) and all(
        (job := deps.store.get_job(j)) is not None
        and job.state is JobState.COLLECTING
        and all(c.state is ChunkState.ENDED for c in deps.store.get_chunks(j))
        for j in job_ids
    )


def measure(
    jobs: int, chunks: int, latency: float, publish_latency: float, instances: tuple[int, ...]
) -> FanOutFigures:
    """The fan-out once, then the advance of its messages with each of `instances`
    invocations side by side (a fresh set of jobs each time)."""
    fan_out_seconds, messages = 0.0, 0
    seconds: dict[int, float] = {}
    advanced: dict[int, bool] = {}
    calls: dict[int, int] = {}
    for n in instances:
        deps, provider = make_deps(latency, publish_latency)
        job_ids = running_jobs(deps, jobs, chunks)
        started = time.perf_counter()
        report = fan_out(deps)
        elapsed = time.perf_counter() - started
        publisher = deps.publisher
        assert isinstance(publisher, RecordingPublisher)
        published = publisher.on(POLL_TOPIC)
        if sorted(m["job_id"] for m in published) != sorted(job_ids) or report.errors:
            raise RuntimeError(f"the tick did not publish one message per job: {report}")
        if n == instances[0]:
            fan_out_seconds, messages = elapsed, len(published)
        seconds[n] = advance_all(deps, [dict(m) for m in published], n)
        advanced[n] = all_advanced(deps, job_ids) and provider.calls == jobs * chunks
        calls[n] = provider.calls
    return FanOutFigures(jobs, chunks, fan_out_seconds, messages, seconds, advanced, calls)


__all__ = ["PUBLISHES_AT_ONCE", "STATUS_CALLS_AT_ONCE", "FanOutFigures", "measure"]
