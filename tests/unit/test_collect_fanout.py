"""Collect fan-out: one message per chunk, then one merge; repeats and crashes change nothing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from batchline import entrypoints
from batchline.bootstrap import Deps
from batchline.domain.models import JobState
from batchline.services.collect import collect
from batchline.services.poll import poll
from batchline.services.submit import ObjectFinalized, handle_object_finalized
from batchline_tools.memory import MemoryBlobStore, RecordingPublisher

from .fakes import FakeProvider, make_deps

CHUNKS = 40
TOPIC = "batchline-collect"


class Died(BaseException):
    """The process dies (not an Exception: nothing catches it)."""


def job_of(chunks: int = CHUNKS) -> tuple[Deps, FakeProvider, str]:
    deps, provider, _ = make_deps(max_requests=1)  # one request a chunk
    data = b"\n".join(
        orjson.dumps(
            {
                "custom_id": f"c{i}",
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": f"q {i}"}],
            }
        )
        for i in range(chunks)
    )
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    generation = blobs.put("gs://in/f.jsonl", data)
    event = ObjectFinalized("in", "f.jsonl", generation, len(data), metadata={"max_retries": "0"})
    job = handle_object_finalized(deps, event)
    assert job is not None
    provider.fail_ids = {"bl-3"}  # one line fails for good: its result line says so
    provider.end()
    poll(deps)
    return deps, provider, job.job_id


def deliver(deps: Deps, start: int = 0) -> int:
    """Deliver every collect message published from `start` on, as Pub/Sub would (in
    order, each once); the number delivered."""
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    done = start
    while done < len(publisher.on(TOPIC)):
        entrypoints.collect(deps, publisher.on(TOPIC)[done])
        done += 1
    return done - start


def results_of(deps: Deps, job_id: str) -> bytes:
    job = deps.store.get_job(job_id)
    assert job is not None and job.state.terminal
    return deps.blobs.read_bytes(job.results_uri)


def reference() -> bytes:
    deps, _, job_id = job_of()
    collect(deps, job_id)  # one invocation, every chunk in turn
    return results_of(deps, job_id)


def test_a_40_chunk_job_is_collected_by_40_chunk_messages_and_one_merge() -> None:
    deps, _, job_id = job_of()
    delivered = deliver(deps)
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    messages = publisher.on(TOPIC)
    assert messages[0] == {"job_id": job_id}  # poll's ask
    assert sorted(m["chunk"] for m in messages[1:]) == list(range(CHUNKS))
    assert delivered == 1 + CHUNKS
    job = deps.store.get_job(job_id)
    assert job is not None and job.state is JobState.PARTIAL
    lines = [orjson.loads(x) for x in results_of(deps, job_id).splitlines()]
    assert [r["custom_id"] for r in lines] == [f"c{i}" for i in range(CHUNKS)]
    assert results_of(deps, job_id) == reference()


def test_repeated_and_late_messages_write_nothing_twice() -> None:
    deps, _, job_id = job_of()
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    deliver(deps)
    first = results_of(deps, job_id)
    writes = len(deps.blobs.objects)  # type: ignore[attr-defined]
    for message in list(publisher.on(TOPIC)):  # everything delivered again
        entrypoints.collect(deps, message)
    entrypoints.collect(deps, {"job_id": job_id, "chunk": 999})  # no such chunk
    entrypoints.collect(deps, {"job_id": job_id, "chunk": "7"})  # not an index
    assert results_of(deps, job_id) == first
    assert len(deps.blobs.objects) == writes  # type: ignore[attr-defined]


@pytest.mark.parametrize("dies_at", ["collected.json", "run"])
def test_a_chunk_collect_killed_mid_way_and_redelivered_gives_the_same_bytes(
    dies_at: str,
) -> None:
    deps, _, job_id = job_of()
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    real = blobs.write_bytes
    chunk_7 = "/chunks/00007/"
    died: list[str] = []

    def dying_write(uri: str, data: bytes, content_type: str) -> bool:
        last = uri.rsplit("/", 1)[-1]
        hit = last == "collected.json" if dies_at == "collected.json" else last.endswith(".tsv")
        if not died and chunk_7 in uri and hit:
            died.append(uri)
            if dies_at == "run":
                real(uri, data, content_type)  # the run is written, then the process dies
            raise Died
        return real(uri, data, content_type)

    blobs.write_bytes = dying_write  # type: ignore[method-assign]
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    messages = publisher.on(TOPIC)
    entrypoints.collect(deps, messages[0])  # the fan-out
    chunk_messages = publisher.on(TOPIC)[1:]
    for message in chunk_messages:
        try:
            entrypoints.collect(deps, message)
        except Died:
            dead = message  # not acknowledged: Pub/Sub delivers it again
    assert died, "the chunk collect never reached the write it dies at"
    job = deps.store.get_job(job_id)
    assert job is not None and job.state is JobState.COLLECTING  # one chunk not collected
    blobs.write_bytes = real  # type: ignore[method-assign]
    entrypoints.collect(deps, dead)
    assert results_of(deps, job_id) == reference()


def test_the_merge_shares_a_bounded_read_buffer_between_its_runs() -> None:
    # 85 runs at the store's 8 MiB a fetch held 680 MiB in the scale run's collect.
    from batchline.services import merge

    asked: list[int | None] = []
    deps, _, job_id = job_of()
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    real = blobs.open_read

    def recording(
        uri: str, generation: str | None = None, *, buffer_bytes: int | None = None
    ) -> Any:
        if uri.endswith(".tsv"):
            asked.append(buffer_bytes)
        return real(uri, generation, buffer_bytes=buffer_bytes)

    blobs.open_read = recording  # type: ignore[method-assign]
    collect(deps, job_id)
    assert len(asked) == CHUNKS + 1  # every chunk's run and the invalid lines'
    assert set(asked) == {merge.run_read_bytes(CHUNKS + 1)}
    assert CHUNKS * merge.run_read_bytes(CHUNKS + 1) <= merge.MERGE_READ_BYTES
    assert merge.run_read_bytes(10_000) == merge.MIN_RUN_READ_BYTES  # never starved to 0
