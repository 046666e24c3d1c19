"""A job's `job.completed` webhook: published when the job ends, delivered by the notify
function, retried by Pub/Sub until the receiver answers 2xx.

Exactly-once where it can be, at-least-once where it cannot:
- The job's terminal write also sets `notify_pending` (`Job.to`), so the end and the
  debt to notify are one write. `request_delivery` publishes the webhook to the notify
  topic and then clears the flag. A process that dies in between leaves it set: the
  collect message's redelivery finds the job ended and publishes again
  (`messages.publish_completed`), and every poll tick publishes what a crash left
  pending (`publish_pending`) for the paths nothing redelivers (a rejected job).
- `deliver` POSTs the event, signed (`domain.webhooks`); a non-2xx answer, a timeout or a
  connection error raises RetryableError, so Pub/Sub delivers the message again, with
  backoff. Every delivery carries the same `webhook-id`, which receivers dedupe on; the
  body is the same bytes each time (built once, from the terminal record).
- The job's `notify` record says how it went: published_at, attempts, last_status,
  last_error, delivered_at.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson

from batchline.bootstrap import Deps
from batchline.domain.models import Job
from batchline.domain.webhooks import (
    COMPLETED_EVENT,
    WebhookRefused,
    completed_event,
    completed_webhook_id,
    notify_url_problem,
    signed_headers,
)
from batchline.errors import RetryableError
from batchline.log import fields, get_logger

log = get_logger(__name__)

#: A receiver gets this long to answer (connect, send, and each read).
DELIVERY_TIMEOUT_SECONDS = 10.0
#: A poll tick publishes a pending webhook only this long after the job ended: before
#: that, the collect that ended it is still about to.
SWEEP_GRACE_SECONDS = 60.0


class WebhookSender(Protocol):
    """POSTs one signed webhook; the adapter is `adapters.webhook_http.HttpWebhookSender`."""

    def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        """The receiver's HTTP status. Raises RetryableError when no answer came (DNS,
        connection, timeout) and WebhookRefused when the host resolves to an address
        batchline must not connect to."""
        ...


@dataclass(frozen=True)
class Delivery:
    """One message on the notify topic: the event to POST to `url`, and its id."""

    job_id: str
    url: str
    webhook_id: str
    event: dict[str, Any]

    def to_message(self) -> dict[str, Any]:
        """The delivery as the notify topic's message carries it."""
        return {
            "job_id": self.job_id,
            "url": self.url,
            "webhook_id": self.webhook_id,
            "event": self.event,
        }

    @classmethod
    def from_message(cls, message: Any) -> Delivery | None:
        """The delivery a message asks for, or None when it is not one."""
        if not isinstance(message, dict):
            return None
        job_id, url, webhook_id = (
            message.get("job_id"),
            message.get("url"),
            message.get("webhook_id"),
        )
        event = message.get("event")
        if not all(isinstance(v, str) and v for v in (job_id, url, webhook_id)):
            return None
        if not isinstance(event, dict):
            return None
        return cls(str(job_id), str(url), str(webhook_id), event)


def request_delivery(deps: Deps, job: Job) -> None:
    """Publish the webhook of an ended job whose `notify_pending` is set, then clear it.

    Raises RetryableError when the publish fails (the flag stays set)."""
    if not job.notify_pending:
        return
    now = deps.clock.now()
    if job.options.notify_url is not None:
        delivery = Delivery(
            job.job_id,
            job.options.notify_url,
            completed_webhook_id(job.job_id),
            completed_event(job),
        )
        deps.publisher.publish(
            deps.settings.notify_topic,
            delivery.to_message(),
            type=COMPLETED_EVENT,
            job_id=job.job_id,
        )
        log.info("webhook published", extra=fields(job_id=job.job_id))

    def published(current: Job) -> Job | None:
        if not current.notify_pending:
            return None
        return replace(
            current, notify_pending=False, notify={**current.notify, "published_at": now}
        )

    deps.store.update_job(job.job_id, published)


def publish_pending(deps: Deps, deadline: float) -> int:
    """A poll tick's backstop: publish the webhooks a crash left pending, of jobs that
    ended over SWEEP_GRACE_SECONDS ago; how many were published."""
    published = 0
    for job in deps.store.jobs_to_notify():
        now = deps.clock.now()
        if now >= deadline:
            break
        ended = job.ended_at if job.ended_at is not None else job.updated_at
        if ended + SWEEP_GRACE_SECONDS > now:
            continue
        log.warning("webhook left pending; publishing it now", extra=fields(job_id=job.job_id))
        request_delivery(deps, job)
        published += 1
    return published


def deliver(deps: Deps, delivery: Delivery, sender: WebhookSender | None = None) -> None:
    """POST the event to its URL, signed. Returns when the receiver answered 2xx (or when
    the URL may not be delivered to: recorded, and acknowledged); raises RetryableError
    otherwise, for Pub/Sub to deliver the message again later."""
    settings = deps.settings
    if not settings.webhook_secret:
        # The deployment's fault, not the receiver's: retried until the secret is there.
        raise RetryableError("BATCHLINE_WEBHOOK_SECRET is not set; no webhook can be signed")
    problem = notify_url_problem(
        delivery.url, allow_insecure_local=settings.webhook_allow_insecure_local
    )
    if problem is not None:
        _record(deps, delivery.job_id, error=f"notify_url refused: {problem}")
        log.error("webhook not sent: notify_url refused", extra=fields(job_id=delivery.job_id))
        return
    if sender is None:
        sender = default_sender(deps)
    body = orjson.dumps(delivery.event)
    headers = signed_headers(
        settings.webhook_secret, delivery.webhook_id, int(deps.clock.now()), body
    )
    try:
        status = sender.post(delivery.url, body, headers, DELIVERY_TIMEOUT_SECONDS)
    except WebhookRefused as exc:
        _record(deps, delivery.job_id, error=str(exc))
        log.error(
            "webhook not sent: address refused",
            extra=fields(job_id=delivery.job_id, error=str(exc)),
        )
        return
    except RetryableError as exc:
        _record(deps, delivery.job_id, error=str(exc))
        raise
    if 200 <= status < 300:
        try:
            _record(deps, delivery.job_id, status=status, delivered=True)
        except RetryableError as exc:  # delivered all the same: do not send it again
            log.warning(
                "webhook delivered, outcome not recorded",
                extra=fields(job_id=delivery.job_id, error=str(exc)),
            )
        log.info("webhook delivered", extra=fields(job_id=delivery.job_id, status=status))
        return
    _record(deps, delivery.job_id, status=status, error=f"the receiver answered HTTP {status}")
    raise RetryableError(f"webhook of {delivery.job_id}: the receiver answered HTTP {status}")


def default_sender(deps: Deps) -> WebhookSender:
    """The HTTP sender this deployment uses (http:// to this machine only when allowed)."""
    from batchline.adapters.webhook_http import HttpWebhookSender

    return HttpWebhookSender(allow_insecure_local=deps.settings.webhook_allow_insecure_local)


def _record(
    deps: Deps,
    job_id: str,
    *,
    status: int | None = None,
    error: str | None = None,
    delivered: bool = False,
) -> None:
    now = deps.clock.now()

    def attempt(current: Job) -> Job | None:
        record = dict(current.notify)
        record["attempts"] = int(record.get("attempts") or 0) + 1
        record["last_attempt_at"] = now
        record["last_status"] = status
        record["last_error"] = error
        if delivered:
            record.setdefault("delivered_at", now)
        return replace(current, notify=record)

    deps.store.update_job(job_id, attempt)
