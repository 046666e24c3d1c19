"""`POST /v1/webhooks/openai`: OpenAI says a batch ended; advance its job now rather than
at the next poll tick. Polling stays the backstop: an event that never comes, or comes
for nothing, changes nothing.

- The signature is OpenAI's (Standard Webhooks), checked with the `openai` SDK's
  `webhooks.unwrap` against OPENAI_WEBHOOK_SECRET; the SDK is imported on this route
  only. A bad signature is a 400, so that a forged event causes no work (OpenAI retries
  non-2xx, which a forger's event does not deserve either).
- `batch.completed`, `batch.failed`, `batch.expired` and `batch.cancelled` name a batch:
  its chunk is found by the batch id (`JobStore.batch_recorded_by`, a Firestore
  collection-group query) and the job's id is published to the poll topic, as a new API
  job is. The api function needs no provider key for it.
- Acknowledged (2xx) and ignored: other event types, batches batchline did not record,
  jobs that ended, an event whose `webhook-id` the chunk already acted on (a redelivery;
  the chunk keeps the latest few ids), and a correctly signed event outside the SDK's
  five-minute tolerance (a replay).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from batchline.domain.models import Chunk
from batchline.edge import ApiError
from batchline.errors import RetryableError
from batchline.log import fields, get_logger

if TYPE_CHECKING:
    from flask import Request
    from openai import OpenAI

    from batchline.bootstrap import Deps

log = get_logger(__name__)

BATCH_EVENTS = frozenset({"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"})
#: OpenAI's events are a few hundred bytes: anything much larger is not one of them.
MAX_EVENT_BYTES = 64 * 1024
#: webhook-ids a chunk remembers (a batch gets one event, and its retries).
KEEP_WEBHOOK_IDS = 16
#: What the SDK's signature check is given to tell a stale, correctly signed event (a
#: replay: acknowledged) from a forged one (400): any age.
_ANY_AGE = 10**10


def receive(request: Request) -> tuple[int, Any]:
    """The route's handler: verify, then act on the event (see the module's docstring)."""
    from batchline.bootstrap import deps

    wired = deps()
    secret = wired.settings.openai_webhook_secret
    if not secret:
        raise ApiError(
            404, "not_found", "OpenAI webhooks are not enabled here (OPENAI_WEBHOOK_SECRET)"
        )
    raw = _body(request)
    headers = {name.lower(): value for name, value in request.headers.items()}
    event = _verified(raw, headers, secret)
    if event is None:
        log.info("openai webhook outside the tolerance; ignored")
        return 200, {"received": True, "outcome": "ignored: outside the timestamp tolerance"}
    event_type = str(getattr(event, "type", ""))
    data = getattr(event, "data", None)
    batch_id = getattr(data, "id", None)
    outcome = handle_batch_event(
        wired,
        headers.get("webhook-id", ""),
        event_type,
        batch_id if isinstance(batch_id, str) else None,
    )
    return 200, {"received": True, "outcome": outcome}


def handle_batch_event(deps: Deps, webhook_id: str, event_type: str, batch_id: str | None) -> str:
    """Act on a verified event; what was done, for the answer and the log."""
    if event_type not in BATCH_EVENTS or not batch_id:
        return "ignored: not a batch event"
    tag = deps.store.batch_recorded_by(batch_id)
    if tag is None:
        log.info("openai webhook for an unknown batch; ignored", extra=fields(batch_id=batch_id))
        return "ignored: unknown batch"
    job = deps.store.get_job(tag.job_id)
    if job is None or job.state.terminal:
        return "ignored: the job has ended"

    def remember(chunk: Chunk) -> Chunk | None:
        if chunk.provider != "openai" or webhook_id in chunk.webhook_ids:
            return None
        return replace(chunk, webhook_ids=[*chunk.webhook_ids, webhook_id][-KEEP_WEBHOOK_IDS:])

    if deps.store.update_chunk(tag.job_id, tag.chunk, remember) is None:
        log.info("openai webhook seen before; ignored", extra=fields(job_id=tag.job_id))
        return "ignored: seen before"
    try:
        deps.publisher.publish(
            deps.settings.poll_topic,
            {"job_id": tag.job_id, "source": "openai-webhook"},
            job_id=tag.job_id,
        )
    except RetryableError:
        # Not acted on after all: OpenAI's retry of this event must not look seen.
        deps.store.update_chunk(tag.job_id, tag.chunk, lambda c: _forget(c, webhook_id))
        raise
    log.info(
        "openai webhook: poll requested",
        extra=fields(job_id=tag.job_id, chunk=tag.chunk, batch_id=batch_id, event=event_type),
    )
    return "poll requested"


def _forget(chunk: Chunk, webhook_id: str) -> Chunk | None:
    if webhook_id not in chunk.webhook_ids:
        return None
    return replace(chunk, webhook_ids=[w for w in chunk.webhook_ids if w != webhook_id])


def _body(request: Request) -> bytes:
    """The raw body (the signature covers its exact bytes), bounded."""
    length = request.content_length
    if length is not None and length > MAX_EVENT_BYTES:
        raise ApiError(413, "too_large", f"an event is at most {MAX_EVENT_BYTES} bytes", "body")
    raw: bytes = request.stream.read(MAX_EVENT_BYTES + 1)
    if len(raw) > MAX_EVENT_BYTES:
        raise ApiError(413, "too_large", f"an event is at most {MAX_EVENT_BYTES} bytes", "body")
    return raw


def _verified(raw: bytes, headers: dict[str, str], secret: str) -> Any:
    """The SDK's event when the signature and timestamp check out; None when it is
    correctly signed but outside the tolerance; ApiError 400 otherwise."""
    from openai import InvalidWebhookSignatureError

    webhooks = _client(secret).webhooks
    try:
        return webhooks.unwrap(raw, headers, secret=secret)
    except InvalidWebhookSignatureError:
        try:
            webhooks.verify_signature(raw, headers, secret=secret, tolerance=_ANY_AGE)
        except (InvalidWebhookSignatureError, ValueError):
            raise _bad_signature() from None
        return None
    except ValueError:  # a header missing, a secret that is not base64, a body not JSON
        raise _bad_signature() from None


def _bad_signature() -> ApiError:
    return ApiError(
        400,
        "invalid_signature",
        "the webhook-signature does not match the body, webhook-id and webhook-timestamp",
        "webhook-signature",
    )


@functools.lru_cache(maxsize=1)
def _client(secret: str) -> OpenAI:
    """An SDK client used only to verify webhooks: it never calls OpenAI, so it carries
    no API key (the api function has none)."""
    from openai import OpenAI

    return OpenAI(api_key="unused-webhook-verification-only", webhook_secret=secret)
