"""The API's request and response bodies and query parameters, as pydantic models.

They check what a caller sends (types, and unknown fields are errors naming the field:
`extra="forbid"`), shape what the API answers, and are what `openapi.json` is generated
from (`services.api.openapi`). The domain's own rules (option values, limits, the input
bucket) are checked after them, by the operations.

Only the api function imports this module: pydantic's import cost stays out of the other
functions. Schemas are built on first use (`defer_build`), so a cold request pays only
for the models it touches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: A job id, as `batchline.edge.JOB_ID` checks it.
JOB_ID_PATTERN = r"^job-[0-9a-f]{24}$"
#: RFC 3339 date-time with an offset (`Z` or `+hh:mm`), as `created_after` takes it.
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
#: The values of `domain.models.JobState` (tests/unit checks they agree).
# fmt: off
JobStateName = Literal["accepted", "submitting", "running", "collecting",
                       "succeeded", "partial", "failed", "canceled", "rejected"]
# fmt: on
#: The values of `domain.models.ResultStatus`.
ResultStatusName = Literal["succeeded", "failed", "expired", "canceled", "invalid"]


class _In(BaseModel):
    """What a caller sends: strict types (no "1" for 1), unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class _Query(BaseModel):
    """Query parameters: text converted to the field's type; unknown ones refused."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class _Out(BaseModel):
    """What the API answers: every field declared."""

    model_config = ConfigDict(extra="forbid", defer_build=True, populate_by_name=True)


# ------------------------------------------------------------------------------ requests


_RETRIES = "Resends of a line that failed for a passing reason (5xx, 429, expired); 1."
_FALLBACK = "Models (`provider/model`) a line that still fails goes to, in order."
_QUEUE = "Hours a batch may stay queued at its provider before its lines fail over."
_FINISH = "GET of one running job: when its first answers should all be in (epoch s), at its pace."


class JobOptionsIn(_In):
    """A job's options; the same as an input object's metadata gives."""

    model: str | None = Field(
        default=None, description="Default model for lines without one, `provider/model` or `auto`."
    )
    labels: dict[str, str] | None = Field(
        default=None,
        description="At most 64; keys `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`, values at most 256 "
        "characters.",
    )
    schema_name: str | None = Field(
        default=None, alias="schema", description="A registered schema's name."
    )
    response_schema: dict[str, Any] | None = Field(
        default=None, description="An inline JSON Schema (at most 256 KiB)."
    )
    max_repair_attempts: int | None = Field(default=None, ge=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    notify_url: str | None = Field(
        default=None, description="https:// URL the job's signed job.completed is POSTed to."
    )
    max_retries: int | None = Field(default=None, ge=0, le=5, description=_RETRIES)
    fallback: list[str] | None = Field(default=None, max_length=8, description=_FALLBACK)
    max_queue_hours: float | None = Field(default=None, gt=0, le=72, description=_QUEUE)
    candidates: list[str] | None = Field(
        default=None,
        description='The models (`provider/model`, at most 16) `model: "auto"` chooses '
        "from; default: the deployment's (BATCHLINE_AUTO_CANDIDATES, else one per enabled "
        "provider).",
    )
    prefer: Literal["cost", "speed"] | None = Field(
        default=None,
        description='What `model: "auto"` chooses for: the lowest worst-case cost '
        "(default) or the highest output speed.",
    )


class JobInput(_In):
    """A job's input: inline request lines or a `gs://` object in the input bucket, with
    the job's options. Exactly one of `requests` and `input_uri`."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["requests"], "properties": {"requests": {"type": "array"}}},
                {"required": ["input_uri"], "properties": {"input_uri": {"type": "string"}}},
            ]
        }
    )

    requests: list[Any] | None = Field(
        default=None,
        min_length=1,
        description="Request lines as JSON values (at most 10,000); a line that is not a "
        "valid request becomes an `invalid` result.",
    )
    input_uri: str | None = Field(
        default=None,
        pattern=r"^gs://",
        description="A `.jsonl` or `.jsonl.gz` object in the deployment's input bucket.",
    )
    options: JobOptionsIn | None = None


class ListQuery(_Query):
    """`GET /v1/jobs` parameters (besides `label.<key>=<value>`)."""

    state: JobStateName | None = None
    created_after: str | None = Field(
        default=None, pattern=RFC3339_PATTERN, json_schema_extra={"format": "date-time"}
    )
    created_before: str | None = Field(
        default=None, pattern=RFC3339_PATTERN, json_schema_extra={"format": "date-time"}
    )
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=512)


class ResultsQuery(_Query):
    """`GET /v1/jobs/{job_id}/results` parameters, in result lines."""

    status: ResultStatusName | None = None
    offset: int = Field(default=0, ge=0, description="Matching lines to skip.")
    limit: int | None = Field(default=None, ge=1, description="Matching lines to send at most.")


# ----------------------------------------------------------------------------- responses


class JobOptionsView(_Out):
    """A job's options: model and labels always, the others when set."""

    model: str | None
    labels: dict[str, str]
    schema_name: str | None = Field(default=None, alias="schema")
    response_schema: dict[str, Any] | None = None
    max_repair_attempts: int | None = None
    max_cost_usd: float | None = None
    notify_url: str | None = None
    max_retries: int | None = None
    fallback: list[str] | None = None
    max_queue_hours: float | None = None
    candidates: list[str] | None = None
    prefer: str | None = None


class JobView(_Out):
    """A job as the API shows it."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    state: JobStateName
    origin: Literal["gcs", "api"]
    source: str
    options: JobOptionsView
    counts: dict[str, int]
    chunks: int
    usage: dict[str, int]
    cost_usd: float | None
    results_uri: str | None
    summary_uri: str | None
    error: str | None
    waiting: str | None = Field(
        default=None,
        description=(
            "Why some of its chunks wait to be sent, e.g. 'queued: 38.2M of 40M enqueued"
            " tokens in use for openai/gpt-4.1-mini' (a provider's quota is full); null:"
            " nothing waits."
        ),
    )
    estimated_finish_at: float | None = Field(default=None, description=_FINISH)
    created_at: float = Field(description="Epoch seconds.")
    cancel_requested_at: float | None
    ended_at: float | None


class SubmittedJob(JobView):
    """The job a POST made (202) or found under its Idempotency-Key (200)."""

    idempotency_key: str


class JobList(_Out):
    """One page of jobs, newest first."""

    jobs: list[JobView]
    next_cursor: str | None = Field(description="For the next page; null on the last.")


class WebhookReceipt(_Out):
    """An OpenAI webhook event received: what was done with it."""

    received: bool
    outcome: str


class ErrorDetail(_Out):
    """What went wrong: `type` for code, `message` for people, `field` to fix."""

    type: str
    message: str
    field: str | None = Field(default=None, description="What to fix, as a dotted path.")
    error_id: str | None = Field(default=None, description="500 only: the log's error id.")


class ErrorBody(_Out):
    """Every error the API answers."""

    error: ErrorDetail
