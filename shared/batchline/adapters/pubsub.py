"""Publisher on Cloud Pub/Sub (and on its emulator via PUBSUB_EMULATOR_HOST)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from batchline.errors import RetryableError

if TYPE_CHECKING:
    from google.cloud.pubsub_v1 import PublisherClient

PUBLISH_TIMEOUT_SECONDS = 30.0


class PubSubPublisher:
    def __init__(self, project: str, client: PublisherClient | None = None) -> None:
        if client is None:
            from google.cloud.pubsub_v1 import PublisherClient

            client = PublisherClient()
        self._client = client
        self._project = project

    def publish(self, topic: str, message: dict[str, Any], **attributes: str) -> None:
        path = self._client.topic_path(self._project, topic)
        future = self._client.publish(path, orjson.dumps(message), **attributes)
        try:
            future.result(timeout=PUBLISH_TIMEOUT_SECONDS)
        except Exception as exc:  # the client raises many kinds; all mean "not published"
            raise RetryableError(f"publishing to {topic}: {exc}") from exc
