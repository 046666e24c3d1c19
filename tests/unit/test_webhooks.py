"""Webhooks on in-memory ports: the signature (checked by two implementations that are not
ours), notify_url validation, the job's end setting `notify_pending`, publish and
delivery with their retries, the crash gap, and inbound OpenAI batch events."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest
import standardwebhooks
from openai import InvalidWebhookSignatureError, OpenAI

from batchline.bootstrap import Deps
from batchline.domain import options
from batchline.domain.models import Chunk, ChunkState, Job, JobOptions, JobState, Source
from batchline.domain.webhooks import (
    WebhookRefused,
    WebhookSecretError,
    completed_event,
    completed_webhook_id,
    make_secret,
    notify_url_problem,
    secret_key,
    signature,
    signed_headers,
)
from batchline.errors import RetryableError
from batchline.services import notify, openai_webhooks
from batchline.services.collect import collect
from batchline.services.poll import poll
from batchline_tools.memory import RecordingPublisher

from .fakes import FakeClock, make_deps
from .test_pipeline import line, upload

SECRET = make_secret(bytes(range(32)))
NOTIFY_TOPIC = "batchline-notify"
URL = "https://hooks.example.com/batchline?x=1"


# ------------------------------------------------------------------------- signatures


def signed(body: bytes, webhook_id: str = "msg_1", at: int | None = None) -> dict[str, str]:
    return signed_headers(SECRET, webhook_id, int(time.time()) if at is None else at, body)


def test_a_signed_body_verifies_with_standardwebhooks_and_with_the_openai_sdk() -> None:
    body = orjson.dumps({"type": "job.completed", "data": {"job_id": "job-1"}})
    headers = signed(body)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == orjson.loads(body)
    OpenAI(api_key="unused").webhooks.verify_signature(body, headers, secret=SECRET)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, headers: (body + b" ", headers),
        lambda body, headers: (body.replace(b"job-1", b"job-2"), headers),
        lambda body, headers: (body, {**headers, "webhook-id": "msg_2"}),
        lambda body, headers: (
            body,
            {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)},
        ),
    ],
    ids=["body-appended", "body-changed", "id-changed", "timestamp-changed"],
)
def test_a_tampered_body_id_or_timestamp_is_refused_by_both(tamper: Any) -> None:
    body = orjson.dumps({"type": "job.completed", "data": {"job_id": "job-1"}})
    body, headers = tamper(body, signed(body))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, headers)
    with pytest.raises(InvalidWebhookSignatureError):
        OpenAI(api_key="unused").webhooks.verify_signature(body, headers, secret=SECRET)


def test_another_secret_or_a_stale_timestamp_is_refused() -> None:
    body = b'{"type":"job.completed"}'
    other = make_secret(b"\x01" * 32)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(body, signed(body))
    stale = signed(body, at=int(time.time()) - 3600)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, stale)


def test_the_signature_is_the_spec_s_known_answer() -> None:
    # The example of the Standard Webhooks specification (its reference test vector).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert (
        signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize(
    "bad", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_AAAA"]
)
def test_a_malformed_secret_is_refused(bad: str) -> None:
    with pytest.raises(WebhookSecretError):
        secret_key(bad)


# ------------------------------------------------------------------------- notify_url


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",
        "https://hooks.example.com:8443/a/b?c=d",
        "https://8.8.8.8/hook",
        "https://[2001:4860:4860::8888]/hook",
    ],
)
def test_public_https_urls_are_taken(url: str) -> None:
    assert notify_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "https"),
        ("ftp://hooks.example.com/x", "https"),
        ("https:///x", "no host"),
        ("https://user:pw@hooks.example.com/x", "user info"),
        ("https://user@hooks.example.com/x", "user info"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://hooks.example.com/" + "a" * 2048, "longer than"),
        ("https://hooks.example.com/a b", "spaces"),
        ("https://127.0.0.1/x", "not public"),
        ("https://10.1.2.3/x", "not public"),
        ("https://172.16.0.1/x", "not public"),
        ("https://192.168.1.1/x", "not public"),
        ("https://169.254.169.254/computeMetadata/v1/", "not public"),
        ("https://[::1]/x", "not public"),
        ("https://[fe80::1]/x", "not public"),
        ("https://[fd00::1]/x", "not public"),
        ("https://[::ffff:10.0.0.1]/x", "not public"),
        ("https://0.0.0.0/x", "not public"),
        ("https://2130706433/x", "not public"),  # 127.0.0.1 as one number
        ("https://0x7f.1/x", "not public"),
        ("https://127.1/x", "not public"),
        ("https://localhost/x", "internal"),
        ("https://metadata.google.internal/x", "internal"),
        ("https://svc.internal/x", "internal"),
        ("http://127.0.0.1:8080/hook", "https"),
    ],
)
def test_unsafe_or_malformed_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    problem = notify_url_problem(url)
    assert problem is not None and reason in problem, problem


def test_insecure_local_takes_http_on_this_machine_only_when_allowed() -> None:
    local = "http://127.0.0.1:8080/hook"
    assert notify_url_problem(local) is not None
    assert notify_url_problem(local, allow_insecure_local=True) is None
    assert notify_url_problem("http://localhost:9/x", allow_insecure_local=True) is None
    # Still no private network, and still no plain http elsewhere.
    assert notify_url_problem("http://10.0.0.1/x", allow_insecure_local=True) is not None
    assert notify_url_problem("http://hooks.example.com/x", allow_insecure_local=True) is not None


def test_options_name_notify_url_in_the_api_and_in_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL", raising=False)
    assert options.from_api({"notify_url": URL}).notify_url == URL
    assert options.from_metadata({"notify_url": URL}).notify_url == URL
    for bad in ("http://hooks.example.com/x", 42, "https://10.0.0.1/"):
        with pytest.raises(options.OptionError) as caught:
            options.from_api({"notify_url": bad})
        assert caught.value.option == "notify_url"
    with pytest.raises(options.OptionError) as caught:
        options.from_metadata({"notify_url": "https://169.254.169.254/"})
    assert caught.value.option == "notify_url"
    monkeypatch.setenv("BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL", "1")
    assert options.from_api({"notify_url": "http://127.0.0.1:1/h"}).notify_url


# ---------------------------------------------------------------------- job's end


def a_job(notify_url: str | None = URL, state: JobState = JobState.COLLECTING) -> Job:
    return Job(
        job_id="job-" + "a" * 24,
        source=Source("in", "x.jsonl", "1", 10),
        options=JobOptions(notify_url=notify_url, labels={"team": "a"}),
        output_prefix="gs://out/x/job-aaaaaaaaaaaaaaaaaaaaaaaa/",
        state=state,
        created_at=100.0,
    )


@pytest.mark.parametrize(
    "end", [JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELED]
)
def test_every_end_of_a_job_with_notify_url_leaves_its_webhook_pending(end: JobState) -> None:
    assert a_job().to(end, 200.0).notify_pending
    assert not a_job(notify_url=None).to(end, 200.0).notify_pending
    assert not a_job().to(JobState.RUNNING, 200.0).notify_pending


def test_the_event_is_built_from_the_ended_record_and_its_id_from_the_job() -> None:
    job = a_job().to(
        JobState.PARTIAL, 200.0, counts={"succeeded": 2, "failed": 1}, cost_usd=0.25, ended_at=200.0
    )
    event = completed_event(job)
    assert event["type"] == "job.completed"
    assert event["timestamp"] == "1970-01-01T00:03:20Z"
    assert event["data"]["state"] == "partial"
    assert event["data"]["counts"] == {"succeeded": 2, "failed": 1}
    assert event["data"]["cost_usd"] == 0.25
    assert event["data"]["summary_uri"].endswith("/summary.json")
    assert event["data"]["labels"] == {"team": "a"}
    assert completed_event(job) == event
    assert completed_webhook_id(job.job_id) == f"msg_{job.job_id}_completed"


# ---------------------------------------------------------------- publish and deliver


class FailingPublisher(RecordingPublisher):
    """Fails every publish to `topic` while `down` (the process dies before publishing)."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self.topic = topic
        self.down = True

    def publish(self, topic: str, message: dict[str, Any], **attributes: str) -> None:
        if topic == self.topic and self.down:
            raise RetryableError("publish failed")
        super().publish(topic, message, **attributes)


def run_job(deps: Deps, provider: Any, url: str | None = URL) -> str:
    from batchline.services.submit import handle_object_finalized

    metadata = {"notify_url": url} if url else {}
    job = handle_object_finalized(
        deps, upload(deps, line(custom_id="a") + b"\n", metadata=metadata)
    )
    assert job is not None
    provider.end()
    poll(deps)
    return job.job_id


def collect_all(deps: Deps) -> None:
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    for message in publisher.on("batchline-collect"):
        collect(deps, message["job_id"])


def test_a_job_that_ends_publishes_its_webhook_once_and_clears_the_flag() -> None:
    deps, provider, _ = make_deps()
    job_id = run_job(deps, provider)
    collect_all(deps)
    collect_all(deps)  # a redelivered collect
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    [message] = publisher.on(NOTIFY_TOPIC)
    assert message["url"] == URL and message["webhook_id"] == completed_webhook_id(job_id)
    assert message["event"]["data"]["state"] == "succeeded"
    job = deps.store.get_job(job_id)
    assert job is not None and not job.notify_pending and job.notify["published_at"]


def test_a_job_without_notify_url_publishes_no_webhook() -> None:
    deps, provider, _ = make_deps()
    run_job(deps, provider, url=None)
    collect_all(deps)
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    assert publisher.on(NOTIFY_TOPIC) == [] and publisher.on("batchline-events")


def test_the_crash_gap_a_redelivered_collect_publishes_the_webhook() -> None:
    deps, provider, _ = make_deps()
    failing = FailingPublisher(NOTIFY_TOPIC)
    deps.publisher = failing
    job_id = run_job(deps, provider)
    # The job's end is written, then the publish fails (the process dies there).
    with pytest.raises(RetryableError):
        collect_all(deps)
    ended = deps.store.get_job(job_id)
    assert ended is not None and ended.state is JobState.SUCCEEDED and ended.notify_pending
    assert failing.on(NOTIFY_TOPIC) == []
    failing.down = False
    collect_all(deps)  # Pub/Sub redelivers the collect message
    assert [m["job_id"] for m in failing.on(NOTIFY_TOPIC)] == [job_id]
    job = deps.store.get_job(job_id)
    assert job is not None and not job.notify_pending


def test_the_crash_gap_nothing_redelivers_a_poll_tick_publishes_it_after_the_grace() -> None:
    deps, provider, clock = make_deps()
    failing = FailingPublisher(NOTIFY_TOPIC)
    deps.publisher = failing
    job_id = run_job(deps, provider)
    with pytest.raises(RetryableError):
        collect_all(deps)
    failing.down = False
    failing.messages.clear()
    poll(deps)  # too soon: the collect that ended it may still be publishing
    assert failing.on(NOTIFY_TOPIC) == []
    clock.advance(notify.SWEEP_GRACE_SECONDS + 1)
    poll(deps)
    poll(deps)
    assert [m["job_id"] for m in failing.on(NOTIFY_TOPIC)] == [job_id]


class FakeSender:
    """Answers with the statuses given, in turn; records what it was sent."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        assert timeout <= 10
        self.sent.append((url, body, headers))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def delivery_of(deps: Deps, job_id: str) -> notify.Delivery:
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    delivery = notify.Delivery.from_message(publisher.on(NOTIFY_TOPIC)[-1])
    assert delivery is not None
    return delivery


def ended_job_deps() -> tuple[Deps, FakeClock, str]:
    deps, provider, clock = make_deps()
    deps.settings = replace(deps.settings, webhook_secret=SECRET)
    job_id = run_job(deps, provider)
    collect_all(deps)
    return deps, clock, job_id


def test_delivery_retries_through_the_trigger_with_the_same_id_and_body() -> None:
    deps, clock, job_id = ended_job_deps()
    delivery = delivery_of(deps, job_id)
    sender = FakeSender(500, RetryableError("connection refused"), 204)
    with pytest.raises(RetryableError, match="500"):
        notify.deliver(deps, delivery, sender)
    clock.advance(30)
    with pytest.raises(RetryableError, match="connection refused"):
        notify.deliver(deps, delivery, sender)
    clock.advance(60)
    notify.deliver(deps, delivery, sender)
    ids = {headers["webhook-id"] for _, _, headers in sender.sent}
    assert ids == {completed_webhook_id(job_id)}
    assert len({body for _, body, _ in sender.sent}) == 1
    stamps = [int(headers["webhook-timestamp"]) for _, _, headers in sender.sent]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1]  # each attempt signed anew
    for _, body, headers in sender.sent:
        assert (
            signature(SECRET, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
            == headers["webhook-signature"]
        )
    job = deps.store.get_job(job_id)
    assert job is not None
    assert job.notify["attempts"] == 3 and job.notify["last_status"] == 204
    assert job.notify["delivered_at"] == clock.now()


def test_a_refused_address_is_recorded_and_acknowledged_not_retried() -> None:
    deps, _, job_id = ended_job_deps()
    notify.deliver(deps, delivery_of(deps, job_id), FakeSender(WebhookRefused("10.0.0.1")))
    job = deps.store.get_job(job_id)
    assert (
        job is not None
        and "10.0.0.1" in job.notify["last_error"]
        and "delivered_at" not in job.notify
    )


def test_without_a_secret_nothing_is_sent_and_the_delivery_is_retried() -> None:
    deps, _, job_id = ended_job_deps()
    deps.settings = replace(deps.settings, webhook_secret=None)
    sender = FakeSender(200)
    with pytest.raises(RetryableError, match="BATCHLINE_WEBHOOK_SECRET"):
        notify.deliver(deps, delivery_of(deps, job_id), sender)
    assert sender.sent == []


@pytest.mark.parametrize("message", [None, {}, {"job_id": "j", "url": URL, "webhook_id": "w"}, "x"])
def test_a_message_that_is_not_a_delivery_is_none(message: Any) -> None:
    assert notify.Delivery.from_message(message) is None


# ------------------------------------------------------------------ inbound OpenAI


def running_job(deps: Deps) -> tuple[str, str]:
    job = replace(a_job(notify_url=None, state=JobState.RUNNING))
    deps.store.create_job(job)
    chunk = Chunk(
        job_id=job.job_id,
        index=0,
        provider="openai",
        model="gpt-4o-mini",
        request_count=1,
        payload_bytes=10,
        payload_uri="gs://work/p",
        manifest_uri="gs://work/m",
        state=ChunkState.RUNNING,
        batch_id="batch_abc",
    )
    deps.store.update_job(job.job_id, lambda j: j, new_chunks=[chunk])
    return job.job_id, "batch_abc"


def polls(deps: Deps) -> list[dict[str, Any]]:
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    return publisher.on(deps.settings.poll_topic)


def test_a_batch_event_asks_for_a_poll_of_its_job_once_per_webhook_id() -> None:
    deps, _, _ = make_deps()
    job_id, batch_id = running_job(deps)
    handle = openai_webhooks.handle_batch_event
    assert handle(deps, "wh_1", "batch.completed", batch_id) == "poll requested"
    assert handle(deps, "wh_1", "batch.completed", batch_id) == "ignored: seen before"
    assert polls(deps) == [{"job_id": job_id, "source": "openai-webhook"}]
    assert handle(deps, "wh_2", "batch.failed", batch_id) == "poll requested"
    assert len(polls(deps)) == 2


@pytest.mark.parametrize(
    ("event_type", "batch", "outcome"),
    [
        ("batch.completed", "batch_unknown", "ignored: unknown batch"),
        ("response.completed", "batch_abc", "ignored: not a batch event"),
        ("batch.completed", None, "ignored: not a batch event"),
    ],
)
def test_other_events_and_unknown_batches_cause_no_work(
    event_type: str, batch: str | None, outcome: str
) -> None:
    deps, _, _ = make_deps()
    running_job(deps)
    assert openai_webhooks.handle_batch_event(deps, "wh_1", event_type, batch) == outcome
    assert polls(deps) == []


def test_a_failed_poll_publish_forgets_the_id_so_that_openai_s_retry_acts() -> None:
    deps, _, _ = make_deps()
    job_id, batch_id = running_job(deps)
    failing = FailingPublisher(deps.settings.poll_topic)
    deps.publisher = failing
    with pytest.raises(RetryableError):
        openai_webhooks.handle_batch_event(deps, "wh_1", "batch.completed", batch_id)
    failing.down = False
    assert (
        openai_webhooks.handle_batch_event(deps, "wh_1", "batch.completed", batch_id)
        == "poll requested"
    )
    assert [m["job_id"] for m in failing.on(deps.settings.poll_topic)] == [job_id]


def test_a_secret_is_whsec_and_base64() -> None:
    assert SECRET.startswith("whsec_") and base64.b64decode(SECRET[6:]) == bytes(range(32))


def test_the_cli_passes_notify_url_as_the_job_option_the_pipeline_reads() -> None:
    from batchline_tools import cli

    args = cli._parser().parse_args(["submit", "in.jsonl", "--notify-url", URL])
    metadata = cli._job_options(args)
    assert metadata == {"notify_url": URL}
    assert options.from_metadata(metadata).notify_url == URL
