"""PubSubPublisher against Google's Pub/Sub emulator, read back with the official client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from google.cloud import pubsub_v1

from batchline.adapters.pubsub import PubSubPublisher
from batchline.errors import RetryableError
from batchline_tools.local.stack import create_subscription, create_topic

pytestmark = pytest.mark.integration


@dataclass
class Topic:
    project: str
    name: str
    subscription: str
    subscriber: pubsub_v1.SubscriberClient

    def pull(self, expected: int, timeout: float = 60.0) -> list[pubsub_v1.types.ReceivedMessage]:
        """Pull until `expected` messages arrived (acknowledging them); fail on more."""
        path = self.subscriber.subscription_path(self.project, self.subscription)
        received: list[pubsub_v1.types.ReceivedMessage] = []
        deadline = time.monotonic() + timeout
        while len(received) < expected and time.monotonic() < deadline:
            response = self.subscriber.pull(
                request={"subscription": path, "max_messages": 10}, timeout=5
            )
            if response.received_messages:
                self.subscriber.acknowledge(
                    request={
                        "subscription": path,
                        "ack_ids": [m.ack_id for m in response.received_messages],
                    }
                )
            received.extend(response.received_messages)
        assert len(received) == expected, f"got {len(received)} messages, expected {expected}"
        return received


@pytest.fixture
def topic(pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Topic]:
    project = f"bl-ps-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    create_topic(pubsub_emulator, project, "events")
    create_subscription(pubsub_emulator, project, "events-pull", "events")
    subscriber = pubsub_v1.SubscriberClient()
    try:
        yield Topic(project, "events", "events-pull", subscriber)
    finally:
        subscriber.close()


def test_publish_delivers_json_and_attributes(topic: Topic) -> None:
    message = {
        "type": "job.completed",
        "job_id": "job-0123456789abcdef01234567",
        "state": "partial",
        "counts": {"succeeded": 9, "failed": 1},
        "cost_usd": 0.0125,
        "uris": ["gs://out/x/job-0123/results.jsonl", "gs://out/x/job-0123/summary.json"],
        "note": "naïve — ünïcode ✓",
        "event_published": True,
        "error": None,
    }
    publisher = PubSubPublisher(topic.project)
    publisher.publish(
        topic.name, message, event="job.completed", job_id="job-0123", state="partial"
    )

    [received] = topic.pull(1)
    assert json.loads(received.message.data) == message
    assert dict(received.message.attributes) == {
        "event": "job.completed",
        "job_id": "job-0123",
        "state": "partial",
    }
    assert received.message.message_id


def test_publish_many_without_attributes(topic: Topic) -> None:
    publisher = PubSubPublisher(topic.project)
    for n in range(5):
        publisher.publish(topic.name, {"n": n})
    received = topic.pull(5)
    assert sorted(json.loads(m.message.data)["n"] for m in received) == list(range(5))
    assert all(dict(m.message.attributes) == {} for m in received)


def test_publish_to_a_missing_topic_is_an_error(topic: Topic) -> None:
    """publish waits for the server: a message that was not accepted raises, it is not
    dropped silently."""
    publisher = PubSubPublisher(topic.project)
    with pytest.raises(RetryableError, match="no-such-topic"):
        publisher.publish("no-such-topic", {"x": 1})
