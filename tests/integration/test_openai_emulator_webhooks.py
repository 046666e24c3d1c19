"""The OpenAI emulator's webhooks: a batch that ends sends OpenAI's `batch.*` event,
signed so that the official SDK's `webhooks.unwrap` takes it; a receiver that answers
non-2xx gets the same event again under the same `webhook-id`.

The emulator's clock is a ManualClock: a batch ends when the test moves the clock, and
its event goes out from the emulator's webhook thread (nobody asks for the batch)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai import InvalidWebhookSignatureError, OpenAI

from batchline.domain.webhooks import make_secret
from batchline_emulators._wsgi import start_in_thread
from batchline_emulators.openai import EmulatorConfig, make_app
from batchline_tools.local.receiver import WebhookReceiver

from .conftest import WAIT_SECONDS, ManualClock
from .test_openai_emulator import chat_line, upload

pytestmark = pytest.mark.integration

SECRET = make_secret(b"openai-emulator-webhook-secret!!")


class Rig:
    """An emulator on a manual clock, sending its webhooks to a receiver."""

    def __init__(self, **config: Any) -> None:
        self.receiver = WebhookReceiver(SECRET)
        self.receiver_url, self._stop_receiver = start_in_thread(self.receiver)
        self.clock = ManualClock()
        base = {
            "validating_seconds": 1.0,
            "lines_per_second": 10.0,
            "finalizing_seconds": 1.0,
            "cancel_seconds": 1.0,
            "webhook_url": f"{self.receiver_url}/hooks/openai",
            "webhook_secret": SECRET,
            "webhook_retry_seconds": 0.05,
        }
        self.app = make_app(EmulatorConfig().merged({**base, **config}), clock=self.clock)
        root, self._stop_emulator = start_in_thread(self.app)
        self.client = OpenAI(api_key="k", base_url=f"{root}/v1", max_retries=0, timeout=10.0)

    def batch(self, lines: list[Any] | None = None) -> Any:
        lines = lines or [chat_line(f"r{i}", f"q{i}") for i in range(3)]
        file_id = upload(self.client, lines)
        return self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    def wait_deliveries(self, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            got = self.receiver.deliveries()
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, f"{len(got)} of {count} webhooks came: {got}"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop_emulator()
        self._stop_receiver()


@pytest.fixture
def rig() -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**config: Any) -> Rig:
        made.append(Rig(**config))
        return made[-1]

    yield make
    for one in made:
        one.stop()


def unwrap(delivery: dict[str, Any], secret: str = SECRET) -> Any:
    return OpenAI(api_key="unused").webhooks.unwrap(
        delivery["body"], delivery["headers"], secret=secret
    )


def test_a_completed_batch_sends_a_batch_completed_event_the_sdk_unwraps(
    rig: Callable[..., Rig],
) -> None:
    r = rig()
    batch = r.batch()
    time.sleep(0.2)  # the webhook thread runs, and the batch has not ended: nothing sent
    assert r.receiver.deliveries() == []
    r.clock.now += 10  # validated, 3 lines at 10/s, finalized: completed
    [delivery] = r.wait_deliveries(1)
    event = unwrap(delivery)
    assert type(event).__name__ == "BatchCompletedWebhookEvent"
    assert event.type == "batch.completed" and event.data.id == batch.id
    assert event.id.startswith("evt_") and event.object == "event"
    done = r.client.batches.retrieve(batch.id)
    assert done.status == "completed" and event.created_at == done.completed_at
    assert delivery["path"] == "/hooks/openai" and delivery["verified"] is True
    assert r.app.outbox.deliveries()[0]["delivered"] is True


@pytest.mark.parametrize(
    ("kind", "event_type", "sdk_type"),
    [
        ("failed", "batch.failed", "BatchFailedWebhookEvent"),
        ("cancelled", "batch.cancelled", "BatchCancelledWebhookEvent"),
        ("expired", "batch.expired", "BatchExpiredWebhookEvent"),
    ],
)
def test_failed_cancelled_and_expired_batches_send_their_events(
    rig: Callable[..., Rig], kind: str, event_type: str, sdk_type: str
) -> None:
    r = rig(expire_after_seconds=5.0 if kind == "expired" else None, hold_after_lines=1)
    if kind == "failed":
        batch = r.batch([chat_line("a", "q"), chat_line("a", "duplicate id")])
    else:
        batch = r.batch()
    if kind == "cancelled":
        r.clock.now += 1.5  # in progress, held
        r.client.batches.cancel(batch.id)
    r.clock.now += 10
    [delivery] = r.wait_deliveries(1)
    event = unwrap(delivery)
    assert (type(event).__name__, event.type, event.data.id) == (sdk_type, event_type, batch.id)
    assert r.client.batches.retrieve(batch.id).status == kind


def test_a_batch_expired_on_demand_sends_batch_expired_at_once(rig: Callable[..., Rig]) -> None:
    r = rig(hold_after_lines=1)
    batch = r.batch()
    r.clock.now += 1.5  # validated, one line answered, held
    with r.app.lock:  # as POST /_emulator/expire calls it; the clock stays put
        assert r.app.expire(batch.id, r.clock.now) == [batch.id]
    [delivery] = r.wait_deliveries(1)
    event = unwrap(delivery)
    assert (event.type, event.data.id) == ("batch.expired", batch.id)
    expired = r.client.batches.retrieve(batch.id)
    assert expired.status == "expired" and event.created_at == expired.expired_at


def test_a_non_2xx_answer_is_retried_with_the_same_webhook_id(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.receiver.script([500, 503])
    r.batch()
    r.clock.now += 10
    deliveries = r.wait_deliveries(3)
    assert [d["status"] for d in deliveries] == [500, 503, 200]
    assert len({d["headers"]["webhook-id"] for d in deliveries}) == 1
    assert len({d["body"] for d in deliveries}) == 1
    assert all(d["verified"] for d in deliveries)
    time.sleep(0.3)  # delivered: nothing more comes
    assert len(r.receiver.deliveries()) == 3
    [record] = r.app.outbox.deliveries()
    assert [a["status"] for a in record["attempts"]] == [500, 503, 200] and record["delivered"]


def test_the_signature_is_refused_with_another_secret_or_a_changed_body(
    rig: Callable[..., Rig],
) -> None:
    r = rig()
    r.batch()
    r.clock.now += 10
    [delivery] = r.wait_deliveries(1)
    with pytest.raises(InvalidWebhookSignatureError):
        unwrap(delivery, secret=make_secret(b"another secret of thirty-two b.."))
    tampered = {**delivery, "body": delivery["body"].replace("batch.completed", "batch.failed")}
    with pytest.raises(InvalidWebhookSignatureError):
        unwrap(tampered)


def test_without_a_webhook_url_nothing_is_sent_and_bad_config_is_refused(
    rig: Callable[..., Rig],
) -> None:
    r = rig(webhook_url=None)
    r.batch()
    r.clock.now += 10
    assert r.client.batches.list().data[0].status == "completed"
    time.sleep(0.2)
    assert r.receiver.deliveries() == [] and r.app.outbox.deliveries() == []
    with pytest.raises(ValueError, match="webhook_secret"):
        EmulatorConfig().merged({"webhook_url": "http://127.0.0.1:1/", "webhook_secret": None})
    with pytest.raises(ValueError, match="webhook_secret"):
        EmulatorConfig().merged({"webhook_url": "http://x/", "webhook_secret": "plain"})
    with pytest.raises(ValueError, match="string"):
        EmulatorConfig().merged({"webhook_url": 5})
