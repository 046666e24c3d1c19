"""The whole local stack, with limits small enough that modest files make many batches."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import requests

from batchline.adapters.firestore import FirestoreJobStore
from batchline.adapters.firestore import make_client as firestore_client
from batchline.adapters.gcs import GcsBlobStore
from batchline.adapters.gcs import make_client as gcs_client
from batchline.config import Settings
from batchline.domain.ids import job_id_for_object
from batchline.domain.models import Chunk, Job
from batchline_tools.local.stack import COMPONENTS, LocalStack, LocalStackError, StackConfig

pytestmark = pytest.mark.e2e

CHUNK_REQUESTS = 400
#: Anthropic chunks: at most this many requests and bytes of request body, so that a
#: modest file is "bigger than the Anthropic limit" and makes several batches.
ANTHROPIC_CHUNK_REQUESTS = 300
ANTHROPIC_CHUNK_BYTES = 200_000
#: Vertex chunks: at most this many requests; its output is split into files of at most
#: VERTEX_ROWS_PER_FILE rows, so that every job's results span several prediction files.
VERTEX_CHUNK_REQUESTS = 350
VERTEX_ROWS_PER_FILE = 90
# Short, so the crash tests see a dead holder's lease expire quickly; a live holder renews
# its leases every 5 s (a third of a lease) however long its calls take (production: 60 s
# leases, 10 s heartbeats).
LEASE_SECONDS = 15
#: The OpenAI model test_quotas runs under a small enqueued-token quota (no other e2e
#: test uses it), and that quota.
QUOTA_MODEL = "gpt-4.1-nano"
QUOTA_TOKENS = 1500
#: The Vertex model test_quotas runs under a quota of a few jobs at once (no other e2e
#: test uses it); other Vertex models get 1000.
VERTEX_QUOTA_MODEL = "gemini-2.5-flash-lite"
VERTEX_QUOTA_JOBS = 2
#: Bounds a wait that ends as soon as what it waits for happens: generous, since it only
#: bounds a failure (a loaded 2-core machine is slow, not wrong).
WAIT_SECONDS = 120.0


#: Each phase's report of a test, for fixtures that act on failure (screenshots).
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="package")
def local_stack(
    local_stack_config: StackConfig, require_components: Callable[..., None]
) -> Iterator[LocalStack]:
    """The whole local stack, started once for the e2e tests and stopped after the last
    of them (not at the end of the session: it would load the machine for the rest)."""
    require_components(*COMPONENTS)
    running = LocalStack(local_stack_config)
    try:
        running.start()
    except LocalStackError as exc:
        running.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def local_stack_config(tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    return StackConfig(
        run_dir=tmp_path_factory.mktemp("e2e-stack"),
        tick_seconds=0.5,
        function_env={
            "BATCHLINE_OPENAI_MAX_REQUESTS": str(CHUNK_REQUESTS),
            "BATCHLINE_ANTHROPIC_MAX_REQUESTS": str(ANTHROPIC_CHUNK_REQUESTS),
            "BATCHLINE_ANTHROPIC_MAX_BYTES": str(ANTHROPIC_CHUNK_BYTES),
            "BATCHLINE_VERTEX_MAX_REQUESTS": str(VERTEX_CHUNK_REQUESTS),
            "BATCHLINE_LEASE_SECONDS": str(LEASE_SECONDS),
            "BATCHLINE_COLLECT_RETRY_SECONDS": "20",
            # Small, so that test_pipeline's over-limit line is 1 MiB, not 32.
            "BATCHLINE_MAX_LINE_BYTES": str(1024 * 1024),
            # Quotas: Vertex's default of 4 jobs at once would make a test that holds every
            # chunk of a many-chunk Vertex job wait forever; QUOTA_MODEL's quota is small
            # for test_quotas; a chunk a quota sends back waits 1 s, not 60.
            "BATCHLINE_QUOTAS": orjson.dumps(
                {
                    "vertex": {"concurrent_jobs": 1000},
                    f"openai/{QUOTA_MODEL}": {"enqueued_tokens": QUOTA_TOKENS},
                    f"vertex/{VERTEX_QUOTA_MODEL}": {"concurrent_jobs": VERTEX_QUOTA_JOBS},
                }
            ).decode(),
            "BATCHLINE_QUOTA_BACKOFF_SECONDS": "1",
        },
        vertex_emulator_config={"rows_per_file": VERTEX_ROWS_PER_FILE},
    )


class Pipeline:
    """What a test does with the running stack: upload, wait, read, poke the emulator."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.settings = Settings.from_env(stack.client_env())
        self.store = FirestoreJobStore(firestore_client(self.settings.project))
        self.gcs = gcs_client(self.settings.project)
        self.blobs = GcsBlobStore(self.gcs)
        self.emulator = stack.openai_base_url.removesuffix("/v1")
        self.anthropic_emulator = stack.anthropic_base_url
        self.vertex_emulator = stack.vertex_api_endpoint

    def upload(
        self,
        name: str,
        data: bytes,
        metadata: dict[str, str] | None = None,
        bucket: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Upload; returns the job id and the object resource an Eventarc event carries."""
        bucket = bucket or self.settings.input_bucket
        blob = self.gcs.bucket(bucket).blob(name)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_string(data, content_type="application/jsonl")
        resource = {
            "bucket": bucket,
            "name": name,
            "generation": str(blob.generation),
            "size": str(blob.size),
            "md5Hash": blob.md5_hash,
            "metadata": metadata or {},
        }
        return job_id_for_object(bucket, name, str(blob.generation)), resource

    def wait(self, job_id: str, timeout: float = WAIT_SECONDS) -> Job:
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.store.get_job(job_id)
            if job is not None and job.state.terminal:
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} not finished in {timeout}s: {job}")

    def results(self, job: Job) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.blobs.read_bytes(job.results_uri).splitlines()]

    def summary(self, job: Job) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads(self.blobs.read_bytes(job.summary_uri))
        return result

    def emulator_config(self, **values: Any) -> None:
        requests.post(
            f"{self.emulator}/_emulator/config", json=values, timeout=10
        ).raise_for_status()

    def emulator_batches(self, job_id: str) -> list[dict[str, Any]]:
        data = requests.get(f"{self.emulator}/_emulator/batches", timeout=10).json()
        batches = data["data"] if isinstance(data, dict) else data
        return [b for b in batches if (b.get("metadata") or {}).get("batchline_job") == job_id]

    def anthropic_config(self, **values: Any) -> None:
        requests.post(
            f"{self.anthropic_emulator}/_emulator/config", json=values, timeout=10
        ).raise_for_status()

    def anthropic_batches(self) -> list[dict[str, Any]]:
        """Every batch the Anthropic emulator has created, newest first (it keeps no tag:
        tell a job's batches by the ids its chunks recorded, or by what was new)."""
        reply = requests.get(f"{self.anthropic_emulator}/_emulator/batches", timeout=10)
        batches: list[dict[str, Any]] = reply.json()["data"]
        return batches

    def anthropic_requests(self, batch_id: str) -> list[dict[str, Any]]:
        """The requests of an Anthropic batch, as the emulator received them."""
        url = f"{self.anthropic_emulator}/_emulator/batches/{batch_id}/requests"
        received: list[dict[str, Any]] = requests.get(url, timeout=10).json()["data"]
        return received

    def emulator_url(self, provider: str) -> str:
        """Where the provider's emulator serves its `/_emulator/...` endpoints."""
        return {
            "openai": self.emulator,
            "anthropic": self.anthropic_emulator,
            "vertex": self.vertex_emulator,
        }[provider]

    def wait_held(self, job_id: str, timeout: float = WAIT_SECONDS) -> list[Chunk]:
        """Wait until every chunk of the job has a batch that its emulator holds (set
        `hold_after_lines` first): each has answered that many lines and waits."""
        deadline = time.monotonic() + timeout
        while True:
            chunks = self.store.get_chunks(job_id)
            if chunks and all(c.batch_id and self._held(c.provider, c.batch_id) for c in chunks):
                return chunks
            assert time.monotonic() < deadline, f"not all held after {timeout:.0f} s: {chunks}"
            time.sleep(0.2)

    def _held(self, provider: str, batch_id: str) -> bool:
        reply = requests.get(f"{self.emulator_url(provider)}/_emulator/batches", timeout=10)
        wanted = batch_id.rsplit("/", 1)[-1]
        for entry in reply.json()["data"]:
            if entry["id"].rsplit("/", 1)[-1] == wanted:
                return bool(entry["emulator"]["held"])
        return False

    def vertex_config(self, **values: Any) -> None:
        requests.post(
            f"{self.vertex_emulator}/_emulator/config", json=values, timeout=10
        ).raise_for_status()

    def vertex_jobs(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Every batch prediction job the Vertex emulator has created (newest first), or
        those labelled with batchline job `job_id`."""
        reply = requests.get(f"{self.vertex_emulator}/_emulator/batches", timeout=10)
        jobs: list[dict[str, Any]] = reply.json()["data"]
        if job_id is None:
            return jobs
        return [j for j in jobs if (j.get("labels") or {}).get("batchline_job") == job_id]

    def vertex_requests(self, job_name: str) -> list[dict[str, Any]]:
        """The requests of a Vertex job's input, as the emulator read them from GCS."""
        url = f"{self.vertex_emulator}/_emulator/batches/{job_name.rsplit('/', 1)[-1]}/requests"
        received: list[dict[str, Any]] = requests.get(url, timeout=10).json()["data"]
        return received

    @contextmanager
    def ticker_paused(self) -> Iterator[None]:
        """No poll runs while the block runs, so that a test's own process is the only one
        to act on a job (a tick could otherwise take a freshly planned chunk first): the
        ticker is stopped, and its subscription stops pushing (ticks published before, or
        redelivered, wait in it until the block ends)."""
        stack = self.stack
        subscription = (
            f"http://{stack.pubsub_host}/v1/projects/{stack.config.project}"
            "/subscriptions/batchline-poll-push:modifyPushConfig"
        )
        endpoint = stack.push_endpoint("poll", stack.config.poll_topic)
        pgid = stack.components["ticker"].process.pgid
        os.killpg(pgid, signal.SIGSTOP)
        try:
            requests.post(subscription, json={"pushConfig": {}}, timeout=30).raise_for_status()
            # A push already on its way when the subscription switched is handled at once
            # (and a poll that starts before the test's job exists does not see it).
            time.sleep(1.0)
            yield
        finally:
            push = {"pushConfig": {"pushEndpoint": endpoint}}
            requests.post(subscription, json=push, timeout=30).raise_for_status()
            os.killpg(pgid, signal.SIGCONT)

    def post_cloudevent(self, resource: Mapping[str, Any], event_id: str) -> int:
        """Deliver a storage finalized CloudEvent to submit, as Eventarc would."""
        headers = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-type": "google.cloud.storage.object.v1.finalized",
            "ce-source": f"//storage.googleapis.com/projects/_/buckets/{resource['bucket']}",
            "ce-subject": f"objects/{resource['name']}",
            "content-type": "application/json",
        }
        reply = requests.post(
            self.stack.function_url("submit"),
            data=orjson.dumps(dict(resource)),
            headers=headers,
            timeout=120,
        )
        return reply.status_code


@pytest.fixture(scope="package")
def pipeline(local_stack: LocalStack) -> Iterator[Pipeline]:
    # The Google clients read their emulator hosts from the process environment.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in local_stack.client_env().items():
            patch.setenv(key, value)
        yield Pipeline(local_stack)


@pytest.fixture
def emulator_defaults(pipeline: Pipeline) -> Iterator[Callable[..., None]]:
    """Change the OpenAI emulator's behaviour for one test; restored afterwards."""
    yield from _restored(pipeline.emulator, pipeline.emulator_config)


@pytest.fixture
def anthropic_defaults(pipeline: Pipeline) -> Iterator[Callable[..., None]]:
    """Change the Anthropic emulator's behaviour for one test; restored afterwards."""
    yield from _restored(pipeline.anthropic_emulator, pipeline.anthropic_config)


@pytest.fixture
def vertex_defaults(pipeline: Pipeline) -> Iterator[Callable[..., None]]:
    """Change the Vertex emulator's behaviour for one test; restored afterwards."""
    yield from _restored(pipeline.vertex_emulator, pipeline.vertex_config)


@pytest.fixture
def all_emulator_defaults(
    emulator_defaults: Callable[..., None],
    anthropic_defaults: Callable[..., None],
    vertex_defaults: Callable[..., None],
) -> Callable[..., None]:
    """Change all three provider emulators' behaviour alike for one test; restored afterwards."""

    def configure(**values: Any) -> None:
        for one in (emulator_defaults, anthropic_defaults, vertex_defaults):
            one(**values)

    return configure


def _restored(base_url: str, configure: Callable[..., None]) -> Iterator[Callable[..., None]]:
    url = f"{base_url}/_emulator/config"
    before = requests.get(url, timeout=10).json()
    yield configure
    requests.post(url, json=before, timeout=10).raise_for_status()
    # A batch the test left held would keep the poll function busy for the whole session.
    requests.post(f"{base_url}/_emulator/release", json={}, timeout=10).raise_for_status()
