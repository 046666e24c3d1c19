"""Each Cloud Function through functions-framework's own `create_app(...).test_client()`,
against the real emulators (Firestore, Pub/Sub, fake-gcs-server, the OpenAI emulator).

Events are the recorded deliveries under `tests/data/events/`: Eventarc's storage
`object.v1.finalized` CloudEvent (binary mode) and Pub/Sub push bodies, which
functions-framework turns into `messagePublished` CloudEvents. Poll and collect are driven
by posting push bodies; what the functions publish is pulled from subscriptions that each
test creates on the collect and events topics.

A 2xx answer acknowledges the delivery; a 5xx asks the trigger to deliver it again, and
must be given for retryable failures only.
"""

from __future__ import annotations

import base64
import copy
import json
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from functions_framework import create_app

from batchline import bootstrap
from batchline.adapters.firestore import FirestoreJobStore
from batchline.adapters.firestore import make_client as firestore_client
from batchline.adapters.gcs import GcsBlobStore
from batchline.adapters.gcs import make_client as gcs_client
from batchline.domain.ids import job_id_for_object
from batchline.domain.models import Job, JobState
from batchline_tools.local.stack import (
    create_bucket,
    create_subscription,
    create_topic,
    wipe_firestore,
)

from .conftest import OpenAIEmulatorHandle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_SOURCE = ROOT / "functions" / "main.py"
EVENTS = ROOT / "tests" / "data" / "events"
SIGNATURES = {"submit": "cloudevent", "poll": "cloudevent", "collect": "cloudevent", "api": "http"}

#: Small enough that a five-line file makes three provider batches.
CHUNK_REQUESTS = 2
MODEL = "openai/gpt-4.1-mini"
ENDED = {"completed", "failed", "expired", "cancelled"}


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def request_line(i: int, custom_id: str | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Name a colour. #{i}"}],
        "max_tokens": 20,
    }
    if custom_id is not None:
        line["custom_id"] = custom_id
    return line


def jsonl(count: int) -> bytes:
    return b"".join(json.dumps(request_line(i, f"req-{i}")).encode() + b"\n" for i in range(count))


# --------------------------------------------------------------------------- the cloud


@dataclass
class Cloud:
    """One project on the session's emulators: buckets, topics, and what a test reads."""

    project: str
    firestore_host: str
    pubsub_host: str
    gcs_url: str
    openai: OpenAIEmulatorHandle
    env: dict[str, str]
    subscriptions: dict[str, str] = field(default_factory=dict)  # "collect"|"events" -> pull sub

    @property
    def input_bucket(self) -> str:
        return self.env["BATCHLINE_INPUT_BUCKET"]

    @property
    def output_bucket(self) -> str:
        return self.env["BATCHLINE_OUTPUT_BUCKET"]

    def topic(self, role: str) -> str:
        return self.env[f"BATCHLINE_{role.upper()}_TOPIC"]

    # Clients are made on use: they read the emulator hosts from the (patched) environment.
    @property
    def store(self) -> FirestoreJobStore:
        return FirestoreJobStore(firestore_client(self.project))

    @property
    def blobs(self) -> GcsBlobStore:
        return GcsBlobStore(gcs_client(self.project))

    def job(self, job_id: str) -> Job | None:
        return self.store.get_job(job_id)

    def upload(
        self,
        name: str,
        data: bytes,
        *,
        bucket: str | None = None,
        metadata: dict[str, str] | None = None,
        content_type: str = "application/jsonl",
    ) -> dict[str, Any]:
        """Upload an object; returns its resource as the GCS JSON API (and Eventarc) has it."""
        blob = gcs_client(self.project).bucket(bucket or self.input_bucket).blob(name)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_string(data, content_type=content_type)
        quoted = urllib.parse.quote(name, safe="")
        reply = requests.get(
            f"{self.gcs_url}/storage/v1/b/{blob.bucket.name}/o/{quoted}", timeout=10
        )
        reply.raise_for_status()
        resource: dict[str, Any] = reply.json()
        return resource

    def pull(self, role: str, settle: float = 1.0) -> list[dict[str, Any]]:
        """Every message on `role`'s test subscription, acknowledged: pulls until nothing
        more arrives for `settle` seconds. Each: {"data": decoded JSON, "attributes", ...}."""
        url = f"http://{self.pubsub_host}/v1/projects/{self.project}/subscriptions/"
        url += self.subscriptions[role]
        messages: list[dict[str, Any]] = []
        quiet_until = time.monotonic() + settle
        while time.monotonic() < quiet_until:
            reply = requests.post(
                url + ":pull", json={"maxMessages": 100, "returnImmediately": True}, timeout=10
            )
            reply.raise_for_status()
            received = reply.json().get("receivedMessages", [])
            if not received:
                time.sleep(0.1)
                continue
            requests.post(
                url + ":acknowledge", json={"ackIds": [m["ackId"] for m in received]}, timeout=10
            ).raise_for_status()
            for item in received:
                message = item["message"]
                message["json"] = json.loads(base64.b64decode(message.get("data", "")))
                messages.append(message)
            quiet_until = time.monotonic() + settle
        return messages

    def emulator_batches(self, job_id: str) -> list[dict[str, Any]]:
        return [
            b
            for b in self.openai.batches()
            if (b.get("metadata") or {}).get("batchline_job") == job_id
        ]

    def wait_batches_ended(self, job_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            batches = self.emulator_batches(job_id)
            if all(b["status"] in ENDED for b in batches):
                return batches
            if time.monotonic() > deadline:
                raise AssertionError(f"batches of {job_id} still running: {batches}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cloud(
    firestore_emulator: str,
    pubsub_emulator: str,
    gcs_server: str,
    openai_emulator: OpenAIEmulatorHandle,
) -> Cloud:
    """A fresh project id and fresh buckets on the session's emulators, with the topics the
    functions publish to."""
    tag = uuid.uuid4().hex[:8]
    project = f"batchline-fn-{tag}"
    env = {
        "GOOGLE_CLOUD_PROJECT": project,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "STORAGE_EMULATOR_HOST": gcs_server,
        "BATCHLINE_INPUT_BUCKET": f"bl-fn-{tag}-input",
        "BATCHLINE_OUTPUT_BUCKET": f"bl-fn-{tag}-output",
        "BATCHLINE_WORK_BUCKET": f"bl-fn-{tag}-work",
        "BATCHLINE_POLL_TOPIC": "batchline-poll",
        "BATCHLINE_COLLECT_TOPIC": "batchline-collect",
        "BATCHLINE_EVENTS_TOPIC": "batchline-events",
        "BATCHLINE_OPENAI_BASE_URL": openai_emulator.base_url,
        "OPENAI_BASE_URL": openai_emulator.base_url,
        "OPENAI_API_KEY": "sk-emulator",
        "BATCHLINE_OPENAI_MAX_REQUESTS": str(CHUNK_REQUESTS),
    }
    for bucket in ("INPUT", "OUTPUT", "WORK"):
        create_bucket(gcs_server, project, env[f"BATCHLINE_{bucket}_BUCKET"])
    for role in ("POLL", "COLLECT", "EVENTS"):
        create_topic(pubsub_emulator, project, env[f"BATCHLINE_{role}_TOPIC"])
    return Cloud(project, firestore_emulator, pubsub_emulator, gcs_server, openai_emulator, env)


@pytest.fixture(autouse=True)
def fresh(
    cloud: Cloud,
    set_client_env: Callable[[Mapping[str, str]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cloud]:
    """Per test: the environment the functions read, dependencies built anew, an empty
    Firestore, new pull subscriptions on collect and events, the emulator's config kept."""
    set_client_env(cloud.env)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(bootstrap, "_deps", None)
    wipe_firestore(cloud.firestore_host, cloud.project)
    tag = uuid.uuid4().hex[:8]
    cloud.subscriptions = {}
    for role in ("collect", "events", "poll"):
        name = f"test-{role}-{tag}"
        create_subscription(cloud.pubsub_host, cloud.project, name, cloud.topic(role))
        cloud.subscriptions[role] = name
    before = requests.get(f"{cloud.openai.root_url}/_emulator/config", timeout=10).json()
    try:
        yield cloud
    finally:
        cloud.openai.admin(before)
        for name in cloud.subscriptions.values():
            requests.delete(
                f"http://{cloud.pubsub_host}/v1/projects/{cloud.project}/subscriptions/{name}",
                timeout=10,
            )


@dataclass
class Functions:
    submit: FlaskClient
    poll: FlaskClient
    collect: FlaskClient
    api: FlaskClient


@pytest.fixture(scope="module")
def functions() -> Iterator[Functions]:
    """The four functions, each its own app as functions-framework builds it for a deploy.

    create_app records the target in os.environ, appends the source's folder to sys.path
    and registers the module as sys.modules["main"]: all undone afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE", "FUNCTION_SOURCE"):
            patch.delenv(name, raising=False)
        patch.setattr(sys, "path", list(sys.path))
        patch.delitem(sys.modules, "main", raising=False)
        clients = {
            name: create_app(  # type: ignore[no-untyped-call]
                name, str(FUNCTIONS_SOURCE), signature
            ).test_client()
            for name, signature in SIGNATURES.items()
        }
        yield Functions(**clients)


# ----------------------------------------------------------------------- deliveries


def storage_event(resource: Mapping[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """The recorded Eventarc delivery, carrying `resource` (the finalized object)."""
    event = recorded("storage_object_finalized.json")
    data = {**event["data"], **resource}
    headers = dict(event["headers"])
    headers["ce-id"] = event_id or uuid.uuid4().hex
    headers["ce-source"] = f"//storage.googleapis.com/projects/_/buckets/{data['bucket']}"
    headers["ce-subject"] = f"objects/{data['name']}"
    headers["ce-bucket"] = data["bucket"]
    return {"headers": headers, "data": data}


def deliver_storage_event(fn: Functions, event: Mapping[str, Any]) -> int:
    """POST in binary content mode, as Eventarc does; returns the HTTP status."""
    reply = fn.submit.post("/", headers=event["headers"], data=json.dumps(event["data"]))
    return reply.status_code


def push(
    client: FlaskClient,
    cloud: Cloud,
    template: str,
    topic: str,
    message: Mapping[str, Any] | None = None,
) -> int:
    """POST a recorded Pub/Sub push body to /projects/P/topics/T; `message` replaces the
    recorded message's fields (data must be base64 already)."""
    body = copy.deepcopy(recorded(template)["body"])
    message_id = str(uuid.uuid4().int % 10**12)
    body["message"].update(messageId=message_id, message_id=message_id)
    body["message"].update(message or {})
    body["subscription"] = f"projects/{cloud.project}/subscriptions/{topic}-push"
    reply = client.post(f"/projects/{cloud.project}/topics/{topic}", json=body)
    return reply.status_code


def tick(fn: Functions, cloud: Cloud) -> int:
    """Deliver Cloud Scheduler's tick to poll (it fans out: one message per active job)."""
    return push(fn.poll, cloud, "pubsub_push_poll.json", cloud.topic("poll"))


def poll_push(fn: Functions, cloud: Cloud, pulled: Mapping[str, Any]) -> int:
    """Deliver a message pulled from the poll topic to poll, as push would."""
    fields = {k: pulled[k] for k in ("data", "attributes", "messageId", "publishTime")}
    fields.update(message_id=pulled["messageId"], publish_time=pulled["publishTime"])
    return push(fn.poll, cloud, "pubsub_push_poll.json", cloud.topic("poll"), fields)


def poll_tick(fn: Functions, cloud: Cloud) -> int:
    """A tick, then every message then on the poll topic (the job messages the tick
    published, and any the api asked for), each delivered to poll in turn as the push
    subscription would; the first status that is not 200, else 200."""
    status = tick(fn, cloud)
    if status != 200:
        return status
    for pulled in cloud.pull("poll", settle=0.2):
        status = poll_push(fn, cloud, pulled)
        if status != 200:
            return status
    return 200


def collect_push(fn: Functions, cloud: Cloud, pulled: Mapping[str, Any]) -> int:
    """Deliver a message pulled from the collect topic to collect, as push would."""
    fields = {k: pulled[k] for k in ("data", "attributes", "messageId", "publishTime")}
    fields.update(message_id=pulled["messageId"], publish_time=pulled["publishTime"])
    return push(fn.collect, cloud, "pubsub_push_collect.json", cloud.topic("collect"), fields)


def collect_fanned_out(fn: Functions, cloud: Cloud, pulled: Mapping[str, Any]) -> int:
    """Deliver a job's collect request, then every chunk message it fans out (pulled from
    the collect topic and pushed, as Pub/Sub would), until none is left; the number of
    chunk messages."""
    assert collect_push(fn, cloud, pulled) == 200
    chunks = 0
    while more := cloud.pull("collect", settle=0.3):
        for message in more:
            assert "chunk" in message["json"], message["json"]
            assert collect_push(fn, cloud, message) == 200
            chunks += 1
    return chunks


def b64json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def poll_until_collecting(fn: Functions, cloud: Cloud, job_id: str, timeout: float = 60.0) -> Job:
    """Poll ticks, letting the job's emulator batches end between them, until the job
    leaves submitting/running."""
    deadline = time.monotonic() + timeout
    while True:
        assert poll_tick(fn, cloud) == 200
        job = cloud.job(job_id)
        assert job is not None
        if job.state not in (JobState.SUBMITTING, JobState.RUNNING):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.state} after {timeout}s")
        cloud.wait_batches_ended(job_id)


def run_to_end(
    fn: Functions, cloud: Cloud, job_id: str, rounds: int = 4
) -> tuple[Job, list[dict[str, Any]]]:
    """Poll until collecting, deliver the one collect request poll published (and the
    chunk messages it fans out), again for each follow-up round (retries of failed lines);
    returns the terminal job and the events published."""
    for _ in range(rounds):
        job = poll_until_collecting(fn, cloud, job_id)
        assert job.state is JobState.COLLECTING
        requested = [m for m in cloud.pull("collect") if m["json"].get("job_id") == job_id]
        assert len(requested) == 1, requested
        assert requested[0]["attributes"].get("job_id") == job_id
        assert collect_fanned_out(fn, cloud, requested[0]) >= 1
        done = cloud.job(job_id)
        assert done is not None
        if done.state.terminal:
            return done, cloud.pull("events")
        assert done.state is JobState.RUNNING, done  # a follow-up round started
    raise AssertionError(f"job {job_id} did not end in {rounds} rounds: {cloud.job(job_id)}")


def results_of(cloud: Cloud, job: Job) -> list[dict[str, Any]]:
    return [json.loads(x) for x in cloud.blobs.read_bytes(job.results_uri).splitlines()]


def summary_of(cloud: Cloud, job: Job) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cloud.blobs.read_bytes(job.summary_uri))
    return data


def unique(name: str) -> str:
    return f"{uuid.uuid4().hex[:8]}/{name}"


# ----------------------------------------------------------------------------- submit


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_submit_creates_the_job_and_one_batch_per_chunk(
    functions: Functions, cloud: Cloud, mode: str
) -> None:
    resource = cloud.upload(unique("in/colours.jsonl"), jsonl(5), metadata={"label-team": "search"})
    event = storage_event(resource)
    if mode == "binary":
        status = deliver_storage_event(functions, event)
    else:  # the same CloudEvent in structured content mode
        attributes = {
            k.removeprefix("ce-"): v for k, v in event["headers"].items() if k.startswith("ce-")
        }
        envelope = {**attributes, "datacontenttype": "application/json", "data": event["data"]}
        status = functions.submit.post(
            "/",
            data=json.dumps(envelope),
            headers={"content-type": "application/cloudevents+json; charset=utf-8"},
        ).status_code
    assert status == 200

    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    job = cloud.job(job_id)
    assert job is not None
    assert job.state in (JobState.RUNNING, JobState.COLLECTING)
    assert job.source.uri == f"gs://{cloud.input_bucket}/{resource['name']}"
    assert job.source.generation == resource["generation"]
    assert job.source.md5 == resource["md5Hash"]
    assert job.options.labels == {"team": "search"}
    assert job.chunk_count == 3  # 5 requests, 2 per chunk
    assert job.counts["requests"] == 5
    assert job.results_uri.startswith(f"gs://{cloud.output_bucket}/")
    batches = cloud.emulator_batches(job_id)
    assert sorted(int(b["metadata"]["batchline_chunk"]) for b in batches) == [0, 1, 2]
    assert {c.batch_id for c in cloud.store.get_chunks(job_id)} == {b["id"] for b in batches}


def test_the_same_event_again_is_acknowledged_without_a_second_batch(
    functions: Functions, cloud: Cloud
) -> None:
    resource = cloud.upload(unique("in/twice.jsonl"), jsonl(3))
    event = storage_event(resource)
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    assert deliver_storage_event(functions, event) == 200
    first = {b["id"] for b in cloud.emulator_batches(job_id)}
    assert len(first) == 2

    assert deliver_storage_event(functions, event) == 200  # at-least-once: a redelivery
    assert deliver_storage_event(functions, storage_event(resource)) == 200  # a new event id
    assert {b["id"] for b in cloud.emulator_batches(job_id)} == first
    job = cloud.job(job_id)
    assert job is not None and job.chunk_count == 2


def test_events_for_another_bucket_or_a_non_jsonl_object_are_acknowledged_and_ignored(
    functions: Functions, cloud: Cloud
) -> None:
    elsewhere = cloud.upload(unique("in/other.jsonl"), jsonl(1), bucket=cloud.output_bucket)
    notes = cloud.upload(unique("in/notes.txt"), b"not for batchline\n", content_type="text/plain")
    csv = cloud.upload(unique("in/data.jsonl.csv"), jsonl(1))
    for resource in (elsewhere, notes, csv):
        assert deliver_storage_event(functions, storage_event(resource)) == 200
        job_id = job_id_for_object(resource["bucket"], resource["name"], resource["generation"])
        assert cloud.job(job_id) is None, resource["name"]
    assert cloud.store.active_jobs() == []
    # An event without an object (bucket/name) in its data is acknowledged too.
    event = storage_event({})
    event["data"] = {"kind": "storage#object"}
    assert deliver_storage_event(functions, event) == 200


def _gone(cloud: Cloud, name: str) -> dict[str, Any]:
    resource = cloud.upload(name, jsonl(2))
    gcs_client(cloud.project).bucket(cloud.input_bucket).blob(name).delete()
    return resource


@pytest.mark.parametrize(
    ("make", "name", "reason"),
    [
        pytest.param(lambda c, n: c.upload(n, b""), "in/empty.jsonl", "empty", id="empty"),
        pytest.param(
            lambda c, n: c.upload(n, b"\n  \n\r\n"), "in/blank.jsonl", "blank", id="blank lines"
        ),
        pytest.param(
            lambda c, n: c.upload(n, b"\x1f\x8b\x08\x00garbage" * 10),
            "in/corrupt.jsonl.gz",
            "decompress",
            id="corrupt gzip",
        ),
        pytest.param(
            _gone,
            "in/gone.jsonl",
            "gone",
            id="deleted before submit ran",
        ),
    ],
)
def test_an_unreadable_file_is_rejected_and_acknowledged(
    functions: Functions,
    cloud: Cloud,
    make: Callable[[Cloud, str], dict[str, Any]],
    name: str,
    reason: str,
) -> None:
    resource = make(cloud, unique(name))
    assert deliver_storage_event(functions, storage_event(resource)) == 200  # no retry

    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    job = cloud.job(job_id)
    assert job is not None
    assert job.state is JobState.REJECTED
    assert job.error and reason in job.error
    assert cloud.emulator_batches(job_id) == []
    summary = summary_of(cloud, job)
    assert summary["state"] == "rejected"
    assert reason in summary["error"]
    assert not cloud.blobs.exists(job.results_uri)
    events = cloud.pull("events")
    assert [(m["json"]["job_id"], m["json"]["state"]) for m in events] == [(job_id, "rejected")]
    assert events[0]["json"]["results_uri"] is None


# ------------------------------------------------------------------- poll and collect


def test_poll_rejects_a_job_whose_input_vanished_and_still_advances_the_others(
    functions: Functions, cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHLINE_LEASE_SECONDS", "1")
    healthy = cloud.upload(unique("in/healthy.jsonl"), jsonl(2))
    healthy_id = job_id_for_object(cloud.input_bucket, healthy["name"], healthy["generation"])
    assert deliver_storage_event(functions, storage_event(healthy)) == 200
    gone = _gone(cloud, unique("in/vanished.jsonl"))
    gone_id = job_id_for_object(cloud.input_bucket, gone["name"], gone["generation"])
    assert deliver_storage_event(functions, storage_event(gone)) == 200
    time.sleep(1.2)  # a planner that failed has left its lease to expire
    cloud.wait_batches_ended(healthy_id)

    assert poll_tick(functions, cloud) == 200
    vanished = cloud.job(gone_id)
    assert vanished is not None and vanished.state is JobState.REJECTED
    advanced = cloud.job(healthy_id)
    assert advanced is not None and advanced.state is JobState.COLLECTING


def test_poll_then_collect_finishes_the_job_and_publishes_job_completed_once(
    functions: Functions, cloud: Cloud
) -> None:
    data = jsonl(5)
    resource = cloud.upload(unique("reviews/colours.jsonl"), data)
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    assert deliver_storage_event(functions, storage_event(resource)) == 200
    assert cloud.pull("collect", settle=0.3) == []  # nothing ended yet

    # One tick after every batch has ended is enough to hand the job to collect.
    cloud.wait_batches_ended(job_id)
    assert poll_tick(functions, cloud) == 200
    job = cloud.job(job_id)
    assert job is not None and job.state is JobState.COLLECTING
    requested = cloud.pull("collect")
    assert [m["json"] for m in requested] == [{"job_id": job_id}]
    # One message per chunk (three), then the merge by the last of them.
    assert collect_fanned_out(functions, cloud, requested[0]) == 3

    job = cloud.job(job_id)
    assert job is not None
    assert job.state is JobState.SUCCEEDED
    assert job.results_uri == (
        f"gs://{cloud.output_bucket}/{resource['name'].removesuffix('.jsonl')}/{job_id}/"
        "results.jsonl"
    )
    results = results_of(cloud, job)
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(5)]
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5]
    assert {r["status"] for r in results} == {"succeeded"}
    summary = summary_of(cloud, job)
    assert summary["state"] == "succeeded"
    assert summary["counts"] == {"succeeded": 5}
    assert len(summary["provider_batches"]) == 3

    events = cloud.pull("events")
    assert len(events) == 1, events
    event = events[0]
    assert event["attributes"]["type"] == "job.completed"
    assert event["attributes"]["job_id"] == job_id
    assert event["json"]["type"] == "job.completed"
    assert event["json"]["state"] == "succeeded"
    assert event["json"]["results_uri"] == job.results_uri
    assert event["json"]["summary_uri"] == job.summary_uri
    assert event["json"]["counts"]["succeeded"] == 5

    # Redeliveries change nothing: no second event, no second collect request.
    assert collect_push(functions, cloud, requested[0]) == 200
    assert poll_tick(functions, cloud) == 200
    assert cloud.pull("events", settle=0.5) == []
    assert cloud.pull("collect", settle=0.3) == []
    assert cloud.job(job_id) == job


def test_lines_for_a_provider_the_deployment_does_not_enable_are_invalid(
    functions: Functions,
    cloud: Cloud,
    set_client_env: Callable[[Mapping[str, str]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BATCHLINE_ENABLED_PROVIDERS=openai: Anthropic lines (batchline and native) are
    invalid, saying so; the OpenAI line runs; no Anthropic batch is made."""
    set_client_env({"BATCHLINE_ENABLED_PROVIDERS": "openai"})
    monkeypatch.setattr(bootstrap, "_deps", None)
    message = [{"role": "user", "content": "Name a colour."}]
    lines = [
        request_line(0, "ok"),
        {"custom_id": "claude", "model": "anthropic/claude-haiku-4-5", "messages": message},
        {"custom_id": "native", "params": {"model": "claude-haiku-4-5", "messages": message}},
        {"custom_id": "acme", "model": "acme/x", "messages": message},
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    resource = cloud.upload(unique("mixed/providers.jsonl"), data)
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    assert deliver_storage_event(functions, storage_event(resource)) == 200
    job, _ = run_to_end(functions, cloud, job_id)
    assert job.state is JobState.PARTIAL
    results = results_of(cloud, job)
    assert [(r["custom_id"], r["status"]) for r in results] == [
        ("ok", "succeeded"),
        ("claude", "invalid"),
        ("native", "invalid"),
        ("acme", "invalid"),
    ]
    disabled = "provider 'anthropic' is not enabled in this deployment"
    assert results[1]["error"]["field"] == "model"
    assert results[2]["error"]["field"] == "params.model"
    assert all(disabled in r["error"]["message"] for r in results[1:3])
    assert "unknown provider 'acme'" in results[3]["error"]["message"]
    assert [c.provider for c in cloud.store.get_chunks(job_id)] == ["openai"]


def test_poll_with_nothing_to_do_is_acknowledged(functions: Functions, cloud: Cloud) -> None:
    assert poll_tick(functions, cloud) == 200
    # Any payload without a job_id is a tick: Cloud Scheduler's, an empty one.
    assert push(functions.poll, cloud, "pubsub_push_poll.json", "x", {"data": ""}) == 200
    assert cloud.pull("poll", settle=0.3) == []  # no active job: nothing fanned out


def test_a_tick_fans_out_one_message_per_active_job_and_each_advances_its_job(
    functions: Functions, cloud: Cloud
) -> None:
    jobs = []
    for name in ("a", "b", "c"):
        resource = cloud.upload(unique(f"in/{name}.jsonl"), jsonl(3))
        job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
        assert deliver_storage_event(functions, storage_event(resource)) == 200
        cloud.wait_batches_ended(job_id)
        jobs.append(job_id)

    assert tick(functions, cloud) == 200
    fanned = cloud.pull("poll", settle=0.3)
    assert sorted(m["json"]["job_id"] for m in fanned) == sorted(jobs)
    assert all(m["attributes"] == {"job_id": m["json"]["job_id"]} for m in fanned)
    # The tick itself advanced nothing.
    assert all(cloud.job(j).state is JobState.RUNNING for j in jobs)  # type: ignore[union-attr]

    first, *others = sorted(fanned, key=lambda m: m["json"]["job_id"])
    first_id = first["json"]["job_id"]
    assert poll_push(functions, cloud, first) == 200
    assert cloud.job(first_id).state is JobState.COLLECTING  # type: ignore[union-attr]
    rest = [m["json"]["job_id"] for m in others]
    assert all(cloud.job(j).state is JobState.RUNNING for j in rest)  # type: ignore[union-attr]
    assert [m["json"]["job_id"] for m in cloud.pull("collect")] == [first_id]

    # Delivered again (a redelivery, or the next tick's), and late: nothing twice.
    assert poll_push(functions, cloud, first) == 200
    assert cloud.pull("collect", settle=0.3) == []
    for message in others:
        assert poll_push(functions, cloud, message) == 200
    assert all(cloud.job(j).state is JobState.COLLECTING for j in jobs)  # type: ignore[union-attr]
    assert sorted(m["json"]["job_id"] for m in cloud.pull("collect")) == sorted(rest)
    assert sum(len(cloud.emulator_batches(j)) for j in jobs) == 6  # 2 chunks a job, sent once


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"job_id": "job-000000000000000000000000"}, id="unknown job"),
        pytest.param({"job_id": 42}, id="job_id not a string: a tick"),
    ],
)
def test_poll_acknowledges_a_message_for_no_job_it_can_advance(
    functions: Functions, cloud: Cloud, message: Any
) -> None:
    status = push(
        functions.poll,
        cloud,
        "pubsub_push_poll.json",
        cloud.topic("poll"),
        {"data": b64json(message), "attributes": {}},
    )
    assert status == 200
    assert cloud.pull("collect", settle=0.3) == []
    assert cloud.pull("poll", settle=0.3) == []


def test_a_job_message_for_an_ended_job_changes_nothing(functions: Functions, cloud: Cloud) -> None:
    resource = cloud.upload(unique("in/ended.jsonl"), jsonl(2))
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    assert deliver_storage_event(functions, storage_event(resource)) == 200
    done, _ = run_to_end(functions, cloud, job_id)
    message = {"data": b64json({"job_id": job_id}), "attributes": {"job_id": job_id}}

    status = push(functions.poll, cloud, "pubsub_push_poll.json", cloud.topic("poll"), message)

    assert status == 200
    assert cloud.job(job_id) == done
    assert cloud.pull("collect", settle=0.3) == [] and cloud.pull("events", settle=0.3) == []


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({}, id="no job_id"),
        pytest.param({"job_id": 42}, id="job_id not a string"),
        pytest.param(["job_id"], id="not an object"),
        pytest.param({"job_id": "job-000000000000000000000000"}, id="unknown job"),
    ],
)
def test_collect_acknowledges_a_bad_message(
    functions: Functions, cloud: Cloud, message: Any
) -> None:
    status = push(
        functions.collect,
        cloud,
        "pubsub_push_collect.json",
        cloud.topic("collect"),
        {"data": b64json(message), "attributes": {}},
    )
    assert status == 200
    assert cloud.pull("events", settle=0.3) == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(base64.b64encode(b"not json").decode(), id="not JSON"),
        pytest.param("%%% not base64 %%%", id="not base64"),
    ],
)
def test_collect_acknowledges_a_message_that_is_not_json(
    functions: Functions, cloud: Cloud, data: str
) -> None:
    status = push(
        functions.collect,
        cloud,
        "pubsub_push_collect.json",
        cloud.topic("collect"),
        {"data": data, "attributes": {}},
    )
    assert status == 200


def test_a_retryable_provider_failure_in_submit_answers_5xx_and_a_later_delivery_completes(
    functions: Functions, cloud: Cloud
) -> None:
    resource = cloud.upload(unique("in/flaky.jsonl"), jsonl(3))
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    event = storage_event(resource)

    # Every OpenAI call answers 500: the SDK retries, then gives up.
    cloud.openai.admin({"api_error_rate": 1.0, "api_error_status": 500})
    injected = cloud.openai.stats()["injected_errors"]
    status = deliver_storage_event(functions, event)
    assert 500 <= status < 600  # the trigger delivers it again
    assert cloud.openai.stats()["injected_errors"] > injected + 1  # the SDK did retry
    assert cloud.emulator_batches(job_id) == []
    job = cloud.job(job_id)
    assert job is not None and job.state is JobState.SUBMITTING
    assert job.chunk_count == 2

    cloud.openai.admin({"api_error_rate": 0.0})
    assert deliver_storage_event(functions, event) == 200  # the redelivery
    done, events = run_to_end(functions, cloud, job_id)

    assert done.state is JobState.SUCCEEDED
    batches = cloud.emulator_batches(job_id)
    assert sorted(int(b["metadata"]["batchline_chunk"]) for b in batches) == [0, 1]
    assert [r["custom_id"] for r in results_of(cloud, done)] == ["req-0", "req-1", "req-2"]
    assert [(m["json"]["job_id"], m["json"]["state"]) for m in events] == [(job_id, "succeeded")]


def test_a_retryable_provider_failure_in_collect_answers_5xx_and_a_later_delivery_completes(
    functions: Functions, cloud: Cloud
) -> None:
    resource = cloud.upload(unique("in/flaky-collect.jsonl"), jsonl(2))
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    assert deliver_storage_event(functions, storage_event(resource)) == 200
    job = poll_until_collecting(functions, cloud, job_id)
    assert job.state is JobState.COLLECTING
    requested = cloud.pull("collect")
    assert len(requested) == 1

    assert collect_push(functions, cloud, requested[0]) == 200  # fans out: no provider call
    [chunk] = cloud.pull("collect")
    cloud.openai.admin({"api_error_rate": 1.0, "api_error_status": 503})
    assert 500 <= collect_push(functions, cloud, chunk) < 600
    job = cloud.job(job_id)
    assert job is not None and job.state is JobState.COLLECTING
    assert cloud.pull("events", settle=0.3) == []

    cloud.openai.admin({"api_error_rate": 0.0})
    assert collect_push(functions, cloud, chunk) == 200
    job = cloud.job(job_id)
    assert job is not None and job.state is JobState.SUCCEEDED
    assert len(results_of(cloud, job)) == 2
    assert [m["json"]["state"] for m in cloud.pull("events")] == ["succeeded"]


# -------------------------------------------------------------------------------- api


def api_post(
    fn: Functions, body: Any, key: str | None = None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key} if key else {}
    if "data" in kwargs:
        reply = fn.api.post("/v1/jobs", headers=headers, **kwargs)
    else:
        reply = fn.api.post("/v1/jobs", headers=headers, json=body)
    return json_reply(reply)


def json_reply(reply: Any) -> tuple[int, dict[str, Any]]:
    """(status, body) of an API reply, which is always JSON."""
    assert reply.mimetype == "application/json"
    payload: dict[str, Any] = reply.get_json()
    return reply.status_code, payload


def test_api_inline_requests_are_idempotent_by_key_and_readable(
    functions: Functions, cloud: Cloud
) -> None:
    key = f"order-{uuid.uuid4().hex}"
    lines = [request_line(i, f"inline-{i}") for i in range(3)]
    body = {"requests": lines, "options": {"labels": {"team": "search"}}}

    status, view = api_post(functions, body, key)
    assert status == 202, view
    assert view["job_id"].startswith("job-")
    assert view["idempotency_key"] == key
    assert view["origin"] == "api"
    # The api only claims the job and asks poll to plan it (it reads no job data).
    assert view["state"] == "accepted" and view["chunks"] == 0
    assert view["options"]["labels"] == {"team": "search"}
    assert view["results_uri"] is None  # not before the job ends
    asked = [m for m in cloud.pull("poll") if m["json"].get("job_id") == view["job_id"]]
    assert len(asked) == 1

    again_status, again = api_post(functions, body, key)
    assert again_status == 200
    assert again["job_id"] == view["job_id"]
    assert poll_tick(functions, cloud) == 200
    again_status, again = api_post(functions, body, key)
    assert (again_status, again["job_id"], again["chunks"]) == (200, view["job_id"], 2)
    assert len(cloud.emulator_batches(view["job_id"])) == 2  # nothing submitted twice

    reply = functions.api.get(f"/v1/jobs/{view['job_id']}")
    assert reply.status_code == 200
    assert reply.get_json()["state"] in ("running", "collecting")

    done, _ = run_to_end(functions, cloud, view["job_id"])
    assert done.state is JobState.SUCCEEDED
    reply = functions.api.get(f"/v1/jobs/{view['job_id']}/")
    assert reply.status_code == 200
    final = reply.get_json()
    assert final["state"] == "succeeded"
    assert final["counts"]["succeeded"] == 3
    assert final["results_uri"] == done.results_uri
    assert [r["custom_id"] for r in results_of(cloud, done)] == ["inline-0", "inline-1", "inline-2"]


def test_api_key_reused_for_a_different_request_is_422(functions: Functions, cloud: Cloud) -> None:
    key = f"reuse-{uuid.uuid4().hex}"
    status, view = api_post(functions, {"requests": [request_line(0, "first")]}, key)
    assert status == 202, view
    status, reply = api_post(functions, {"requests": [request_line(0, "second")]}, key)
    assert status == 422
    assert reply["error"]["type"] == "idempotency_key_reused"
    assert view["job_id"] in reply["error"]["message"]
    assert poll_tick(functions, cloud) == 200
    assert len(cloud.emulator_batches(view["job_id"])) == 1


def api_cancel(fn: Functions, job_id: str) -> tuple[int, dict[str, Any]]:
    return json_reply(fn.api.post(f"/v1/jobs/{job_id}:cancel"))


def test_api_cancel_stops_the_batches_and_keeps_the_answers_already_in(
    functions: Functions, cloud: Cloud
) -> None:
    before = cloud.openai.admin({})
    # Each batch (2 requests a chunk) answers 1, then is held until the cancel.
    cloud.openai.admin({"hold_after_lines": 1})
    try:
        lines = [request_line(i, f"cancel-{i}") for i in range(4)]
        status, view = api_post(functions, {"requests": lines}, f"cancel-{uuid.uuid4().hex}")
        assert status == 202, view
        job_id = view["job_id"]
        assert poll_tick(functions, cloud) == 200
        batches = cloud.emulator_batches(job_id)
        assert len(batches) == len(lines) // CHUNK_REQUESTS, batches
        for batch in batches:
            cloud.openai.wait_held(batch["id"])

        status, asked = api_cancel(functions, job_id)
        assert status == 202, asked
        assert asked["state"] in ("running", "submitting") and asked["cancel_requested_at"]
        status, again = api_cancel(functions, job_id)
        assert (status, again["cancel_requested_at"]) == (202, asked["cancel_requested_at"])

        done, events = run_to_end(functions, cloud, job_id)  # poll cancels, collect ends it
    finally:
        cloud.openai.admin(before)
    assert {b["status"] for b in cloud.emulator_batches(job_id)} == {"cancelled"}
    results = results_of(cloud, done)
    assert [r["custom_id"] for r in results] == [f"cancel-{i}" for i in range(4)]
    statuses = [r["status"] for r in results]
    assert sorted(statuses) == ["canceled", "canceled", "succeeded", "succeeded"], statuses
    assert done.state is JobState.CANCELED
    assert [m["json"]["state"] for m in events] == ["canceled"]
    status, final = api_cancel(functions, job_id)
    assert (status, final["state"]) == (200, "canceled")


def test_api_cancel_of_an_ended_job_is_409_and_of_an_unknown_one_404(
    functions: Functions, cloud: Cloud
) -> None:
    status, view = api_post(functions, {"requests": [request_line(0)]}, f"k-{uuid.uuid4().hex}")
    assert status == 202, view
    done, _ = run_to_end(functions, cloud, view["job_id"])
    assert done.state is JobState.SUCCEEDED
    status, reply = api_cancel(functions, view["job_id"])
    assert status == 409 and reply["error"]["type"] == "job_ended"
    assert "succeeded" in reply["error"]["message"]
    status, reply = api_cancel(functions, "job-000000000000000000000000")
    assert status == 404 and reply["error"]["type"] == "not_found"


def test_api_get_of_an_unknown_job_is_404(functions: Functions) -> None:
    reply = functions.api.get("/v1/jobs/job-000000000000000000000000")
    assert reply.status_code == 404
    assert reply.get_json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("body", "kwargs", "fragment"),
    [
        pytest.param(
            {"requests": [request_line(0)], "input_uri": "gs://b/x.jsonl"},
            {},
            "exactly one of 'requests'",
            id="both",
        ),
        pytest.param({"options": {}}, {}, "exactly one of 'requests'", id="neither"),
        pytest.param(
            None,
            {"data": "{not json", "content_type": "application/json"},
            "must be JSON",
            id="not JSON",
        ),
        pytest.param(["requests"], {}, "JSON object", id="not an object"),
        pytest.param({"requests": "a line"}, {}, "'requests' must be", id="requests a string"),
        pytest.param({"requests": {"a": 1}}, {}, "'requests' must be", id="requests an object"),
        pytest.param({"requests": []}, {}, "non-empty", id="requests empty"),
        pytest.param({"input_uri": "https://x/y.jsonl"}, {}, "gs://", id="input_uri not gs"),
        pytest.param(
            {"requests": [request_line(0)], "options": {"model": 4}},
            {},
            "options.model",
            id="model not a string",
        ),
        pytest.param(
            {"requests": [request_line(0)], "options": {"response_schema": {"type": "objekt"}}},
            {},
            "options.response_schema",
            id="schema not JSON Schema",
        ),
        pytest.param(
            {"requests": [request_line(0)], "options": {"max_repair_attempts": -1}},
            {},
            "options.max_repair_attempts",
            id="repairs negative",
        ),
        pytest.param(
            {"requests": [request_line(0)], "options": {"max_cost_usd": "lots"}},
            {},
            "options.max_cost_usd",
            id="budget not a number",
        ),
    ],
)
def test_api_rejects_a_malformed_post_with_400_naming_the_problem(
    functions: Functions, cloud: Cloud, body: Any, kwargs: dict[str, Any], fragment: str
) -> None:
    status, payload = api_post(functions, body, f"bad-{uuid.uuid4().hex}", **kwargs)
    assert status == 400, payload
    assert payload["error"]["type"] == "bad_request"
    assert fragment in payload["error"]["message"]
    assert cloud.store.active_jobs() == []


def test_api_input_uri_of_an_uploaded_object_is_accepted(
    functions: Functions, cloud: Cloud
) -> None:
    resource = cloud.upload(unique("api/colours.jsonl"), jsonl(3))
    uri = f"gs://{cloud.input_bucket}/{resource['name']}"
    status, view = api_post(functions, {"input_uri": uri}, f"uri-{uuid.uuid4().hex}")
    assert status == 202, view
    assert view["source"] == uri
    # A file may be large: the request only claims the job; the next poll tick plans it.
    assert view["state"] == "accepted" and view["chunks"] == 0
    assert cloud.emulator_batches(view["job_id"]) == []
    assert poll_tick(functions, cloud) == 200
    job = cloud.job(view["job_id"])
    assert job is not None and job.source.generation == resource["generation"]
    assert job.chunk_count == 2
    assert len(cloud.emulator_batches(view["job_id"])) == 2

    missing = f"gs://{cloud.input_bucket}/{unique('api/nothing.jsonl')}"
    status, payload = api_post(functions, {"input_uri": missing}, f"uri-{uuid.uuid4().hex}")
    assert status == 400
    assert missing in payload["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v0"), ("GET", "/v2/jobs"), ("GET", "/v1/jobs/a/b"), ("DELETE", "/v1/other")],
)
def test_api_unknown_path_is_404(functions: Functions, method: str, path: str) -> None:
    reply = functions.api.open(path, method=method)
    assert reply.status_code == 404
    assert reply.get_json()["error"]["type"] == "not_found"
