"""Webhooks sent by an emulator, as the provider sends them: Standard Webhooks headers
(`webhook-id`, `webhook-timestamp`, `webhook-signature`), a non-2xx answer retried with
backoff under the same `webhook-id` and a fresh signature.

The emulators compute batch states lazily, on requests. With a webhook URL configured a
thread also moves them on (`tick`, every TICK_SECONDS), so that a batch that ends with
nobody asking still sends its event on time; it sends the due deliveries outside the
emulator's lock.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

TICK_SECONDS = 0.05
SEND_TIMEOUT_SECONDS = 10.0
SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret; ValueError when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if not key:
        raise ValueError("a webhook secret needs a key")
    return key


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers, as OpenAI sends them: the signature is base64 of
    HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "user-agent": "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


@dataclass
class Delivery:
    """One event and every attempt to deliver it."""

    webhook_id: str
    url: str
    secret: str
    event: dict[str, Any]
    max_attempts: int
    retry_seconds: float
    next_at: float
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered: bool = False

    @property
    def done(self) -> bool:
        return self.delivered or len(self.attempts) >= self.max_attempts

    def to_dict(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "url": self.url,
            "type": self.event.get("type"),
            "event": self.event,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "pending": not self.done,
        }


class WebhookOutbox:
    """Deliveries waiting or done. `tick` is called (it takes the emulator's lock) before
    each round, so that batches that ended meanwhile enqueue their events."""

    def __init__(self, tick: Callable[[], None]) -> None:
        self._tick = tick
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def enqueue(
        self,
        url: str,
        secret: str,
        event: dict[str, Any],
        *,
        max_attempts: int,
        retry_seconds: float,
    ) -> None:
        delivery = Delivery(
            webhook_id="wh_" + secrets.token_hex(16),
            url=url,
            secret=secret,
            event=event,
            max_attempts=max_attempts,
            retry_seconds=retry_seconds,
            next_at=time.monotonic(),
        )
        with self._lock:
            self._deliveries.append(delivery)

    def deliveries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.to_dict() for d in self._deliveries]

    def clear(self) -> None:
        with self._lock:
            self._deliveries = []

    def ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            with contextlib.suppress(Exception):  # a bad tick must not stop the deliveries
                self._tick()
            now = time.monotonic()
            with self._lock:
                due = [d for d in self._deliveries if not d.done and d.next_at <= now]
            for delivery in due:
                self._send(delivery)

    def _send(self, delivery: Delivery) -> None:
        body = orjson.dumps(delivery.event)
        headers = signed_headers(delivery.secret, delivery.webhook_id, int(time.time()), body)
        request = urllib.request.Request(delivery.url, data=body, headers=headers, method="POST")
        status: int | None = None
        error: str | None = None
        try:
            with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_SECONDS) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            delivery.attempts.append({"status": status, "error": error, "at": time.time()})
            delivery.delivered = status is not None and 200 <= status < 300
            tries = len(delivery.attempts)
            delivery.next_at = time.monotonic() + delivery.retry_seconds * 2 ** (tries - 1)
