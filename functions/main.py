"""Cloud Functions entry points. Each is thin: parse the event, call a service, and map
errors to retry (raise) or acknowledge (return)."""

from __future__ import annotations

import base64
from typing import Any

import functions_framework
import orjson
from cloudevents.http import CloudEvent
from flask import Request, Response
from flask import request as current_request

from batchline import entrypoints


@functions_framework.cloud_event
def submit(event: CloudEvent) -> None:
    """Eventarc `google.cloud.storage.object.v1.finalized` on the input bucket."""
    entrypoints.run_event("submit", lambda deps: entrypoints.submit(deps, event.data))


@functions_framework.cloud_event
def poll(event: CloudEvent) -> None:
    """Pub/Sub message on the poll topic: Cloud Scheduler's tick (fanned out as one
    message per active job) or `{"job_id": ...}` (advance that job)."""
    message = _pubsub_json(event.data)
    entrypoints.run_event("poll", lambda deps: entrypoints.poll(deps, message))


@functions_framework.cloud_event
def collect(event: CloudEvent) -> None:
    """Pub/Sub message `{"job_id": ...}` on the collect topic."""
    message = _pubsub_json(event.data)
    entrypoints.run_event("collect", lambda deps: entrypoints.collect(deps, message))


@functions_framework.cloud_event
def notify(event: CloudEvent) -> None:
    """Pub/Sub message on the notify topic: POST one job's webhook (raises to be retried)."""
    message = _pubsub_json(event.data)
    entrypoints.run_event("notify", lambda deps: entrypoints.notify(deps, message))


@functions_framework.http
def api(request: Request) -> Response:
    """HTTP API: the operations of `batchline.services.api.routes`."""
    return entrypoints.api(request)


@functions_framework.errorhandler(404)
def not_routed(error: Exception) -> Response:
    """A path functions-framework's router keeps from the function (one holding a line
    break): answered as the API answers any path it does not know, in JSON."""
    return entrypoints.not_routed(current_request)


def _pubsub_json(data: Any) -> Any:
    """The JSON payload of a Pub/Sub CloudEvent, or None when it has none we can read
    (acknowledged downstream: redelivering a malformed message cannot help)."""
    try:
        raw = base64.b64decode(
            ((data or {}).get("message") or {}).get("data") or b"", validate=True
        )
        return orjson.loads(raw) if raw else None
    except (ValueError, AttributeError):
        return None
