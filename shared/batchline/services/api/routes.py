"""The API's route table: one `Route` per operation, its handler, and what it takes and
answers (which is also what `openapi.json` says: `services.api.openapi` reads this table).

To add an operation, write its handler (`handlers.py`, or a module of its own) and add a
`Route` to `routes()`. Paths are templates: `{name}` matches one segment without `/` or
`:` (`{job_id}` is also checked against the job id pattern, 400 otherwise).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from batchline.services.api import handlers
from batchline.services.api.call import Handler
from batchline.services.api.estimates import EstimateView
from batchline.services.api.models import (
    JobInput,
    JobList,
    JobView,
    ListQuery,
    ResultsQuery,
    SubmittedJob,
    WebhookReceipt,
)


@dataclass(frozen=True)
class Media:
    """A reply that is not a pydantic model: its media type and JSON Schema."""

    media_type: str
    schema: Mapping[str, Any]
    description: str


JSON_OBJECT = Media("application/json", {"type": "object"}, "A JSON object.")
OPENAI_EVENT = Media(
    "application/json",
    {"type": "object"},
    "An OpenAI webhook event (`batch.completed`, `batch.failed`, ...).",
)
JSONL = Media(
    "application/jsonl",
    {"type": "string"},
    "JSON Lines: one result line per input line, in input order (see the README).",
)


@dataclass(frozen=True)
class Route:
    """One operation: `method` on `path`, answered by `handler`."""

    method: str
    path: str
    handler: Handler
    summary: str
    #: Success statuses and what each answers.
    replies: Mapping[int, type[BaseModel] | Media]
    body: type[BaseModel] | Media | None = None
    query: type[BaseModel] | None = None
    #: Error statuses besides those every operation may answer (400, 500, 503; 404 with
    #: a path parameter; 413 and 415 with a body).
    errors: tuple[int, ...] = ()
    #: Takes an `Idempotency-Key` header.
    idempotent: bool = False
    #: Headers the operation needs: name -> description.
    headers: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = re.split(r"\{(\w+)\}", self.path)
        regex = "".join(
            f"(?P<{part}>[^/:]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
        )
        object.__setattr__(self, "_pattern", re.compile(f"^{regex}$"))

    def match(self, path: str) -> dict[str, str] | None:
        """The path's parameters when `path` is this route's, else None."""
        found = self._pattern.match(path)
        return None if found is None else found.groupdict()


@functools.cache
def routes() -> tuple[Route, ...]:
    """Every operation of the API."""
    return (*_job_routes(), *_output_routes())


def _job_routes() -> tuple[Route, ...]:
    """Submitting, listing, estimating, reading and cancelling jobs."""
    return (
        Route(
            "POST",
            "/v1/jobs",
            handlers.create_job,
            "Submit a job: inline requests or a gs:// object in the input bucket",
            {202: SubmittedJob, 200: SubmittedJob},
            body=JobInput,
            errors=(413, 415, 422),
            idempotent=True,
            description="202 with a new job; 200 with the job the same Idempotency-Key and "
            "body made before; 422 when the key was used with another body.",
        ),
        Route(
            "GET",
            "/v1/jobs",
            handlers.list_jobs,
            "List jobs, newest first",
            {200: JobList},
            query=ListQuery,
            description="Filters: `state`, `label.<key>=<value>` (any number of keys, all "
            "must match), `created_after`/`created_before` (RFC 3339, exclusive). Pages of "
            "`limit` jobs (1-100, default 20); pass a page's `next_cursor` as `cursor` for "
            "the next, with the same filters.",
        ),
        Route(
            "POST",
            "/v1/jobs:estimate",
            handlers.estimate_job,
            "Plan a job without running it: lines, invalid lines, chunks, cost range",
            {200: EstimateView},
            body=JobInput,
            errors=(413, 415),
        ),
        Route("GET", "/v1/jobs/{job_id}", handlers.get_job, "Get a job", {200: JobView}),
        Route(
            "POST",
            "/v1/jobs/{job_id}:cancel",
            handlers.cancel_job,
            "Cancel a job (poll carries it out)",
            {202: JobView, 200: JobView},
            errors=(409,),
            description="202 while the job runs; 200 when it had been canceled already; "
            "409 when it ended otherwise.",
        ),
    )


def _output_routes() -> tuple[Route, ...]:
    """A job's outputs, the providers' webhooks, and the document."""
    return (
        Route(
            "GET",
            "/v1/jobs/{job_id}/summary",
            handlers.get_summary,
            "A job's summary.json (404 until the job has ended)",
            {200: JSON_OBJECT},
        ),
        Route(
            "GET",
            "/v1/jobs/{job_id}/results",
            handlers.get_results,
            "A job's results.jsonl, streamed (404 until the job has ended)",
            {200: JSONL},
            query=ResultsQuery,
            description="`status` keeps the lines of that status; `offset` and `limit` count "
            "the lines kept.",
        ),
        Route(
            "POST",
            "/v1/webhooks/openai",
            handlers.openai_webhook,
            "OpenAI's batch events: a batch ended, advance its job now",
            {200: WebhookReceipt},
            body=OPENAI_EVENT,
            errors=(404,),
            headers={
                "webhook-id": "The event's id (a redelivery has the same).",
                "webhook-timestamp": "Seconds since the epoch.",
                "webhook-signature": "`v1,<base64 HMAC-SHA256>` with the webhook secret.",
            },
            description="Signed by OpenAI (Standard Webhooks); a bad signature is a 400. "
            "Events for unknown batches, ended jobs, redeliveries and stale timestamps are "
            "acknowledged and ignored. 404 when the deployment has no OpenAI webhook secret.",
        ),
        Route(
            "GET",
            "/v1/openapi.json",
            handlers.openapi_document,
            "This API's OpenAPI 3.1 document",
            {200: JSON_OBJECT},
        ),
    )


def find(method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
    """(the route for `method` on `path`, its parameters, the methods `path` allows)."""
    allowed: list[str] = []
    for route in routes():
        params = route.match(path)
        if params is None:
            continue
        if route.method == method:
            return route, params, [route.method]
        allowed.append(route.method)
    return None, {}, sorted(set(allowed))
