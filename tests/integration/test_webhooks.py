"""Webhooks through functions-framework and the real emulators (Firestore, Pub/Sub,
fake-gcs-server, the OpenAI emulator), with a real receiver on loopback.

Outbound: a job with `notify_url` ends; what collect publishes on the notify topic is
pushed to the notify function, which POSTs the signed `job.completed` event (checked here
with `standardwebhooks`, not with batchline's code); a receiver answering 500 gets the
same webhook-id again on the redelivery; the crash gap (the job's end written, the
publish failed) is closed by the collect redelivery and, where nothing redelivers, by a
poll tick.

Inbound: OpenAI's events are signed here with `standardwebhooks` and posted to the api
function's `/v1/webhooks/openai`, which checks them with the openai SDK.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import standardwebhooks
from flask.testing import FlaskClient
from functions_framework import create_app

from batchline import bootstrap
from batchline.domain.ids import job_id_for_object
from batchline.domain.models import Job, JobState
from batchline.domain.webhooks import completed_webhook_id, make_secret
from batchline_emulators._wsgi import start_in_thread
from batchline_tools.local.receiver import WebhookReceiver
from batchline_tools.local.stack import (
    create_bucket,
    create_subscription,
    create_topic,
    wipe_firestore,
)

from .conftest import OpenAIEmulatorHandle
from .test_functions import (
    CHUNK_REQUESTS,
    FUNCTIONS_SOURCE,
    Cloud,
    jsonl,
    push,
    storage_event,
    unique,
)

pytestmark = pytest.mark.integration

SIGNATURES = {
    "submit": "cloudevent",
    "poll": "cloudevent",
    "collect": "cloudevent",
    "notify": "cloudevent",
    "api": "http",
}
WEBHOOK_SECRET = make_secret(b"batchline notify secret, 32 byte")
OPENAI_SECRET = make_secret(b"openai webhook secret, 32 bytes!")
ROLES = ("collect", "events", "poll", "notify")


@pytest.fixture(scope="module")
def cloud(
    firestore_emulator: str,
    pubsub_emulator: str,
    gcs_server: str,
    openai_emulator: OpenAIEmulatorHandle,
) -> Cloud:
    tag = uuid.uuid4().hex[:8]
    project = f"batchline-wh-{tag}"
    env = {
        "GOOGLE_CLOUD_PROJECT": project,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "STORAGE_EMULATOR_HOST": gcs_server,
        "BATCHLINE_INPUT_BUCKET": f"bl-wh-{tag}-input",
        "BATCHLINE_OUTPUT_BUCKET": f"bl-wh-{tag}-output",
        "BATCHLINE_WORK_BUCKET": f"bl-wh-{tag}-work",
        "BATCHLINE_POLL_TOPIC": "batchline-poll",
        "BATCHLINE_COLLECT_TOPIC": "batchline-collect",
        "BATCHLINE_EVENTS_TOPIC": "batchline-events",
        "BATCHLINE_NOTIFY_TOPIC": "batchline-notify",
        "BATCHLINE_OPENAI_BASE_URL": openai_emulator.base_url,
        "OPENAI_BASE_URL": openai_emulator.base_url,
        "OPENAI_API_KEY": "sk-emulator",
        "BATCHLINE_OPENAI_MAX_REQUESTS": str(CHUNK_REQUESTS),
        "BATCHLINE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL": "1",
        "OPENAI_WEBHOOK_SECRET": OPENAI_SECRET,
    }
    for bucket in ("INPUT", "OUTPUT", "WORK"):
        create_bucket(gcs_server, project, env[f"BATCHLINE_{bucket}_BUCKET"])
    for role in ROLES:
        create_topic(pubsub_emulator, project, env[f"BATCHLINE_{role.upper()}_TOPIC"])
    return Cloud(project, firestore_emulator, pubsub_emulator, gcs_server, openai_emulator, env)


def subscribe(cloud: Cloud, role: str) -> None:
    name = f"test-{role}-{uuid.uuid4().hex[:8]}"
    create_subscription(cloud.pubsub_host, cloud.project, name, cloud.topic(role))
    cloud.subscriptions[role] = name


@pytest.fixture(autouse=True)
def fresh(
    cloud: Cloud,
    set_client_env: Callable[[Mapping[str, str]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cloud]:
    set_client_env(cloud.env)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(bootstrap, "_deps", None)
    wipe_firestore(cloud.firestore_host, cloud.project)
    cloud.subscriptions = {}
    for role in ROLES:
        subscribe(cloud, role)
    try:
        yield cloud
    finally:
        for name in cloud.subscriptions.values():
            requests.delete(
                f"http://{cloud.pubsub_host}/v1/projects/{cloud.project}/subscriptions/{name}",
                timeout=10,
            )


@pytest.fixture(scope="module")
def functions() -> Iterator[dict[str, FlaskClient]]:
    """The five functions as functions-framework builds them (see test_functions)."""
    import sys

    with pytest.MonkeyPatch.context() as patch:
        for name in ("FUNCTION_TARGET", "FUNCTION_SIGNATURE_TYPE", "FUNCTION_SOURCE"):
            patch.delenv(name, raising=False)
        patch.setattr(sys, "path", list(sys.path))
        patch.delitem(sys.modules, "main", raising=False)
        yield {
            name: create_app(name, str(FUNCTIONS_SOURCE), signature).test_client()  # type: ignore[no-untyped-call]
            for name, signature in SIGNATURES.items()
        }


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    app = WebhookReceiver(WEBHOOK_SECRET)
    url, stop = start_in_thread(app)
    try:
        yield app, url
    finally:
        stop()


def deliver_pulled(client: FlaskClient, cloud: Cloud, role: str, pulled: Mapping[str, Any]) -> int:
    """Push a message pulled from `role`'s topic to its function, as Pub/Sub would."""
    fields = {k: pulled[k] for k in ("data", "attributes", "messageId", "publishTime")}
    fields.update(message_id=pulled["messageId"], publish_time=pulled["publishTime"])
    return push(client, cloud, "pubsub_push_collect.json", cloud.topic(role), fields)


def start_job(fn: dict[str, FlaskClient], cloud: Cloud, notify_url: str) -> str:
    resource = cloud.upload(unique("hooks/in.jsonl"), jsonl(3), metadata={"notify_url": notify_url})
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    assert deliver_storage_event_to(fn, storage_event(resource)) == 200
    return job_id


def deliver_storage_event_to(fn: dict[str, FlaskClient], event: Mapping[str, Any]) -> int:
    """POST in binary content mode, as Eventarc does (see test_functions)."""
    reply = fn["submit"].post("/", headers=event["headers"], data=json.dumps(event["data"]))
    return reply.status_code


def to_collecting(fn: dict[str, FlaskClient], cloud: Cloud, job_id: str) -> dict[str, Any]:
    """A poll tick and the job messages it fans out (delivered from the poll topic) until
    the job is collecting; then the collect message poll published and the chunk messages
    it fans out but the last: returns that one, whose delivery ends the job."""
    cloud.wait_batches_ended(job_id)
    assert push(fn["poll"], cloud, "pubsub_push_poll.json", cloud.topic("poll")) == 200
    for message in cloud.pull("poll", settle=0.2):
        assert deliver_pulled(fn["poll"], cloud, "poll", message) == 200
    job = cloud.job(job_id)
    assert job is not None and job.state is JobState.COLLECTING, job
    [requested] = [m for m in cloud.pull("collect") if m["json"]["job_id"] == job_id]
    assert deliver_pulled(fn["collect"], cloud, "collect", requested) == 200  # fans out
    *chunks, last = cloud.pull("collect")
    for message in chunks:
        assert deliver_pulled(fn["collect"], cloud, "collect", message) == 200
    assert "chunk" in last["json"], last
    return last


def ended(cloud: Cloud, job_id: str) -> Job:
    job = cloud.job(job_id)
    assert job is not None and job.state.terminal, job
    return job


def verify_independently(delivery: Mapping[str, Any]) -> Any:
    """The receiver checked it with the openai SDK; check it with standardwebhooks too."""
    return standardwebhooks.Webhook(WEBHOOK_SECRET).verify(delivery["body"], delivery["headers"])


# --------------------------------------------------------------------------- outbound


def test_a_job_with_notify_url_posts_its_signed_job_completed_event(
    functions: dict[str, FlaskClient], cloud: Cloud, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, url = receiver
    job_id = start_job(functions, cloud, f"{url}/hooks/batchline?team=a")
    requested = to_collecting(functions, cloud, job_id)
    assert deliver_pulled(functions["collect"], cloud, "collect", requested) == 200
    job = ended(cloud, job_id)
    assert job.state is JobState.SUCCEEDED and not job.notify_pending
    [message] = cloud.pull("notify")
    assert message["attributes"] == {"type": "job.completed", "job_id": job_id}
    assert app.deliveries() == []  # published, not yet delivered

    assert deliver_pulled(functions["notify"], cloud, "notify", message) == 200
    [delivery] = app.deliveries()
    assert delivery["verified"] is True and delivery["path"] == "/hooks/batchline?team=a"
    event = verify_independently(delivery)
    assert delivery["headers"]["webhook-id"] == completed_webhook_id(job_id)
    assert event["type"] == "job.completed"
    assert event["data"]["job_id"] == job_id and event["data"]["state"] == "succeeded"
    assert event["data"]["counts"]["succeeded"] == 3
    assert event["data"]["summary_uri"] == job.summary_uri
    done = ended(cloud, job_id)
    assert done.notify["attempts"] == 1 and done.notify["delivered_at"]
    assert done.notify["last_status"] == 200


def test_a_receiver_answering_500_gets_the_same_webhook_id_on_the_redelivery(
    functions: dict[str, FlaskClient], cloud: Cloud, receiver: tuple[WebhookReceiver, str]
) -> None:
    app, url = receiver
    app.script([500])
    job_id = start_job(functions, cloud, f"{url}/hook")
    assert (
        deliver_pulled(
            functions["collect"], cloud, "collect", to_collecting(functions, cloud, job_id)
        )
        == 200
    )
    [message] = cloud.pull("notify")
    assert deliver_pulled(functions["notify"], cloud, "notify", message) == 500  # retry, please
    failed = ended(cloud, job_id)
    assert failed.notify["attempts"] == 1 and failed.notify["last_status"] == 500
    assert "delivered_at" not in failed.notify
    assert deliver_pulled(functions["notify"], cloud, "notify", message) == 200
    first, second = app.deliveries()
    assert (first["status"], second["status"]) == (500, 200)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]
    assert verify_independently(first) == verify_independently(second)
    done = ended(cloud, job_id)
    assert done.notify["attempts"] == 2 and done.notify["delivered_at"]


def test_an_unreachable_receiver_is_retried(
    functions: dict[str, FlaskClient], cloud: Cloud, receiver: tuple[WebhookReceiver, str]
) -> None:
    _, url = receiver
    closed = url.rsplit(":", 1)[0] + ":1"  # nothing listens on port 1
    job_id = start_job(functions, cloud, f"{closed}/hook")
    assert (
        deliver_pulled(
            functions["collect"], cloud, "collect", to_collecting(functions, cloud, job_id)
        )
        == 200
    )
    [message] = cloud.pull("notify")
    assert deliver_pulled(functions["notify"], cloud, "notify", message) == 500
    job = ended(cloud, job_id)
    assert job.notify["attempts"] == 1 and "Connection" in job.notify["last_error"]


def topic_url(cloud: Cloud, role: str) -> str:
    return f"http://{cloud.pubsub_host}/v1/projects/{cloud.project}/topics/{cloud.topic(role)}"


def break_notify_topic(cloud: Cloud) -> None:
    """The publish to notify fails from now on (the process 'dies' right after the end)."""
    requests.delete(topic_url(cloud, "notify"), timeout=10).raise_for_status()


def mend_notify_topic(cloud: Cloud) -> None:
    create_topic(cloud.pubsub_host, cloud.project, cloud.topic("notify"))
    subscribe(cloud, "notify")


def test_crash_gap_the_end_is_written_the_publish_fails_the_collect_redelivery_publishes(
    functions: dict[str, FlaskClient], cloud: Cloud, receiver: tuple[WebhookReceiver, str]
) -> None:
    _, url = receiver
    job_id = start_job(functions, cloud, f"{url}/hook")
    requested = to_collecting(functions, cloud, job_id)
    break_notify_topic(cloud)
    try:
        assert deliver_pulled(functions["collect"], cloud, "collect", requested) == 500
        gap = ended(cloud, job_id)
        assert gap.state is JobState.SUCCEEDED and gap.notify_pending  # ended, not announced
    finally:
        mend_notify_topic(cloud)
    assert deliver_pulled(functions["collect"], cloud, "collect", requested) == 200  # redelivery
    [message] = cloud.pull("notify")
    assert message["json"]["job_id"] == job_id
    assert not ended(cloud, job_id).notify_pending


def test_crash_gap_with_nothing_to_redeliver_a_poll_tick_publishes_it(
    functions: dict[str, FlaskClient], cloud: Cloud, receiver: tuple[WebhookReceiver, str]
) -> None:
    _, url = receiver
    job_id = start_job(functions, cloud, f"{url}/hook")
    requested = to_collecting(functions, cloud, job_id)
    break_notify_topic(cloud)
    try:
        assert deliver_pulled(functions["collect"], cloud, "collect", requested) == 500
    finally:
        mend_notify_topic(cloud)
    # The collect message is lost; the job ended a while ago, as a later tick sees it.
    cloud.store.update_job(job_id, lambda j: replace(j, ended_at=(j.ended_at or 0) - 3600))
    assert push(functions["poll"], cloud, "pubsub_push_poll.json", cloud.topic("poll")) == 200
    [message] = cloud.pull("notify")
    assert message["json"]["webhook_id"] == completed_webhook_id(job_id)
    assert not ended(cloud, job_id).notify_pending
    assert push(functions["poll"], cloud, "pubsub_push_poll.json", cloud.topic("poll")) == 200
    assert cloud.pull("notify", settle=0.5) == []


def test_a_notify_message_that_is_not_a_delivery_is_acknowledged(
    functions: dict[str, FlaskClient], cloud: Cloud
) -> None:
    data = base64.b64encode(b'{"job_id": "job-x"}').decode()
    assert (
        push(
            functions["notify"],
            cloud,
            "pubsub_push_collect.json",
            cloud.topic("notify"),
            {"data": data},
        )
        == 200
    )


def test_the_api_refuses_a_notify_url_into_the_private_network(
    functions: dict[str, FlaskClient], cloud: Cloud
) -> None:
    reply = functions["api"].post(
        "/v1/jobs",
        json={
            "requests": [{"model": "openai/gpt-4.1-mini", "messages": []}],
            "options": {"notify_url": "https://169.254.169.254/latest"},
        },
    )
    assert reply.status_code == 400
    assert reply.get_json()["error"]["field"] == "options.notify_url"


# ---------------------------------------------------------------------------- inbound


def openai_event(batch_id: str, event_type: str = "batch.completed") -> bytes:
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "created_at": int(time.time()),
            "type": event_type,
            "data": {"id": batch_id},
        }
    ).encode()


def signed_by_openai(body: bytes, webhook_id: str | None = None, age: float = 0) -> dict[str, str]:
    """Headers as OpenAI sends them, signed by standardwebhooks (not batchline's signer)."""
    webhook_id = webhook_id or f"wh_{uuid.uuid4().hex}"
    at = datetime.now(UTC) - timedelta(seconds=age)
    signature = standardwebhooks.Webhook(OPENAI_SECRET).sign(webhook_id, at, body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def post_event(
    fn: dict[str, FlaskClient], body: bytes, headers: Mapping[str, str]
) -> tuple[int, Any]:
    reply = fn["api"].post("/v1/webhooks/openai", data=body, headers=dict(headers))
    return reply.status_code, reply.get_json()


def running_batch(fn: dict[str, FlaskClient], cloud: Cloud) -> tuple[str, str]:
    """A job whose batches have ended at the emulator, the job still running: (job, batch)."""
    cloud.openai.admin({"hold_after_lines": None})
    resource = cloud.upload(unique("inbound/in.jsonl"), jsonl(1))
    job_id = job_id_for_object(cloud.input_bucket, resource["name"], resource["generation"])
    assert deliver_storage_event_to(fn, storage_event(resource)) == 200
    [batch] = cloud.wait_batches_ended(job_id)
    job = cloud.job(job_id)
    assert job is not None and job.state is JobState.RUNNING
    return job_id, str(batch["id"])


def test_a_signed_batch_event_advances_its_job_without_waiting_for_a_tick(
    functions: dict[str, FlaskClient], cloud: Cloud
) -> None:
    job_id, batch_id = running_batch(functions, cloud)
    cloud.pull("poll", settle=0.3)  # what submit asked for, if anything
    body = openai_event(batch_id)
    status, answer = post_event(functions, body, signed_by_openai(body))
    assert (status, answer["outcome"]) == (200, "poll requested")
    [asked] = cloud.pull("poll")
    assert asked["json"] == {"job_id": job_id, "source": "openai-webhook"}
    assert deliver_pulled(functions["poll"], cloud, "poll", asked) == 200
    job = cloud.job(job_id)
    assert job is not None and job.state is JobState.COLLECTING


def test_a_tampered_body_is_400_and_causes_no_work(
    functions: dict[str, FlaskClient], cloud: Cloud
) -> None:
    _, batch_id = running_batch(functions, cloud)
    cloud.pull("poll", settle=0.3)
    body = openai_event(batch_id)
    headers = signed_by_openai(body)
    status, answer = post_event(
        functions, body.replace(b"batch.completed", b"batch.failed"), headers
    )
    assert status == 400
    assert answer["error"]["type"] == "invalid_signature"
    assert answer["error"]["field"] == "webhook-signature"
    status, _ = post_event(functions, body, {**headers, "webhook-signature": "v1,AAAA"})
    assert status == 400
    no_signature = {k: v for k, v in headers.items() if k != "webhook-signature"}
    assert post_event(functions, body, no_signature)[0] == 400
    assert cloud.pull("poll", settle=0.5) == []


def test_a_replayed_event_is_acknowledged_and_ignored(
    functions: dict[str, FlaskClient], cloud: Cloud
) -> None:
    _, batch_id = running_batch(functions, cloud)
    cloud.pull("poll", settle=0.3)
    body = openai_event(batch_id)
    headers = signed_by_openai(body, webhook_id="wh_replayed")
    assert post_event(functions, body, headers)[1]["outcome"] == "poll requested"
    assert len(cloud.pull("poll")) == 1
    # The same delivery again, and OpenAI's retry of it (same id, signed anew).
    assert post_event(functions, body, headers) == (
        200,
        {"received": True, "outcome": "ignored: seen before"},
    )
    again = signed_by_openai(body, webhook_id="wh_replayed")
    assert post_event(functions, body, again)[1]["outcome"] == "ignored: seen before"
    # Correctly signed but ten minutes old: outside the SDK's tolerance.
    stale = signed_by_openai(body, webhook_id="wh_stale", age=600)
    status, answer = post_event(functions, body, stale)
    assert status == 200 and answer["outcome"].startswith("ignored: outside")
    assert cloud.pull("poll", settle=0.5) == []


def test_an_unknown_batch_or_another_event_type_is_acknowledged(
    functions: dict[str, FlaskClient], cloud: Cloud
) -> None:
    body = openai_event("batch_nobody_knows")
    assert post_event(functions, body, signed_by_openai(body)) == (
        200,
        {"received": True, "outcome": "ignored: unknown batch"},
    )
    other = openai_event("resp_1", "response.completed")
    assert (
        post_event(functions, other, signed_by_openai(other))[1]["outcome"]
        == "ignored: not a batch event"
    )
    assert cloud.pull("poll", settle=0.5) == []


def test_the_route_takes_post_only(functions: dict[str, FlaskClient]) -> None:
    reply = functions["api"].get("/v1/webhooks/openai")
    assert reply.status_code == 405 and reply.headers["Allow"] == "POST"
