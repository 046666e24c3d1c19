"""Vertex AI batch prediction emulator: the JobService REST API that `google-cloud-aiplatform`'s
REST transport speaks, over fake-gcs-server.

Point the SDK at it with ``JobServiceClient(transport="rest", credentials=AnonymousCredentials(),
client_options=ClientOptions(api_endpoint="http://127.0.0.1:PORT"))``. It reads every job's
input from, and writes its output to, the GCS server named by ``--storage-url`` (default:
``$STORAGE_EMULATOR_HOST``), as Vertex does with Cloud Storage.

API (under ``/v1/projects/{project}/locations/{location}``; no authentication; JSON with
camelCase names, int64 as strings; enums as numbers when the query has
``$alt=json;enum-encoding=int``, as the SDK's REST transport asks, else as names; errors as
``{"error": {"code", "message", "status"}}``):

- ``POST .../batchPredictionJobs`` creates a job and returns it. Checked at once (400
  ``INVALID_ARGUMENT``): known fields only, ``displayName``, a ``publishers/google/models/*``
  ``model``, ``inputConfig`` (``instancesFormat: jsonl``, ``gcsSource.uris``: gs:// URIs),
  ``outputConfig`` (``predictionsFormat: jsonl``, ``gcsDestination.outputUriPrefix``) and
  ``labels`` (GCP label rules). The input is read at create; problems with it fail the job
  once it leaves the queue, with ``error`` set and nothing written: an input that cannot
  be read, a line that is not ``{"request": {...}}`` or has no ``contents``, more than
  ``max_requests`` lines or ``max_bytes`` bytes, a model it does not know (NOT_FOUND).
- ``GET .../batchPredictionJobs/{id}``; ``GET .../batchPredictionJobs`` (newest first,
  ``pageSize`` 1..1000, default 100, ``pageToken``, ``filter``: terms joined by ``AND``,
  each ``labels.KEY="VALUE"``, ``labels.KEY:*``, ``display_name="..."`` or
  ``state=JOB_STATE_...``); ``POST .../batchPredictionJobs/{id}:cancel`` (``{}``; 400
  ``FAILED_PRECONDITION`` once the job has ended); ``DELETE .../batchPredictionJobs/{id}``
  (only once ended) answers a long-running operation that is already ``done``;
  ``GET .../operations/{id}`` returns it again.

Lifecycle, computed from timestamps on every request (no background thread):
``JOB_STATE_QUEUED`` (``queued_seconds``: just created, not yet taken up, as the SDK's
``JobState`` puts it) → ``JOB_STATE_PENDING`` (``pending_seconds``: waiting for capacity,
the state Vertex's Gemini batch documentation gives a job that may queue for up to 72 h
before it runs; set it to hours, on a test's clock, to emulate that queue) →
``JOB_STATE_RUNNING`` (rows run one per ``1/lines_per_second``, in a shuffled order) →
``JOB_STATE_SUCCEEDED``, or ``JOB_STATE_PARTIALLY_SUCCEEDED`` when some rows failed. Cancel:
``JOB_STATE_CANCELLING`` for ``cancel_seconds``, then ``JOB_STATE_CANCELLED``. A job not
ended ``expire_after_seconds`` after its creation (Vertex: queued up to 72 h, then 24 h to
run) is ``JOB_STATE_EXPIRED``. In every case the rows that ran before the end are written;
the others are not (``completionStats.incompleteCount``). ``completionStats`` and
``outputInfo`` appear once the job has ended (output) or started (directory).

Output: ``<outputUriPrefix>/prediction-model-<createTime>/predictions.jsonl``, or, with
``rows_per_file``, ``predictions_00001.jsonl``, ``predictions_00002.jsonl``, ...; written
when the job is first seen ended. Each row: ``{"status", "processed_time", "request"
(echoed as received), "response"}``; a failed row has a non-empty ``status`` (``"Bad
Request: {"error": {...}}"``) and no ``response``. Answers: one candidate whose text
starts with ``[batchline vertex emulator]`` and quotes the last user text;
``maxOutputTokens`` cuts it (``MAX_TOKENS``), a stop sequence ends it; usage from ~4
characters a token.

Structured outputs: with ``generationConfig.responseMimeType: "application/json"`` and
``responseJsonSchema`` (JSON Schema) or ``responseSchema`` (Google's OpenAPI subset:
types in any case, ``nullable``, ``enum``, ``properties``, ``required``, ``items``,
``minItems``, ``maxItems``, ``minimum``, ``maximum``, ``format``, ``anyOf``,
``propertyOrdering``...) the candidate's text is the compact JSON of a value generated for
the schema (deterministic: see `batchline_emulators._answers`); with neither, a
JSON object such as ``{"answer": "..."}``. With ``responseMimeType: "text/x.enum"`` (enum
mode) the text is one of the schema's enum values. The schema counts as prompt tokens;
stop sequences do not cut JSON, ``maxOutputTokens`` does (``MAX_TOKENS``).

Row checks (a failed row, as Gemini's own 400s): request fields of
``GenerateContentRequest`` only, roles ``user``/``model``, known part fields, a schema
only with ``responseMimeType`` ``application/json`` (or ``text/x.enum``) and not both
kinds of schema.

Faults (`EmulatorConfig`, at runtime with ``POST /_emulator/config``): the marker
``[emulator:fail=NNN]`` (400..599) in the last user text fails that row with that status;
``failed_rate`` fails that fraction of rows (picked by a seeded hash of the row's position
and request) with ``failed_status`` (default 500 ``INTERNAL``; 503 ``UNAVAILABLE`` and 429
``RESOURCE_EXHAUSTED`` are the other transient ones, and batchline retries all three),
written as any failed row; ``api_error_rate`` / ``api_error_next`` with
``api_error_status`` fail API calls (Google's error body). ``job_fail_next: N``: the next N
creates with a readable input make a job that goes ``JOB_STATE_FAILED`` when it leaves the
queue, as a bad input does: ``error: {"code": 3, "message": "Emulated job failure
(job_fail_next): cannot process the input gs://..."}``, nothing written
(``completionStats.incompleteCount``: every row).
``invalid_answer_rate`` makes that fraction of JSON-mode *first answers* invalid for
their schema, picked by a seeded hash of the request's ``labels.batchline_request_id``
(else of the row's position and content); the kinds cycle, in input order, through
``wrong_type`` (a property, or the root, of a type the schema refuses), ``missing_field``
(a required property left out; ``wrong_type`` when none is required) and ``not_json``
(prose that is not JSON). A first answer is one to a conversation with no ``model``
content; a repair (the contents carry an earlier model turn, as batchline's repair does)
is always answered validly: the model corrects itself when told what was wrong. Set it
with ``EmulatorConfig(invalid_answer_rate=0.2)``, ``--config-json
'{"invalid_answer_rate": 0.2}'`` or ``POST /_emulator/config``.

Quota (the config holds it as the project's: a change applies to the next create; ``GET
/_emulator/quota`` shows its use): ``concurrent_job_limit`` bounds the jobs of each model
that are ``JOB_STATE_QUEUED``, ``JOB_STATE_PENDING`` or ``JOB_STATE_RUNNING`` (held or not;
a cancelling or ended job does not count): null (no limit, the default), a number for
every model, or ``{"gemini-2.5-flash": number}`` (``"*"``: every model not named; without
it those have no limit). Jobs count across every project and location the emulator
serves: it stands for one project and region. A create past the limit makes no job and
answers 429 ``{"error": {"code": 429, "message": "Quota exceeded for
aiplatform.googleapis.com/concurrent_batch_prediction_jobs_per_base_model with base model:
gemini-2.5-flash. Limit: 4 concurrent jobs, 4 in use. ...", "status":
"RESOURCE_EXHAUSTED"}}``. ``quota_exceeded_next: N`` refuses the next N creates so,
whatever the limit. (Vertex's quota page says Gemini batch jobs past the concurrent limit
wait in a queue instead; the emulator refuses them, which is the harder case for a
client, and ``pending_seconds`` gives the queue.)

Admin endpoints (never faulted): ``GET /`` (health), ``GET|POST /_emulator/config``,
``POST /_emulator/reset``, ``POST /_emulator/release``, ``POST /_emulator/expire``,
``GET /_emulator/batches`` (every job, deleted ones too, newest first, each with ``id`` (its name) and an ``emulator``
object, ``held`` among its fields), ``GET /_emulator/batches/{id}/requests`` (the input
lines as read), ``GET /_emulator/stats``, ``GET /_emulator/quota`` (``{"vertex":
{"<model>": {"concurrent_jobs": N, "limit": L}}, "over_quota": <creates refused>}``; every
model of a job, or of the limit, is listed).

Hold: with ``hold_after_lines: N``, jobs created from then on run N rows and stay
``JOB_STATE_RUNNING`` until ``POST /_emulator/release`` (``{}`` or ``{"batch": ID or
name}``); see the OpenAI emulator and ``_common.Hold``.

Expire on demand (deterministic, no clock to race): ``POST /_emulator/expire``
(``{"batch": ID or name}``, or ``{}`` for every job queued, pending or running) ends the
job now exactly as if its time had run out: ``JOB_STATE_EXPIRED``, the rows that ran
written, the others not (``incompleteCount``). Answers ``{"expired": [ids]}``; an unknown
or deleted job 404 ``NOT_FOUND``, one cancelling or ended 409 ``ABORTED``. With
``hold_after_lines: N`` that is "N rows run, then expired". ``expire_after_lines: N``:
jobs created from then on expire right after their N-th row has run (a job of N rows or
fewer ends as usual); with ``expire_next_batches: K`` only the next K creates with a
readable input do so (each takes one; null, the default: every one). See the OpenAI
emulator and ``_common.Expiry``.

Every response carries ``x-emulator: batchline-vertex``.

Command line: ``python -m batchline_emulators.vertex --host 127.0.0.1 --port P
[--storage-url http://127.0.0.1:G] [--config-json '{...}'] [--verbose]``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import os
import random
import re
import secrets
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from batchline_emulators._answers import (
    InvalidAnswers,
    from_google_schema,
    generate,
    structured_answer,
)
from batchline_emulators._common import (
    ANY_MODEL,
    ConfigRules,
    Expiry,
    Hold,
    ModelLimit,
    PerModel,
    early_expiry,
    fraction,
    hex_digest,
    limit_for,
    merged_config,
    tokens,
)
from batchline_emulators._wsgi import (
    AdminEndpoints,
    HTTPError,
    admin_rules,
    json_response,
    read_json,
    serve,
)

EMULATOR_HEADER = ("x-emulator", "batchline-vertex")
CONTENT_PREFIX = "[batchline vertex emulator]"
MODEL_PREFIX = "publishers/google/models/"
#: Vertex: up to 72 h queued, then 24 h to run.
EXPIRY_SECONDS = (72 + 24) * 3600
DEFAULT_PAGE = 100
MAX_PAGE = 1000
FAIL_MARKER = re.compile(r"\[emulator:fail=(\d{3})\]")
#: The request label that names a row (batchline's encoder sets it).
REQUEST_ID_LABEL = "batchline_request_id"
JSON_MIME = "application/json"
#: Gemini's enum mode: the answer is one of the schema's enum values, as plain text.
ENUM_MIME = "text/x.enum"
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")

#: Gemini models the emulator serves.
KNOWN_MODELS = frozenset(
    {
        "gemini-2.0-flash-001",
        "gemini-2.0-flash-lite-001",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.5-pro",
        "gemini-3-flash-preview",
        "gemini-3-pro-preview",
    }
)

STATES = (
    "JOB_STATE_UNSPECIFIED",
    "JOB_STATE_QUEUED",
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLING",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_PAUSED",
    "JOB_STATE_EXPIRED",
    "JOB_STATE_UPDATING",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
)
#: The states whose jobs count against `concurrent_job_limit`.
ACTIVE = frozenset({"JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"})
ENDED = frozenset(
    {
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
        "JOB_STATE_PARTIALLY_SUCCEEDED",
    }
)

#: Fields of the BatchPredictionJob a create may set (JSON names).
JOB_FIELDS = frozenset(
    {
        "name",
        "displayName",
        "model",
        "modelVersionId",
        "unmanagedContainerModel",
        "inputConfig",
        "instanceConfig",
        "modelParameters",
        "outputConfig",
        "dedicatedResources",
        "serviceAccount",
        "manualBatchTuningParameters",
        "generateExplanation",
        "explanationSpec",
        "labels",
        "encryptionSpec",
        "disableContainerLogging",
    }
)
#: Fields of a GenerateContentRequest (JSON names and proto names).
REQUEST_FIELDS = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "system_instruction",
        "cachedContent",
        "cached_content",
        "tools",
        "toolConfig",
        "tool_config",
        "labels",
        "safetySettings",
        "safety_settings",
        "modelArmorConfig",
        "model_armor_config",
        "generationConfig",
        "generation_config",
    }
)
PART_FIELDS = frozenset(
    {
        "text",
        "inlineData",
        "inline_data",
        "fileData",
        "file_data",
        "functionCall",
        "function_call",
        "functionResponse",
        "function_response",
        "executableCode",
        "executable_code",
        "codeExecutionResult",
        "code_execution_result",
        "thought",
        "thoughtSignature",
        "thought_signature",
        "videoMetadata",
        "video_metadata",
        "mediaResolution",
        "media_resolution",
    }
)

#: Google's canonical code (name, gRPC number) for an HTTP status.
STATUS_CODES = {
    400: ("INVALID_ARGUMENT", 3),
    401: ("UNAUTHENTICATED", 16),
    403: ("PERMISSION_DENIED", 7),
    404: ("NOT_FOUND", 5),
    409: ("ABORTED", 10),
    429: ("RESOURCE_EXHAUSTED", 8),
    499: ("CANCELLED", 1),
    500: ("INTERNAL", 13),
    501: ("UNIMPLEMENTED", 12),
    503: ("UNAVAILABLE", 14),
    504: ("DEADLINE_EXCEEDED", 4),
}
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


#: The message of a row `failed_rate` fails, by status (Google's wording for each).
FAILED_RATE_MESSAGES = {
    429: "Resource exhausted. Please try again later.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "Deadline exceeded.",
}


def status_name(http: int) -> str:
    if http in STATUS_CODES:
        return STATUS_CODES[http][0]
    return "INTERNAL" if http >= 500 else "FAILED_PRECONDITION"


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EmulatorConfig:
    """Behaviour of the emulator. Times in seconds, rates are fractions in [0, 1]."""

    seed: int = 0
    queued_seconds: float = 0.05
    pending_seconds: float = 0.05
    lines_per_second: float = 5000.0
    cancel_seconds: float = 0.1
    #: From create until an unfinished job expires; None means Vertex's 72 h + 24 h.
    expire_after_seconds: float | None = None
    failed_rate: float = 0.0
    #: The HTTP status of the rows `failed_rate` fails (500 INTERNAL; 503 UNAVAILABLE and
    #: 429 RESOURCE_EXHAUSTED are the other transient ones).
    failed_status: int = 500
    #: Split the output into files of at most this many rows; None: one predictions.jsonl.
    rows_per_file: int | None = None
    api_error_rate: float = 0.0
    api_error_status: int = 503
    api_error_next: int = 0
    max_requests: int = 200_000
    max_bytes: int = 1_000_000_000
    #: Fraction of JSON-mode first answers (picked by a seeded hash of the request's
    #: `batchline_request_id` label) that are invalid for their schema.
    invalid_answer_rate: float = 0.0
    #: Jobs created from now on run this many rows, then stay JOB_STATE_RUNNING until
    #: `POST /_emulator/release` (None: never held). See `Hold`.
    hold_after_lines: int | None = None
    #: Jobs created from now on expire right after this many rows have run, as if their
    #: time had run out then (None: only `expire_after_seconds`). See `Expiry`.
    expire_after_lines: int | None = None
    #: With `expire_after_lines`: only the next K jobs created (with a readable input)
    #: expire so (decremented by each); later ones run as usual. None: every one.
    expire_next_batches: int | None = None
    #: The next N job creates (with a readable input) make a job that fails as a whole
    #: when it leaves the queue, as for a bad input (decremented by each).
    job_fail_next: int = 0
    #: Jobs each model may have queued, pending or running (`ACTIVE`): None (no limit), a
    #: number for every model, or {model: number} ("*": every model not named; without
    #: it those have no limit). A create past it answers 429 RESOURCE_EXHAUSTED.
    concurrent_job_limit: ModelLimit = None
    #: Refuse the next N job creates as over the limit (429), whatever the limit
    #: (decremented by each), as a limit lower than the client believes would.
    quota_exceeded_next: int = 0

    def merged(self, overrides: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with `overrides` applied; ValueError on unknown keys or bad values."""
        return merged_config(self, overrides, _CONFIG_RULES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CONFIG_RULES: ConfigRules = {
    "seed": (int, False, None, None),
    "queued_seconds": (float, False, 0, None),
    "pending_seconds": (float, False, 0, None),
    "lines_per_second": (float, False, 1e-9, None),
    "cancel_seconds": (float, False, 0, None),
    "expire_after_seconds": (float, True, 0, None),
    "failed_rate": (float, False, 0, 1),
    "failed_status": (int, False, 400, 599),
    "rows_per_file": (int, True, 1, None),
    "api_error_rate": (float, False, 0, 1),
    "api_error_status": (int, False, 400, 599),
    "api_error_next": (int, False, 0, None),
    "max_requests": (int, False, 1, None),
    "max_bytes": (int, False, 1, None),
    "invalid_answer_rate": (float, False, 0, 1),
    "hold_after_lines": (int, True, 0, None),
    "expire_after_lines": (int, True, 0, None),
    "expire_next_batches": (int, True, 0, None),
    "job_fail_next": (int, False, 0, None),
    "concurrent_job_limit": (PerModel, True, 0, None),
    "quota_exceeded_next": (int, False, 0, None),
}


# --------------------------------------------------------------------------- errors


def api_error(http: int, message: str) -> HTTPError:
    """An HTTPError with Google's JSON error body."""
    return HTTPError(
        http, {"error": {"code": http, "message": message, "status": status_name(http)}}
    )


def timestamp(t: float | None) -> str | None:
    if t is None:
        return None
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


# --------------------------------------------------------------------------- GCS


class Storage:
    """The few GCS JSON API calls the emulator makes (fake-gcs-server, or any GCS)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return bucket, name

    def read(self, uri: str) -> bytes:
        bucket, name = self.split(uri)
        url = (
            f"{self.url}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
            f"{urllib.parse.quote(name, safe='')}?alt=media"
        )
        with urllib.request.urlopen(url, timeout=60) as response:
            data: bytes = response.read()
            return data

    def write(self, uri: str, data: bytes) -> None:
        bucket, name = self.split(uri)
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        url = f"{self.url}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}"
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/jsonl"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


# --------------------------------------------------------------------------- rows


@dataclass
class RowPlan:
    """One input line, with its outcome decided at create time."""

    request: Any  # as read
    failed: bool
    status: str = ""
    response: dict[str, Any] | None = None

    def row(self, processed: float) -> bytes:
        out: dict[str, Any] = {"status": self.status, "processed_time": timestamp(processed)}
        out["request"] = self.request
        if self.response is not None:
            out["response"] = self.response
        return orjson.dumps(out) + b"\n"


def row_status(http: int, message: str) -> str:
    """A failed row's `status`: the reason, then Google's error as JSON."""
    error = {"error": {"code": http, "message": message, "status": status_name(http)}}
    return f"{REASONS.get(http, 'Error')}: {orjson.dumps(error).decode()}"


def _texts(parts: Any) -> list[str]:
    if not isinstance(parts, list):
        return []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _last_user_text(contents: list[Any]) -> str:
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            return "\n".join(_texts(content.get("parts")))
    return ""


def check_request(request: dict[str, Any]) -> str | None:
    """What Gemini would refuse in a request (a 400 for that row); None when nothing."""
    for key in request:
        if key not in REQUEST_FIELDS:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at 'request': Cannot find field."
    for i, content in enumerate(request["contents"]):
        if not isinstance(content, dict):
            return f"contents[{i}]: expected an object"
        role = content.get("role")
        if role not in (None, "", "user", "model"):
            return "Please use a valid role: user, model."
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"contents[{i}].parts: must not be empty"
        for j, part in enumerate(parts):
            if not isinstance(part, dict):
                return f"contents[{i}].parts[{j}]: expected an object"
            for key in part:
                if key not in PART_FIELDS:
                    return (
                        f'Invalid JSON payload received. Unknown name "{key}" at '
                        f"'request.contents[{i}].parts[{j}]': Cannot find field."
                    )
    config = request.get("generationConfig") or request.get("generation_config") or {}
    if not isinstance(config, dict):
        return "generationConfig: expected an object"
    temperature = config.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 2
    ):
        return "Unable to submit request because temperature must be between 0 and 2."
    stops = config.get("stopSequences") or config.get("stop_sequences") or []
    if len(stops) > 5:
        return "Unable to submit request because stopSequences has more than 5 items."
    mime, json_schema, schema = _output_settings(config)
    if json_schema is not None and schema is not None:
        return "responseSchema and responseJsonSchema cannot both be set."
    for name, given in (("responseJsonSchema", json_schema), ("responseSchema", schema)):
        if given is None:
            continue
        if not isinstance(given, dict):
            return f"generationConfig.{name}: expected an object"
        if mime not in (JSON_MIME, ENUM_MIME):
            return (
                f"Unable to submit request because {name} is set but responseMimeType is "
                f"{mime or 'not set'}: use application/json or text/x.enum."
            )
    return None


def _output_settings(config: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(responseMimeType, responseJsonSchema, responseSchema) of a generationConfig, in
    either spelling (JSON or proto names)."""
    mime = config.get("responseMimeType") or config.get("response_mime_type")
    json_schema = config.get("responseJsonSchema", config.get("response_json_schema"))
    schema = config.get("responseSchema", config.get("response_schema"))
    return mime, json_schema, schema


def _output_schema(request: dict[str, Any]) -> tuple[str | None, Any]:
    """("json", "enum" or None: how the answer is shaped, its JSON Schema or None)."""
    config = request.get("generationConfig") or request.get("generation_config") or {}
    mime, json_schema, schema = _output_settings(config)
    if mime not in (JSON_MIME, ENUM_MIME):
        return None, None
    if json_schema is None and schema is not None:
        json_schema = from_google_schema(schema)
    if mime == ENUM_MIME:
        return ("enum", json_schema) if json_schema is not None else (None, None)
    return "json", json_schema


def _request_id(index: int, request: dict[str, Any]) -> str:
    """The row's id: its `batchline_request_id` label, else its position and content."""
    labels = request.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get(REQUEST_ID_LABEL), str):
        return str(labels[REQUEST_ID_LABEL])
    return f"row-{index}-" + hex_digest(orjson.dumps(request, option=orjson.OPT_SORT_KEYS))


def _answer(
    request: dict[str, Any], model: str, seed: int, index: int, invalid: InvalidAnswers
) -> dict[str, Any]:
    contents = request["contents"]
    snippet = " ".join(_last_user_text(contents).split())
    if len(snippet) > 60:
        snippet = snippet[:60] + "..."
    digest = hex_digest(orjson.dumps(request, option=orjson.OPT_SORT_KEYS).decode(), n=8)
    text = f"{CONTENT_PREFIX} answer to: {snippet} (#{digest})"
    finish = "STOP"
    config = request.get("generationConfig") or request.get("generation_config") or {}
    shape, schema = _output_schema(request)
    if shape == "json":
        rid = _request_id(index, request)
        first = not any(isinstance(c, dict) and c.get("role") == "model" for c in contents)
        kind = invalid.kind(rid, first_answer=first)
        text = structured_answer(schema, f"vertex/{rid}/{digest}", kind).text
    elif shape == "enum":
        member = generate(schema, f"vertex/{digest}")
        text = member if isinstance(member, str) else orjson.dumps(member).decode()
    else:
        stops = config.get("stopSequences") or config.get("stop_sequences") or []
        found = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
        if found:
            text = text[: min(found)]
    limit = config.get("maxOutputTokens") or config.get("max_output_tokens")
    output_tokens = tokens(len(text)) if text else 0
    if isinstance(limit, int) and output_tokens > limit:
        text, output_tokens, finish = text[: limit * 4], limit, "MAX_TOKENS"
    system = request.get("systemInstruction") or request.get("system_instruction") or {}
    prompt = sum(len(t) for c in contents if isinstance(c, dict) for t in _texts(c.get("parts")))
    prompt += sum(len(t) for t in _texts(system.get("parts") if isinstance(system, dict) else []))
    if schema is not None:  # the schema is part of the prompt
        prompt += len(orjson.dumps(schema))
    prompt_tokens = tokens(prompt)
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": finish,
                "avgLogprobs": -0.1,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
            "trafficType": "ON_DEMAND",
        },
        "modelVersion": f"{model}",
        "responseId": hex_digest("response", seed, digest, index, n=24),
    }


def plan_row(
    index: int,
    line: Any,
    model: str,
    config: EmulatorConfig,
    invalid: InvalidAnswers | None = None,
) -> RowPlan:
    """A line's outcome (the line was checked for `request.contents` already); `invalid`
    picks the job's invalid answers (by default, one for this row alone)."""
    request = line["request"]
    problem = check_request(request)
    if problem is not None:
        return RowPlan(line["request"], True, row_status(400, problem))
    marker = FAIL_MARKER.search(_last_user_text(request["contents"]))
    if marker is not None and 400 <= int(marker.group(1)) <= 599:
        http = int(marker.group(1))
        return RowPlan(request, True, row_status(http, f"Emulated failure with status {http}."))
    if config.failed_rate > 0 and fraction(config.seed, "failed", index, orjson.dumps(request)) < (
        config.failed_rate
    ):
        http = config.failed_status
        message = FAILED_RATE_MESSAGES.get(http, f"Emulated failure with status {http}.")
        return RowPlan(request, True, row_status(http, f"{message} (emulated failed_rate)"))
    if invalid is None:
        invalid = InvalidAnswers(config.invalid_answer_rate, config.seed)
    answer = _answer(request, model, config.seed, index, invalid)
    return RowPlan(request, False, response=answer)


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Phase:
    """A job as seen at one instant."""

    state: str
    processed: int = 0  # rows finished, in processing order
    started_at: float | None = None
    ended_at: float | None = None


@dataclass
class JobRecord:
    id: str
    name: str
    seq: int
    created: float
    config: EmulatorConfig  # snapshot at create
    body: dict[str, Any]  # as created (less output-only fields)
    rows: list[RowPlan]  # processing (shuffled) order
    failure: tuple[int, str] | None = None  # (HTTP status, message): fails the job
    cancel_requested_at: float | None = None
    hold: Hold = field(default_factory=Hold)
    expiry: Expiry = field(default_factory=Expiry)
    deleted: bool = False
    written: list[str] = field(default_factory=list)
    written_for: str | None = None  # the end state the output was written for
    failed_prefix: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        prefix = [0]
        for row in self.rows:
            prefix.append(prefix[-1] + row.failed)
        self.failed_prefix = prefix

    @property
    def model(self) -> str:
        """The model's id (`gemini-2.5-flash`), without `publishers/google/models/`."""
        return str(self.body["model"]).removeprefix(MODEL_PREFIX)

    @property
    def started_at(self) -> float:
        return self.created + self.config.queued_seconds + self.config.pending_seconds

    @property
    def rows_end(self) -> float:
        return self.hold.end(self.started_at, self.config.lines_per_second, len(self.rows))

    @property
    def expires_at(self) -> float:
        window = self.config.expire_after_seconds
        return self.created + (EXPIRY_SECONDS if window is None else window)

    @property
    def deadline(self) -> float:
        """When it expires unless ended: `expires_at`, or earlier as a test asked."""
        rate, n = self.config.lines_per_second, len(self.rows)
        return min(self.expires_at, self.expiry.at(self.hold, self.started_at, rate, n))

    @property
    def output_directory(self) -> str:
        prefix = self.body["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
        stamp = dt.datetime.fromtimestamp(self.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{prefix}/prediction-model-{stamp}"

    def done(self, t: float) -> int:
        return self.hold.done(t, self.started_at, self.config.lines_per_second, len(self.rows))

    def held(self, now: float) -> bool:
        """Waiting for `POST /_emulator/release` (not cancelled, not expired) at `now`."""
        if self.failure is not None or self.phase(now).state != "JOB_STATE_RUNNING":
            return False
        rate = self.config.lines_per_second
        return self.hold.holding(now, self.started_at, rate, len(self.rows))

    def _waiting(self, now: float) -> str:
        if now < self.created + self.config.queued_seconds:
            return "JOB_STATE_QUEUED"
        return "JOB_STATE_PENDING"

    def phase(self, now: float) -> Phase:
        start, deadline = self.started_at, self.deadline
        tc = self.cancel_requested_at
        if tc is not None:  # accepted only before the job ended
            ran = start if tc >= start else None
            ends = tc + self.config.cancel_seconds
            if now < ends:
                return Phase("JOB_STATE_CANCELLING", started_at=ran)
            return Phase("JOB_STATE_CANCELLED", self.done(tc), ran, ends)
        # When the job would end by itself: at its start if it fails, else after its rows.
        end = start if self.failure is not None else self.rows_end
        if deadline < end:
            if now >= deadline:
                ran = start if deadline >= start else None
                return Phase("JOB_STATE_EXPIRED", self.done(deadline), ran, deadline)
            if now >= start:
                return Phase("JOB_STATE_RUNNING", started_at=start)
            return Phase(self._waiting(now))
        if now < start:
            return Phase(self._waiting(now))
        if self.failure is not None:
            return Phase("JOB_STATE_FAILED", 0, start, start)
        if now < self.rows_end:
            return Phase("JOB_STATE_RUNNING", started_at=start)
        partial = self.failed_prefix[-1] > 0
        state = "JOB_STATE_PARTIALLY_SUCCEEDED" if partial else "JOB_STATE_SUCCEEDED"
        return Phase(state, len(self.rows), start, self.rows_end)

    def to_api(self, ph: Phase, enum_ints: bool) -> dict[str, Any]:
        job: dict[str, Any] = {"name": self.name, **self.body}
        job["state"] = STATES.index(ph.state) if enum_ints else ph.state
        if ph.state == "JOB_STATE_FAILED" and self.failure is not None:
            http, message = self.failure
            job["error"] = {"code": STATUS_CODES.get(http, ("", 13))[1], "message": message}
        if ph.started_at is not None and self.failure is None:
            job["outputInfo"] = {"gcsOutputDirectory": self.output_directory}
        if ph.state in ENDED:
            failed = self.failed_prefix[ph.processed]
            job["completionStats"] = {
                "successfulCount": str(ph.processed - failed),
                "failedCount": str(failed),
                "incompleteCount": str(len(self.rows) - ph.processed),
            }
        job["createTime"] = timestamp(self.created)
        if ph.started_at is not None:
            job["startTime"] = timestamp(ph.started_at)
        if ph.ended_at is not None:
            job["endTime"] = timestamp(ph.ended_at)
        job["updateTime"] = timestamp(ph.ended_at or ph.started_at or self.created)
        return job

    def output_files(self, ph: Phase) -> Iterator[tuple[str, bytes]]:
        """(URI, content) of each prediction file for the rows that ran."""
        per_file = self.config.rows_per_file
        rows = self.rows[: ph.processed]
        if not rows or ph.started_at is None:
            return
        rate, total = self.config.lines_per_second, len(self.rows)
        if per_file is None:
            groups = [rows]
            names = ["predictions.jsonl"]
        else:
            groups = [rows[i : i + per_file] for i in range(0, len(rows), per_file)]
            names = [f"predictions_{n:05d}.jsonl" for n in range(1, len(groups) + 1)]
        at = 0
        for name, group in zip(names, groups, strict=True):
            data = bytearray()
            for row in group:
                data += row.row(self.hold.finished_at(at, ph.started_at, rate, total))
                at += 1
            yield f"{self.output_directory}/{name}", bytes(data)


@dataclass
class EmulatorState:
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    next_seq: int = 0
    api_requests: int = 0
    injected_errors: int = 0
    creates: int = 0
    over_quota: int = 0  # creates answered 429 for the concurrent-job limit


def _check_label_map(labels: Any) -> None:
    if not isinstance(labels, dict):
        raise api_error(400, "labels: expected a map of strings")
    if len(labels) > 64:
        raise api_error(400, "labels: at most 64 labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(str(key)):
            raise api_error(400, f"labels: invalid label key {key!r}")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise api_error(400, f"labels: invalid value {value!r} for label {key!r}")


def _gcs_uri(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("gs://") or len(value) <= 5:
        raise api_error(400, f"{where}: expected a gs:// URI, got {value!r}")
    return value


def check_create(body: Any) -> dict[str, Any]:
    """The job's create-time fields, checked (400 INVALID_ARGUMENT on the first problem)."""
    if not isinstance(body, dict):
        raise api_error(400, "Invalid JSON payload received: expected a BatchPredictionJob")
    for key in body:
        if key not in JOB_FIELDS:
            raise api_error(
                400, f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
            )
    if not isinstance(body.get("displayName"), str) or not body["displayName"]:
        raise api_error(400, "displayName is required.")
    model = body.get("model")
    if (
        not isinstance(model, str)
        or not model.startswith(MODEL_PREFIX)
        or "/" in model[len(MODEL_PREFIX) :]
    ):
        raise api_error(400, f"model: expected publishers/google/models/MODEL, got {model!r}")
    inp = body.get("inputConfig")
    if not isinstance(inp, dict) or inp.get("instancesFormat") != "jsonl":
        raise api_error(400, "inputConfig.instancesFormat: only jsonl is emulated")
    uris = (inp.get("gcsSource") or {}).get("uris")
    if not isinstance(uris, list) or not uris:
        raise api_error(400, "inputConfig.gcsSource.uris: at least one URI is required")
    for uri in uris:
        _gcs_uri(uri, "inputConfig.gcsSource.uris")
    out = body.get("outputConfig")
    if not isinstance(out, dict) or out.get("predictionsFormat") != "jsonl":
        raise api_error(400, "outputConfig.predictionsFormat: only jsonl is emulated")
    _gcs_uri(
        (out.get("gcsDestination") or {}).get("outputUriPrefix"),
        "outputConfig.gcsDestination.outputUriPrefix",
    )
    if "labels" in body:
        _check_label_map(body["labels"])
    return {k: v for k, v in body.items() if k != "name"}


def read_input(
    storage: Storage, uris: list[str], config: EmulatorConfig
) -> tuple[list[Any], tuple[int, str] | None]:
    """(parsed lines, failure) of a job's input."""
    lines: list[Any] = []
    size = 0
    for uri in uris:
        try:
            data = storage.read(uri)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return [], (404, f"Input file {uri} does not exist.")
            return [], (400, f"Cannot read the input {uri}: HTTP {exc.code}")
        except OSError as exc:
            return [], (400, f"Cannot read the input {uri}: {exc}")
        size += len(data)
        if size > config.max_bytes:
            return [], (400, f"The input is larger than {config.max_bytes} bytes.")
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return [], (400, f"{uri} line {number}: not valid JSON")
            request = line.get("request") if isinstance(line, dict) else None
            if not isinstance(request, dict):
                return [], (400, f'{uri} line {number}: expected {{"request": {{...}}}}')
            contents = request.get("contents")
            if not isinstance(contents, list) or not contents:
                return [], (400, f"{uri} line {number}: request.contents is required")
            lines.append(line)
    if len(lines) > config.max_requests:
        return [], (
            400,
            f"The input has {len(lines)} requests; the limit is {config.max_requests}.",
        )
    if not lines:
        return [], (400, "The input has no requests.")
    return lines, None


def _url_map() -> Map:
    base = "/v1/projects/<project>/locations/<location>"
    return Map(
        [
            Rule(f"{base}/batchPredictionJobs", endpoint="create", methods=["POST"]),
            Rule(f"{base}/batchPredictionJobs", endpoint="list", methods=["GET"]),
            Rule(f"{base}/batchPredictionJobs/<ref>", endpoint="get", methods=["GET"]),
            Rule(f"{base}/batchPredictionJobs/<ref>", endpoint="post_job", methods=["POST"]),
            Rule(f"{base}/batchPredictionJobs/<ref>", endpoint="delete", methods=["DELETE"]),
            Rule(f"{base}/operations/<op>", endpoint="operation", methods=["GET"]),
            *admin_rules(),
            Rule("/_emulator/batches", endpoint="admin_batches", methods=["GET"]),
            Rule(
                "/_emulator/batches/<job_id>/requests", endpoint="admin_requests", methods=["GET"]
            ),
            Rule("/_emulator/stats", endpoint="admin_stats", methods=["GET"]),
        ],
        strict_slashes=False,
        merge_slashes=False,
    )


_FILTER_TERM = re.compile(
    r'^\s*(?:labels\.(?P<label>[a-z][a-z0-9_-]*)\s*(?P<op>=|:)\s*(?P<lvalue>"[^"]*"|\*|[\w.-]+)'
    r'|(?P<field>display_name|displayName|state)\s*=\s*(?P<value>"[^"]*"|[\w.-]+))\s*$'
)


Predicate = Callable[["JobRecord", str], bool]


def _has_label(key: str) -> Predicate:
    return lambda job, state: key in (job.body.get("labels") or {})


def _label_is(key: str, wanted: str) -> Predicate:
    return lambda job, state: (job.body.get("labels") or {}).get(key) == wanted


def _state_is(wanted: str) -> Predicate:
    return lambda job, state: state == wanted


def _display_name_is(wanted: str) -> Predicate:
    return lambda job, state: job.body.get("displayName") == wanted


def parse_filter(text: str) -> list[Predicate]:
    """The list filter as predicates over (job, its current state)."""
    tests: list[Predicate] = []
    if not text.strip():
        return tests
    for term in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE):
        match = _FILTER_TERM.match(term)
        if match is None:
            raise api_error(400, f"Unsupported filter term: {term!r}")
        if match.group("label"):
            key, op, value = match.group("label"), match.group("op"), match.group("lvalue")
            if op == ":" and value != "*":
                raise api_error(400, f"Unsupported filter term: {term!r}")
            tests.append(_has_label(key) if op == ":" else _label_is(key, value.strip('"')))
        else:
            name, wanted = match.group("field"), match.group("value").strip('"')
            tests.append(_state_is(wanted) if name == "state" else _display_name_is(wanted))
    return tests


class VertexBatchEmulator(AdminEndpoints):
    """The WSGI app. `config` and `state` may be read (and config replaced) by tests."""

    emulator_name = EMULATOR_HEADER[1]
    api_error = staticmethod(api_error)

    def __init__(
        self, config: EmulatorConfig, storage: Storage, clock: Callable[[], float] = time.time
    ) -> None:
        self.startup_config = config
        self.config = config
        self.storage = storage
        self.clock = clock
        self.state = EmulatorState()
        self.lock = threading.RLock()
        self.url_map = _url_map()
        self.operations: dict[str, dict[str, Any]] = {}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except HTTPError as exc:
            response = exc.response()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            response = api_error(500, "The emulator failed while handling the request.").response()
        response.headers[EMULATOR_HEADER[0]] = EMULATOR_HEADER[1]
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        if request.path.startswith("/v1/"):
            with self.lock:
                self._maybe_inject_fault()
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed:
            raise api_error(405, f"Method not allowed ({request.method} {request.path}).") from None
        except HTTPException:
            raise api_error(404, f"Not found ({request.method} {request.path}).") from None
        handler: Callable[..., Response] = getattr(self, f"h_{endpoint}")
        return handler(request, **args)

    def _maybe_inject_fault(self) -> None:
        cfg = self.config
        n = self.state.api_requests
        self.state.api_requests += 1
        inject = False
        if cfg.api_error_next > 0:
            self.config = dataclasses.replace(cfg, api_error_next=cfg.api_error_next - 1)
            inject = True
        elif cfg.api_error_rate > 0 and fraction(cfg.seed, "api", n) < cfg.api_error_rate:
            inject = True
        if inject:
            self.state.injected_errors += 1
            raise api_error(cfg.api_error_status, "Emulated API error (fault injection).")

    @staticmethod
    def _enum_ints(request: Request) -> bool:
        return "enum-encoding=int" in request.args.get("$alt", "")

    def _job(self, project: str, location: str, ref: str) -> JobRecord:
        name = f"projects/{project}/locations/{location}/batchPredictionJobs/{ref}"
        job = self.state.jobs.get(ref)
        if job is None or job.deleted or job.name != name:
            raise api_error(404, f"The BatchPredictionJob {name} does not exist.")
        return job

    def _observe(self, job: JobRecord, now: float) -> Phase:
        """The job's phase now; once it has ended, its output is written (once)."""
        ph = job.phase(now)
        if ph.state in ENDED and job.written_for is None:
            for uri, data in job.output_files(ph):
                self.storage.write(uri, data)
                job.written.append(uri)
            job.written_for = ph.state
        return ph

    # ---- jobs
    def h_create(self, request: Request, project: str, location: str) -> Response:
        config = self.config
        try:
            body = read_json(request)
        except ValueError:
            raise api_error(400, "Invalid JSON payload received.") from None
        checked = check_create(body)
        uris = checked["inputConfig"]["gcsSource"]["uris"]
        lines, failure = read_input(self.storage, uris, config)
        model = checked["model"][len(MODEL_PREFIX) :]
        if failure is None and model not in KNOWN_MODELS:
            failure = (
                404,
                f"Publisher Model `projects/{project}/locations/{location}/{checked['model']}` "
                "was not found or your project does not have access to it.",
            )
        invalid = InvalidAnswers(config.invalid_answer_rate, config.seed)
        rows = (
            []
            if failure
            else [plan_row(i, line, model, config, invalid) for i, line in enumerate(lines)]
        )
        order = hex_digest(config.seed, "order", len(rows), *uris)
        random.Random(order).shuffle(rows)
        with self.lock:
            now = self.clock()
            self._check_concurrent_jobs(model, now)
            seq = self.state.next_seq
            self.state.next_seq += 1
            self.state.creates += 1
            job_id = str(secrets.randbelow(9 * 10**18) + 10**18)
            name = f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
            hold = Hold(config.hold_after_lines)
            expiry = Expiry()
            if failure is None:
                failure = self._forced_failure(uris)
            if failure is None:
                expiry = self._early_expiry()
            job = JobRecord(
                job_id, name, seq, now, config, checked, rows, failure, hold=hold, expiry=expiry
            )
            self.state.jobs[job_id] = job
            return json_response(job.to_api(job.phase(job.created), self._enum_ints(request)))

    # ---- faults on demand (call with the lock held)
    def _forced_failure(self, uris: list[str]) -> tuple[int, str] | None:
        """The failure `job_fail_next` gives a job created now; else None."""
        cfg = self.config
        if cfg.job_fail_next <= 0:
            return None
        self.config = dataclasses.replace(cfg, job_fail_next=cfg.job_fail_next - 1)
        return (400, f"Emulated job failure (job_fail_next): cannot process the input {uris[0]}.")

    def _early_expiry(self) -> Expiry:
        """The `Expiry` a job created now takes (`expire_after_lines`), counting it against
        `expire_next_batches`."""
        cfg = self.config
        expiry, left = early_expiry(cfg.expire_after_lines, cfg.expire_next_batches)
        if left != cfg.expire_next_batches:
            self.config = dataclasses.replace(cfg, expire_next_batches=left)
        return expiry

    def expire(self, batch_id: str | None, now: float) -> list[str]:
        if batch_id is not None:
            job = self.state.jobs.get(batch_id.rsplit("/", 1)[-1])
            if job is None or job.deleted:
                raise api_error(404, f"The BatchPredictionJob {batch_id} does not exist.")
            state = self._observe(job, now).state
            if state not in ACTIVE:
                raise api_error(
                    409, f"The BatchPredictionJob {job.name} is in state {state}: it cannot expire."
                )
            jobs = [job]
        else:
            active = (
                j
                for j in self.state.jobs.values()
                if not j.deleted and self._observe(j, now).state in ACTIVE
            )
            jobs = sorted(active, key=lambda j: j.seq)
        for job in jobs:
            job.expiry.requested_at = now
            self._observe(job, now)  # its output, written as the job ends
        return [j.id for j in jobs]

    # ---- quota (call with the lock held)
    def _active_jobs(self, model: str, now: float) -> int:
        return sum(
            1 for j in self.state.jobs.values() if j.model == model and j.phase(now).state in ACTIVE
        )

    def _check_concurrent_jobs(self, model: str, now: float) -> None:
        """429 when `model` has `concurrent_job_limit` jobs queued, pending or running, or
        a test asked for one with `quota_exceeded_next`."""
        cfg = self.config
        limit = limit_for(cfg.concurrent_job_limit, model)
        active = self._active_jobs(model, now)
        if cfg.quota_exceeded_next > 0:
            self.config = dataclasses.replace(cfg, quota_exceeded_next=cfg.quota_exceeded_next - 1)
        elif limit is None or active < limit:
            return
        self.state.over_quota += 1
        shown = active if limit is None else limit  # forced with no limit: the jobs now
        # Google's error shape with Vertex's quota wording ("Quota exceeded for
        # aiplatform.googleapis.com/<metric> with base model: <model>."); the metric is
        # named after the documented `<model>_concurrent_batch_prediction_jobs` quotas.
        raise api_error(
            429,
            "Quota exceeded for aiplatform.googleapis.com/"
            f"concurrent_batch_prediction_jobs_per_base_model with base model: {model}. "
            f"Limit: {shown} concurrent jobs, {active} in use. Please try again once a "
            "batch prediction job has ended.",
        )

    def quota(self) -> dict[str, Any]:
        """Per model: the jobs queued, pending or running now and the limit; how many
        creates were refused for it."""
        now = self.clock()
        limits = self.config.concurrent_job_limit
        models = {j.model for j in self.state.jobs.values()}
        if isinstance(limits, dict):
            models |= set(limits) - {ANY_MODEL}
        return {
            "vertex": {
                m: {"concurrent_jobs": self._active_jobs(m, now), "limit": limit_for(limits, m)}
                for m in sorted(models)
            },
            "over_quota": self.state.over_quota,
        }

    def h_list(self, request: Request, project: str, location: str) -> Response:
        raw = request.args.get("pageSize", "")
        try:
            size = int(raw) if raw else DEFAULT_PAGE
        except ValueError:
            raise api_error(400, "pageSize: expected an integer") from None
        if not 0 <= size <= MAX_PAGE:
            raise api_error(400, f"pageSize: must be between 0 and {MAX_PAGE}")
        size = size or DEFAULT_PAGE
        token = request.args.get("pageToken", "")
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            raise api_error(400, "pageToken: not a token this list gave") from None
        tests = parse_filter(request.args.get("filter", ""))
        parent = f"projects/{project}/locations/{location}/"
        ints = self._enum_ints(request)
        with self.lock:
            now = self.clock()
            jobs = sorted(
                (
                    j
                    for j in self.state.jobs.values()
                    if not j.deleted and j.name.startswith(parent)
                ),
                key=lambda j: j.seq,
                reverse=True,
            )
            matching = []
            for job in jobs:
                ph = self._observe(job, now)
                if all(test(job, ph.state) for test in tests):
                    matching.append((job, ph))
            page = matching[start : start + size]
            answer: dict[str, Any] = {}
            if page:
                answer["batchPredictionJobs"] = [job.to_api(ph, ints) for job, ph in page]
            if start + size < len(matching):
                answer["nextPageToken"] = base64.urlsafe_b64encode(
                    str(start + size).encode()
                ).decode()
            return json_response(answer)

    def h_get(self, request: Request, project: str, location: str, ref: str) -> Response:
        with self.lock:
            job = self._job(project, location, ref)
            ph = self._observe(job, self.clock())
            return json_response(job.to_api(ph, self._enum_ints(request)))

    def h_post_job(self, request: Request, project: str, location: str, ref: str) -> Response:
        job_id, sep, verb = ref.partition(":")
        if not sep or verb != "cancel":
            raise api_error(404, f"Not found (POST {request.path}).")
        with self.lock:
            job = self._job(project, location, job_id)
            now = self.clock()
            ph = self._observe(job, now)
            if ph.state in ENDED:
                raise api_error(
                    400,
                    f"The BatchPredictionJob {job.name} is in state {ph.state} and cannot be "
                    "cancelled.",
                )
            if job.cancel_requested_at is None:
                job.cancel_requested_at = now
            return json_response({})

    def h_delete(self, request: Request, project: str, location: str, ref: str) -> Response:
        with self.lock:
            job = self._job(project, location, ref)
            ph = self._observe(job, self.clock())
            if ph.state not in ENDED:
                raise api_error(
                    400,
                    f"The BatchPredictionJob {job.name} is in state {ph.state}; cancel it, and "
                    "delete it once it has ended.",
                )
            job.deleted = True
            op_id = str(secrets.randbelow(9 * 10**18) + 10**18)
            now = timestamp(self.clock())
            op_name = f"projects/{project}/locations/{location}/operations/{op_id}"
            operation: dict[str, Any] = {
                "name": op_name,
                "metadata": {
                    "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                    "genericMetadata": {"createTime": now, "updateTime": now},
                },
                "done": True,
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            }
            self.operations[op_name] = operation
            return json_response(operation)

    def h_operation(self, request: Request, project: str, location: str, op: str) -> Response:
        name = f"projects/{project}/locations/{location}/operations/{op}"
        with self.lock:
            operation = self.operations.get(name)
        if operation is None:
            raise api_error(404, f"Operation {name} does not exist.")
        return json_response(operation)

    # ---- admin
    def h_admin_batches(self, request: Request) -> Response:
        with self.lock:
            now = self.clock()
            jobs = sorted(self.state.jobs.values(), key=lambda j: j.seq, reverse=True)
            data = []
            for job in jobs:
                ph = self._observe(job, now)
                data.append(
                    {
                        "id": job.name,
                        **job.to_api(ph, enum_ints=False),
                        "emulator": {
                            "requests": len(job.rows),
                            "failed_rows": job.failed_prefix[-1],
                            "deleted": job.deleted,
                            "output_files": list(job.written),
                            "held": job.held(now),
                        },
                    }
                )
            return json_response({"data": data})

    def holds(self) -> Iterable[tuple[str, Hold]]:
        return [(j.id, j.hold) for j in self.state.jobs.values()]

    def h_admin_requests(self, request: Request, job_id: str) -> Response:
        with self.lock:
            job = self.state.jobs.get(job_id.rsplit("/", 1)[-1])
            if job is None:
                raise api_error(404, f"No job {job_id}.")
            received = [row.request for row in job.rows]
        return json_response({"data": received})

    def h_admin_stats(self, request: Request) -> Response:
        with self.lock:
            return json_response(
                {
                    "api_requests": self.state.api_requests,
                    "injected_errors": self.state.injected_errors,
                    "creates": self.state.creates,
                    "jobs": sum(1 for j in self.state.jobs.values() if not j.deleted),
                }
            )

    def reset(self) -> None:
        """Drop all jobs and restore the startup config (written output stays in GCS)."""
        with self.lock:
            self.state = EmulatorState()
            self.config = self.startup_config
            self.operations = {}


def make_app(
    config: EmulatorConfig | None = None,
    *,
    storage_url: str | None = None,
    clock: Callable[[], float] = time.time,
) -> VertexBatchEmulator:
    """The emulator as a WSGI app; GCS at `storage_url` (default $STORAGE_EMULATOR_HOST)."""
    url = storage_url or os.environ.get("STORAGE_EMULATOR_HOST")
    if not url:
        raise ValueError(
            "the Vertex emulator needs a GCS server: --storage-url or STORAGE_EMULATOR_HOST"
        )
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return VertexBatchEmulator(config or EmulatorConfig(), Storage(url), clock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vertex AI batch prediction emulator (batchline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage-url", default=None, help="GCS server (fake-gcs-server) URL")
    parser.add_argument("--config-json", default=None, help="JSON object overriding the config")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    try:
        overrides = orjson.loads(args.config_json) if args.config_json else {}
        if not isinstance(overrides, dict):
            raise ValueError("--config-json must be a JSON object")
        app = make_app(EmulatorConfig().merged(overrides), storage_url=args.storage_url)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(app, args.host, args.port, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
