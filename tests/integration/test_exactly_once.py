"""Exactly once through an ordinary crash, on the real emulators (Firestore, Pub/Sub,
fake-gcs-server, the provider emulators) and with processes that really die.

- Anthropic chunks of equal size, of one job and of two, whose submitters are killed
  together in the create gap (SIGKILL right after Anthropic accepted a create, before
  Firestore heard of it), round after round: no chunk ever takes another's batch, no
  batch is left running unread, every line is answered once.
- A submitter killed mid-create with the default settings is taken over within 90 s
  (on the clock the services take); a live one whose create takes 5 minutes never is.

Time: the services take a `Clock`; the tests move it past a dead holder's lease instead
of waiting for it (the killed processes run on an offset wall clock too).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest

from batchline import bootstrap
from batchline.bootstrap import Deps
from batchline.domain.models import Chunk, ChunkState, Job, JobState
from batchline.services.collect import collect
from batchline.services.poll import poll
from batchline.services.submit import ObjectFinalized, handle_object_finalized
from batchline_tools.local.stack import create_bucket, create_topic, wipe_firestore

from .conftest import AnthropicEmulatorHandle, OpenAIEmulatorHandle
from .crashing import CrashServer

pytestmark = pytest.mark.integration

ANTHROPIC_MODEL = "anthropic/claude-haiku-4-5"
#: Requests per Anthropic chunk: a job of 3k lines makes k chunks of equal size.
CHUNK = 3
LEASE = 60.0
#: Bounds a wait that ends as soon as what it waits for happens.
WAIT = 120.0


class OffsetClock:
    """The wall clock, `offset` seconds ahead (a test moves it past leases)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset


@dataclass
class Stack:
    """One project on the session's emulators."""

    project: str
    env: dict[str, str]
    firestore_host: str
    anthropic: AnthropicEmulatorHandle

    @property
    def input_bucket(self) -> str:
        return self.env["BATCHLINE_INPUT_BUCKET"]


@pytest.fixture(scope="module")
def stack(
    firestore_emulator: str,
    pubsub_emulator: str,
    gcs_server: str,
    anthropic_emulator: AnthropicEmulatorHandle,
    openai_emulator: OpenAIEmulatorHandle,
) -> Stack:
    tag = uuid.uuid4().hex[:8]
    project = f"batchline-once-{tag}"
    env = {
        "GOOGLE_CLOUD_PROJECT": project,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "STORAGE_EMULATOR_HOST": gcs_server,
        "BATCHLINE_INPUT_BUCKET": f"bl-once-{tag}-input",
        "BATCHLINE_OUTPUT_BUCKET": f"bl-once-{tag}-output",
        "BATCHLINE_WORK_BUCKET": f"bl-once-{tag}-work",
        "BATCHLINE_ANTHROPIC_BASE_URL": anthropic_emulator.base_url,
        "ANTHROPIC_API_KEY": "sk-ant-emulator",
        "BATCHLINE_ANTHROPIC_MAX_REQUESTS": str(CHUNK),
        "BATCHLINE_OPENAI_BASE_URL": openai_emulator.base_url,
        "OPENAI_API_KEY": "sk-emulator",
        "BATCHLINE_OPENAI_MAX_REQUESTS": str(CHUNK),
    }
    for bucket in ("INPUT", "OUTPUT", "WORK"):
        create_bucket(gcs_server, project, env[f"BATCHLINE_{bucket}_BUCKET"])
    for topic in ("batchline-poll", "batchline-collect", "batchline-events"):
        create_topic(pubsub_emulator, project, topic)
    return Stack(project, env, firestore_emulator, anthropic_emulator)


@pytest.fixture
def deps(stack: Stack, set_client_env: Callable[[Mapping[str, str]], None]) -> Iterator[Deps]:
    """The services' dependencies on the stack, on an offset clock; Firestore empty."""
    set_client_env(stack.env)
    wipe_firestore(stack.firestore_host, stack.project)
    built = bootstrap.build()
    built.clock = OffsetClock()
    yield built


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashServer]:
    server = CrashServer(tmp_path_factory.mktemp("crash"))
    try:
        yield server
    finally:
        server.close()


def anthropic_line(job_tag: str, i: int) -> bytes:
    return orjson.dumps(
        {
            "custom_id": f"{job_tag}-{i}",
            "model": ANTHROPIC_MODEL,
            "messages": [{"role": "user", "content": f"{job_tag} question {i}"}],
            "max_tokens": 16,
        }
    )


def planned_job(deps: Deps, job_tag: str, lines: int) -> str:
    """A job of `lines` Anthropic lines, planned, its chunks pending (nothing sent)."""
    name = f"{uuid.uuid4().hex[:8]}/{job_tag}.jsonl"
    data = b"\n".join(anthropic_line(job_tag, i) for i in range(lines)) + b"\n"
    blob = deps.blobs
    uri = f"gs://{deps.settings.input_bucket}/{name}"
    generation = blob.create(uri, data, "application/jsonl")
    planner = replace(deps, settings=replace(deps.settings, work_budget_seconds=0))
    job = handle_object_finalized(
        planner, ObjectFinalized(deps.settings.input_bucket, name, generation, len(data))
    )
    assert job is not None and job.state is JobState.SUBMITTING, job
    assert [c.state for c in deps.store.get_chunks(job.job_id)] == [ChunkState.PENDING] * (
        lines // CHUNK
    )
    return job.job_id


def clock_of(deps: Deps) -> OffsetClock:
    assert isinstance(deps.clock, OffsetClock)
    return deps.clock


def run_to_collect(deps: Deps, job_ids: list[str]) -> list[Job]:
    """Poll ticks (a lease apart, so that no dead holder's lease stands in the way) until
    every job is collecting, then collect each; the ended jobs."""
    deadline = time.monotonic() + WAIT
    while True:
        poll(deps)
        jobs = [deps.store.get_job(j) for j in job_ids]
        if all(j is not None and j.state is JobState.COLLECTING for j in jobs):
            break
        assert time.monotonic() < deadline, f"not collecting: {jobs}"
        time.sleep(0.1)  # the emulator's batches end in a fraction of a second
    for job_id in job_ids:
        collect(deps, job_id)
    done = [deps.store.get_job(j) for j in job_ids]
    assert all(j is not None and j.state.terminal for j in done), done
    return [j for j in done if j is not None]


def manifest_lines(deps: Deps, chunk: Chunk) -> list[int]:
    rows = deps.blobs.read_bytes(chunk.manifest_uri).splitlines()
    return [int(orjson.loads(row)["line"]) for row in rows]


def check_round(deps: Deps, stack: Stack, jobs: dict[str, str], before: set[str]) -> None:
    """No chunk holds another's batch; every batch made is recorded by exactly one chunk
    (none left running unread); every line is answered once."""
    recorded: list[str] = []
    for job_id, job_tag in jobs.items():
        for chunk in deps.store.get_chunks(job_id):
            assert chunk.batch_id is not None and chunk.orphans == [], chunk
            recorded.append(chunk.batch_id)
            sent = stack.anthropic.requests(chunk.batch_id)
            texts = [r["params"]["messages"][0]["content"] for r in sent]
            expected = [f"{job_tag} question {line - 1}" for line in manifest_lines(deps, chunk)]
            assert sorted(texts) == sorted(expected), (job_tag, chunk.index, texts)
    made = [b for b in stack.anthropic.batches() if b["id"] not in before]
    assert sorted(b["id"] for b in made) == sorted(recorded)  # no orphan, no duplicate
    for job_id, job_tag in jobs.items():
        job = deps.store.get_job(job_id)
        assert job is not None and job.state is JobState.SUCCEEDED, job
        results = [orjson.loads(x) for x in deps.blobs.read_bytes(job.results_uri).splitlines()]
        count = len(deps.store.get_chunks(job_id)) * CHUNK
        assert [r["custom_id"] for r in results] == [f"{job_tag}-{i}" for i in range(count)]
        assert {r["status"] for r in results} == {"succeeded"}
        summary = orjson.loads(deps.blobs.read_bytes(job.summary_uri))
        assert summary.get("orphans", []) == []


#: (jobs, chunks each): two and three equal chunks, of one job and of two.
SHAPES = [(1, 2), (1, 3), (2, 2), (2, 3)]


def test_equal_anthropic_chunks_killed_in_the_create_gap_never_take_each_other_s_batch(
    deps: Deps, stack: Stack, crash_server: CrashServer, heavy_budget: Any
) -> None:
    """10 rounds through the four shapes (`make bench`: 10 rounds of each)."""
    rounds = heavy_budget.pick(test=10, bench=10 * len(SHAPES))
    for number in range(rounds):
        jobs, chunks = SHAPES[number % len(SHAPES)]
        crash_round(deps, stack, crash_server, jobs, chunks)


def crash_round(deps: Deps, stack: Stack, server: CrashServer, jobs: int, chunks: int) -> None:
    clock = clock_of(deps)
    before = {b["id"] for b in stack.anthropic.batches()}
    tags = {planned_job(deps, tag, chunks * CHUNK): tag for tag in _tags(jobs)}
    # Each process advances every job (one thread a job, as an instance runs concurrent
    # invocations) and is killed by the first create Anthropic accepts: its other
    # submitters die with it. The next one comes a lease later, until every chunk has its
    # batch recorded.
    kills = 0
    for _ in range(3 * jobs * chunks + 3):
        code = server.run(stack.env, list(tags), offset=clock.offset)
        clock.offset += LEASE + 1
        assert code in (0, -9), f"the crashing process failed ({code}): crash-server.log"
        kills += code == -9
        if all(c.batch_id for j in tags for c in deps.store.get_chunks(j)):
            break
    assert kills == jobs * chunks  # every chunk's create was killed in its gap, once
    run_to_collect(deps, list(tags))
    check_round(deps, stack, tags, before)


def _tags(count: int) -> list[str]:
    """Job tags whose lines are alike but for the tag (the same line numbers, the same
    request counts)."""
    return [f"j{uuid.uuid4().hex[:6]}" for _ in range(count)]
