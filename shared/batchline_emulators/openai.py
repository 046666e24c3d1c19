"""OpenAI Batch API emulator: a real HTTP server the official `openai` SDK can talk to.

Point the SDK at it with ``OpenAI(api_key="anything", base_url="http://127.0.0.1:PORT/v1")``.
Object shapes follow OpenAI's OpenAPI spec (`Batch`, `OpenAIFile`, `ListBatchesResponse`,
`CreateChatCompletionResponse`, `CreateEmbeddingResponse`); optional fields the real API
sends as ``null`` are sent as ``null`` here too.

API (all under ``/v1``, ``Authorization: Bearer <non-empty>`` required, else 401):

- ``POST /files`` (multipart ``purpose``, ``file``; ``purpose=batch`` needs a ``.jsonl``
  name), ``GET /files`` (``after``, ``limit``, ``order``, ``purpose``), ``GET /files/{id}``,
  ``GET /files/{id}/content``, ``DELETE /files/{id}``.
- ``POST /batches``, ``GET /batches`` (``after``, ``limit`` 1..100, newest first),
  ``GET /batches/{id}``, ``POST /batches/{id}/cancel``.

Batch endpoints: ``/v1/chat/completions`` and ``/v1/embeddings`` are emulated. The other
endpoints the SDK knows (``/v1/responses``, ``/v1/completions``, ...) are refused at
create with a 400 ``unsupported_endpoint`` error, so nothing silently pretends to work.

Lifecycle, computed lazily from timestamps on every request (no background thread):
``validating`` (``validating_seconds``) -> ``in_progress`` (one line per
``1/lines_per_second``, counts grow live) -> ``finalizing`` (``finalizing_seconds``) ->
``completed``. The input is validated as a whole; any problem makes the batch ``failed``
at the end of validating with ``errors.data[{code, message, param, line}]`` (1-based
line numbers, at most 1000 entries). Codes: ``empty_file``, ``file_too_large``,
``request_limit_exceeded``, ``invalid_json_line``, ``missing_required_parameter``,
``invalid_type``, ``invalid_value`` (method not POST), ``invalid_url`` (line url is not the
batch endpoint), ``duplicate_custom_id``, ``mismatched_model``. OpenAI does not document
these codes: ``invalid_json_line`` and ``duplicate_custom_id`` follow payloads seen from
the real API, the other names are the emulator's own.

Like OpenAI, a create answers at once: a ``batch`` file is planned (validated, each line's
outcome decided) when it is uploaded, for the endpoint its first line names, and a create
from it reuses that plan unless the endpoint or the config (but for its countdowns) has
changed since; then it is planned again, so a fault configured after the upload applies.

Results are processed, and written, in a shuffled order (seeded by ``seed`` and the
custom_ids, so reproducible). Output and error files share the envelope
``{"id","custom_id","response":{"status_code","request_id","body"}|null,"error":...}``;
lines that got an HTTP error (status >= 400, error in ``response.body.error``) go to the
error file. ``output_file_id`` is null when no line succeeded, ``error_file_id`` null when
none failed.

Structured outputs: a chat body with ``response_format: {"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}`` is answered with the compact JSON text of a
value generated for the schema (deterministic: the same request gets the same value; see
`batchline_emulators._answers` for what schemas it handles), ``finish_reason:
"stop"``; ``{"type": "json_object"}`` (or a ``json_schema`` without ``schema``) with a
JSON object such as ``{"answer": "..."}``. A malformed ``response_format`` fails that line
with a 400. Usage counts the schema as prompt and the JSON text as completion, ~4
characters a token; ``max_tokens`` / ``max_completion_tokens`` cut the JSON (``length``).

Faults (`EmulatorConfig`, changeable at runtime with ``POST /_emulator/config``):

- ``invalid_answer_rate``: that fraction of structured *first answers* (picked by a
  seeded hash of the custom_id) is invalid for its schema; the kinds cycle, in input
  order, through ``wrong_type`` (a property, or the root, of a type the schema refuses),
  ``missing_field`` (a required property left out; ``wrong_type`` when none is required)
  and ``not_json`` (prose that is not JSON). A first answer is one to a conversation with
  no ``assistant`` message. A repair (the conversation carries an earlier assistant turn,
  as batchline's repair does) is always answered validly: the model corrects itself when
  told what was wrong. Set it like the other faults: ``EmulatorConfig(
  invalid_answer_rate=0.2)``, ``--config-json '{"invalid_answer_rate": 0.2}'`` or ``POST
  /_emulator/config {"invalid_answer_rate": 0.2}``.
- ``line_fail_rate``: that fraction of lines (picked by a seeded hash of the custom_id)
  fail with HTTP 500 ``server_error``.
- marker ``[emulator:fail=NNN]`` (400 <= NNN <= 599) in the last user message (chat) or in
  the input (embeddings): that line fails with status NNN.
- ``expire_after_seconds``: the completion window (default 24 h). A batch whose lines are
  not all done by then becomes ``expired``: finished lines are in the output/error files
  as usual, the unfinished ones in the error file with ``response: null`` and
  ``error: {"code": "batch_expired", ...}``; they count as failed.
- ``POST /_emulator/expire`` (``{"batch": ID}`` for one, ``{}`` for every batch still
  ``validating`` or ``in_progress``): the batch ends now exactly as if its completion
  window had passed (``expired``, ``expired_at`` now; ``expires_at`` still names the
  window); with ``hold_after_lines: N`` that is "N lines answered, then expired" without
  racing a clock. Answers ``{"expired": [ids]}``; an unknown batch 404 (OpenAI's error
  body), a batch ``finalizing`` (its lines all answered), ``cancelling`` or ended 409
  ``Cannot expire a batch with status '...'``.
- ``expire_after_lines: N``: batches created from then on expire right after their N-th
  line is answered (in processing order), for a test that cannot know the batch id in
  advance; a batch of N lines or fewer completes as usual. With ``expire_next_batches:
  K`` only the next K batches that pass validation do so (each takes one; 0 then, and
  later batches run as usual); null (the default) means every one. So
  ``{"expire_after_lines": 3, "expire_next_batches": 1}`` expires one chunk half done
  and leaves the others alone. A hold short of N puts the expiry off until the release.
- ``batch_fail_next: N``: the next N creates (of an input that would pass validation) make
  a batch that is ``validating``, then ``failed`` as a whole, with no output and
  ``errors.data[0]`` ``{"code": "invalid_request", "message": "Cannot find file
  <input_file_id>, or organization <org> does not have access to it. (emulated
  batch_fail_next)", "param": null, "line": null}`` (the batch-level failure OpenAI gave
  batches whose input it could not read; OpenAI documents no code, this one is the
  emulator's).
- ``api_error_rate`` / ``api_error_next`` with ``api_error_status`` (429 or 5xx): that
  fraction of ``/v1`` calls (a seeded sequence), or the next N calls, answer with that
  error. The answer carries ``retry-after: 0`` and ``retry-after-ms`` (so the SDK retries
  at once instead of backing off for half a second).

Quotas (OpenAI's batch limits; the config holds them as the account's: a change applies
to the next create; ``GET /_emulator/quota`` shows their use):

- ``enqueued_token_limit``: the prompt tokens a model may have enqueued: null (no limit,
  the default), a number for every model, or ``{"<model>": number}`` (``"*"``: every
  model not named; without it those have no limit). A batch's tokens are the sum of its
  lines' prompt tokens, estimated as each answer's ``usage.prompt_tokens`` is (~4
  characters a token, a structured ``response_format`` included; lines that fail count
  too), so a batch whose lines all succeed ends with ``usage.input_tokens`` equal to what
  it held. They count while the batch is ``validating``, ``in_progress`` (held or not) or
  ``finalizing``, as OpenAI counts; a ``cancelling`` or ended batch holds none. A create
  that would pass its model's limit on top of what is enqueued is created all the same
  (``validating``), then ``failed`` with ``errors.data[0]`` ``{"code":
  "token_limit_exceeded", "message": "Enqueued token limit reached for <model> in
  organization <org>. Limit: 2,000,000 enqueued tokens. Please try again once some
  in_progress batches have been completed.", "param": null, "line": null}``, holding no
  tokens. ``quota_exceeded_next: N`` fails the next N creates so, whatever the limit
  (the message then names the limit, or, with none, the tokens enqueued).
- ``batch_creates_per_hour`` (OpenAI's 2,000; null: no limit): a create past it within
  the last hour of the emulator's clock answers 429 ``{"type": "requests", "code":
  "rate_limit_exceeded"}`` with ``retry-after`` (seconds until the oldest create of the
  hour leaves it). The SDK retries a 429 (up to two minutes' ``retry-after``): a test
  sees it with ``max_retries=0``.

Cancel: ``cancelling`` for ``cancel_seconds``, then ``cancelled``. The API reference says
a cancelled batch "will have partial results (if any) available in the output file", and
says nothing about the rest; so lines finished before the cancel request are in the
output/error files and the unfinished ones are in neither (``completed + failed <
total``). Cancelling a batch that already ended answers 409 ``Cannot cancel a batch with
status '...'`` (OpenAI's answer as far as we know; not in the spec), with
``x-should-retry: false`` so that the SDK does not retry it.

A batch keeps the config that was current when it was created (timings, fault rates,
limits); runtime config changes apply to batches created afterwards, and the API error
faults apply at once.

Admin endpoints (no auth, never faulted): ``GET /`` (health check),
``GET|POST /_emulator/config`` (POST merges a JSON object into the config and returns
the config), ``POST /_emulator/reset`` (drops all files and batches, restores the
startup config), ``POST /_emulator/release`` (held batches go on, see below),
``POST /_emulator/expire`` (batches expire now, see Faults),
``GET /_emulator/batches`` (every batch, newest first, with its metadata and an
``emulator`` object saying whether it is ``held``), ``GET /_emulator/stats`` (API calls
seen, errors injected, counts), ``GET /_emulator/quota`` (``{"openai": {"<model>":
{"enqueued_tokens": N, "limit": L}}, "over_quota": <batches failed so>,
"batch_creates": {"last_hour", "limit", "refused"}}``; every model of a batch, or of the
limit, is listed).

Hold (for tests that need a batch "still running"): with ``hold_after_lines: N`` in the
config, batches created from then on answer N lines on schedule and then stay
``in_progress`` until ``POST /_emulator/release`` (``{}`` for all, ``{"batch": ID}`` for
one); the rest then follow at the configured pace. Cancel and expiry apply to a held
batch as to any other, so "N of M answered, then cancelled" needs no race with a clock.

Webhooks: with ``webhook_url`` and ``webhook_secret`` (``whsec_...``) in the config, a
batch that ends sends OpenAI's event to that URL: ``{"id": "evt_...", "object": "event",
"created_at", "type": "batch.completed" | "batch.failed" | "batch.expired" |
"batch.cancelled", "data": {"id": <batch id>}}``, signed as OpenAI signs it (Standard
Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), so the SDK's
``webhooks.unwrap`` takes it. A non-2xx answer or no answer is retried (same
``webhook-id``, signed anew) up to ``webhook_max_attempts`` in all, after
``webhook_retry_seconds``, doubling. A thread moves batches on while a URL is set, so an
event goes out when the batch ends, not at the next request. ``GET /_emulator/webhooks``
lists every event with its attempts.

Every response carries ``x-emulator: batchline-openai``; every chat answer starts with
``[batchline openai emulator]``.

Command line: ``python -m batchline_emulators.openai --host 127.0.0.1 --port P
[--config-json '{...}'] [--verbose]``; serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import random
import re
import secrets
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from batchline_emulators._answers import InvalidAnswers, structured_answer
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
from batchline_emulators._webhooks import WebhookOutbox, secret_key
from batchline_emulators._wsgi import (
    AdminEndpoints,
    HTTPError,
    admin_rules,
    cli_main,
    json_response,
    read_json,
)

EMULATOR_HEADER = ("x-emulator", "batchline-openai")
CONTENT_PREFIX = "[batchline openai emulator]"

COMPLETION_WINDOW_SECONDS = 24 * 3600
BATCH_FILE_TTL_SECONDS = 30 * 24 * 3600  # files with purpose batch expire after 30 days
MAX_REPORTED_ERRORS = 1000
MAX_LIST_BATCHES = 100
MAX_LIST_FILES = 10_000

#: Endpoints the SDK lets a batch target.
KNOWN_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
#: Endpoints the emulator answers.
SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
CREATE_BATCH_KEYS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)

FAIL_MARKER = re.compile(r"\[emulator:fail=(\d{3})\]")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: The statuses `POST /_emulator/expire` ends a batch in (its lines not all answered).
EXPIRABLE = frozenset({"validating", "in_progress"})
#: The statuses whose batches hold their prompt tokens against the enqueued-token limit.
ENQUEUED = frozenset({"validating", "in_progress", "finalizing"})
#: The organization the emulator's quota messages name.
ORGANIZATION = "org-batchlineEmulator0000000"
#: `batch_creates_per_hour` counts the creates of the last hour of the emulator's clock.
CREATE_WINDOW_SECONDS = 3600


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EmulatorConfig:
    """Behaviour of the emulator. Times in seconds, rates are fractions in [0, 1]."""

    seed: int = 0
    validating_seconds: float = 0.1
    lines_per_second: float = 5000.0
    finalizing_seconds: float = 0.1
    cancel_seconds: float = 0.1
    #: None means OpenAI's 24 h completion window.
    expire_after_seconds: float | None = None
    line_fail_rate: float = 0.0
    api_error_rate: float = 0.0
    api_error_status: int = 429
    #: Fail the next N /v1 calls with api_error_status (decremented by each).
    api_error_next: int = 0
    #: `retry-after-ms` on injected errors; None leaves it out (the SDK then backs off).
    api_error_retry_after_ms: int | None = 1
    max_requests: int = 50_000
    #: OpenAI says 200 MB; 200,000,000 is the stricter reading (batchline's own constant).
    max_bytes: int = 200_000_000
    #: Prompt tokens each model may have enqueued (see `ENQUEUED`): None (no limit), a
    #: number for every model, or {model: number} ("*": every model not named; without
    #: it those have no limit). A batch that would pass it is created, then fails.
    enqueued_token_limit: ModelLimit = None
    #: Batch creates in any hour of the emulator's clock (OpenAI: 2,000); more answer 429.
    batch_creates_per_hour: int | None = 2000
    #: Fail the next N batch creates with token_limit_exceeded, whatever the limit
    #: (decremented by each), as a limit lower than the client believes would.
    quota_exceeded_next: int = 0
    #: Vector length for /v1/embeddings when the request has no `dimensions`.
    embedding_dimensions: int = 8
    #: Fraction of structured first answers (picked by a seeded hash of the custom_id)
    #: that are invalid for their schema.
    invalid_answer_rate: float = 0.0
    #: Batches created from now on answer this many lines, then stay in_progress until
    #: `POST /_emulator/release` (None: never held). See `Hold`.
    hold_after_lines: int | None = None
    #: Batches created from now on expire right after answering this many lines, as if
    #: their window had passed then (None: only the window). See `Expiry`.
    expire_after_lines: int | None = None
    #: With `expire_after_lines`: only the next K batches that pass validation expire so
    #: (decremented by each); later ones run as usual. None: every one.
    expire_next_batches: int | None = None
    #: The next N batch creates make a batch that fails validation as a whole (decremented
    #: by each), whatever its input.
    batch_fail_next: int = 0
    #: Where `batch.*` webhook events are POSTed when a batch ends (None: nowhere), signed
    #: with `webhook_secret` (`whsec_` + base64, as OpenAI's dashboard gives it). A
    #: non-2xx answer is retried up to `webhook_max_attempts` times in all, after
    #: `webhook_retry_seconds`, doubling.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_max_attempts: int = 5
    webhook_retry_seconds: float = 0.5

    def merged(self, overrides: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with `overrides` applied; ValueError on unknown keys or bad values."""
        if not isinstance(overrides, Mapping):
            raise ValueError("config overrides must be a JSON object")
        texts = {k: v for k, v in overrides.items() if k in _TEXT_CONFIG}
        for name, value in texts.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"config {name} must be a string or null")
        if texts.get("webhook_secret") is not None:
            try:
                secret_key(texts["webhook_secret"])
            except ValueError as exc:
                raise ValueError(f"config webhook_secret: {exc}") from None
        numbers = {k: v for k, v in overrides.items() if k not in _TEXT_CONFIG}
        merged = merged_config(self, numbers, _CONFIG_RULES)
        merged = dataclasses.replace(merged, **texts)
        if merged.webhook_url and not merged.webhook_secret:
            raise ValueError("config webhook_url needs a webhook_secret to sign with")
        return merged

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# name -> (type, nullable, minimum, maximum)
_CONFIG_RULES: ConfigRules = {
    "seed": (int, False, None, None),
    "validating_seconds": (float, False, 0, None),
    "lines_per_second": (float, False, 1e-9, None),
    "finalizing_seconds": (float, False, 0, None),
    "cancel_seconds": (float, False, 0, None),
    "expire_after_seconds": (float, True, 0, None),
    "line_fail_rate": (float, False, 0, 1),
    "api_error_rate": (float, False, 0, 1),
    "api_error_status": (int, False, 400, 599),
    "api_error_next": (int, False, 0, None),
    "api_error_retry_after_ms": (int, True, 1, None),
    "max_requests": (int, False, 1, None),
    "max_bytes": (int, False, 1, None),
    "enqueued_token_limit": (PerModel, True, 0, None),
    "batch_creates_per_hour": (int, True, 1, None),
    "quota_exceeded_next": (int, False, 0, None),
    "embedding_dimensions": (int, False, 1, 65536),
    "invalid_answer_rate": (float, False, 0, 1),
    "hold_after_lines": (int, True, 0, None),
    "expire_after_lines": (int, True, 0, None),
    "expire_next_batches": (int, True, 0, None),
    "batch_fail_next": (int, False, 0, None),
    "webhook_max_attempts": (int, False, 1, 100),
    "webhook_retry_seconds": (float, False, 0, None),
}
_TEXT_CONFIG = ("webhook_url", "webhook_secret")
#: The webhook event type of each status a batch ends in.
WEBHOOK_EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}


def _file_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "file-" + "".join(secrets.choice(alphabet) for _ in range(22))


def _error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def api_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTTPError:
    """An HTTPError with OpenAI's error body ``{"error": {message, type, param, code}}``."""
    return HTTPError(status, _error_body(message, type_, param, code), headers)


def _http_error_type(status: int) -> tuple[str, str | None]:
    """OpenAI's error `type` and `code` for an HTTP status."""
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class FilePlan:
    """A batch input file as `plan_batch` planned it at upload, for `endpoint` (the url
    of its first line) under `config`: a create from the file with the same endpoint,
    under a config the same but for its countdowns (`_plan_config`), reuses it."""

    endpoint: str
    config: EmulatorConfig
    errors: list[dict[str, Any]]
    model: str | None
    lines: list[LinePlan]  # never changed: each batch takes a copy of the list


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    expires_at: int | None
    #: A `batch` file's plan, made at upload (None: its first line names no endpoint).
    plan: FilePlan | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class LinePlan:
    """One input line, with its outcome decided at create time."""

    custom_id: str
    status_code: int
    body: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Its prompt tokens, counted whatever its outcome: what it enqueues (`_prompt_tokens`).
    enqueued_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code < 400


@dataclass(frozen=True)
class Phase:
    """A batch as seen at one instant."""

    status: str
    processed: int = 0  # lines finished (in processing order)
    expired_lines: int = 0  # unfinished lines failed by expiry
    validated: bool = False
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def ended_at(self) -> float | None:
        for t in (self.completed_at, self.failed_at, self.expired_at, self.cancelled_at):
            if t is not None:
                return t
        return None


@dataclass
class BatchRecord:
    id: str
    seq: int
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    config: EmulatorConfig  # snapshot at create
    output_ttl: int
    errors: list[dict[str, Any]]
    model: str | None
    lines: list[LinePlan]  # processing (shuffled) order
    ok_prefix: list[int] = field(default_factory=list)
    in_prefix: list[int] = field(default_factory=list)
    out_prefix: list[int] = field(default_factory=list)
    cancel_requested_at: float | None = None
    hold: Hold = field(default_factory=Hold)
    expiry: Expiry = field(default_factory=Expiry)
    materialized: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    enqueued_tokens: int = 0  # of all its lines

    def __post_init__(self) -> None:
        ok, tin, tout = [0], [0], [0]
        for line in self.lines:
            good = line.ok
            ok.append(ok[-1] + good)
            tin.append(tin[-1] + (line.prompt_tokens if good else 0))
            tout.append(tout[-1] + (line.completion_tokens if good else 0))
        self.ok_prefix, self.in_prefix, self.out_prefix = ok, tin, tout
        self.enqueued_tokens = sum(line.enqueued_tokens for line in self.lines)

    # ---- timeline
    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def validated_at(self) -> float:
        return self.created + self.config.validating_seconds

    @property
    def lines_end(self) -> float:
        if not self.valid:
            return self.validated_at
        return self.hold.end(self.validated_at, self.config.lines_per_second, len(self.lines))

    @property
    def window_end(self) -> float:
        """Its `expires_at`: the end of the completion window."""
        window = self.config.expire_after_seconds
        return self.created + (COMPLETION_WINDOW_SECONDS if window is None else window)

    @property
    def deadline(self) -> float:
        """When it expires unless done: the window's end, or earlier as a test asked."""
        rate, n = self.config.lines_per_second, len(self.lines)
        return min(self.window_end, self.expiry.at(self.hold, self.validated_at, rate, n))

    def line_done_at(self, index: int) -> float:
        """When the line at processing position `index` (0-based) finishes."""
        rate = self.config.lines_per_second
        return self.hold.finished_at(index, self.validated_at, rate, len(self.lines))

    def lines_done(self, t: float) -> int:
        if not self.valid:
            return 0
        return self.hold.done(t, self.validated_at, self.config.lines_per_second, len(self.lines))

    def enqueued(self, now: float) -> int:
        """The prompt tokens this batch holds against its model's enqueued-token limit at
        `now`: all of them while it is validating, in_progress or finalizing, else none. A
        batch that fails validation (or the limit) never held any."""
        if not self.valid or self.phase(now).status not in ENQUEUED:
            return 0
        return self.enqueued_tokens

    def held(self, now: float) -> bool:
        """Waiting for `POST /_emulator/release` (not canceled, not expired) at `now`."""
        if not self.valid or self.phase(now).status != "in_progress":
            return False
        rate = self.config.lines_per_second
        return self.hold.holding(now, self.validated_at, rate, len(self.lines))

    def phase(self, now: float) -> Phase:
        tv, t_end = self.validated_at, self.lines_end
        n = len(self.lines)
        tc = self.cancel_requested_at
        if tc is not None:
            # Cancel is only accepted while the batch is running, so it wins over expiry.
            validated = self.valid and tc >= tv
            cs = tc + self.config.cancel_seconds
            return Phase(
                status="cancelled" if now >= cs else "cancelling",
                processed=self.lines_done(tc),
                validated=validated,
                in_progress_at=tv if validated else None,
                finalizing_at=t_end if validated and tc >= t_end else None,
                cancelling_at=tc,
                cancelled_at=cs if now >= cs else None,
            )
        dl = self.deadline
        if dl < t_end and now >= dl:
            validated = self.valid and dl >= tv
            done = self.lines_done(dl)
            return Phase(
                status="expired",
                processed=done,
                expired_lines=n - done if validated else 0,
                validated=validated,
                in_progress_at=tv if validated else None,
                expired_at=dl,
            )
        if now < tv:
            return Phase(status="validating")
        if not self.valid:
            return Phase(status="failed", failed_at=tv)
        if now < t_end:
            return Phase(
                status="in_progress",
                processed=self.lines_done(now),
                validated=True,
                in_progress_at=tv,
            )
        t_done = t_end + self.config.finalizing_seconds
        if now < t_done:
            return Phase(
                status="finalizing",
                processed=n,
                validated=True,
                in_progress_at=tv,
                finalizing_at=t_end,
            )
        return Phase(
            status="completed",
            processed=n,
            validated=True,
            in_progress_at=tv,
            finalizing_at=t_end,
            completed_at=t_done,
        )

    def to_api(self, now: float) -> dict[str, Any]:
        ph = self.phase(now)
        k = ph.processed
        completed = self.ok_prefix[k]

        def ts(t: float | None) -> int | None:
            return None if t is None else int(t)

        input_tokens, output_tokens = self.in_prefix[k], self.out_prefix[k]
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model if ph.validated else None,
            "errors": ({"object": "list", "data": self.errors} if ph.status == "failed" else None),
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": ph.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "in_progress_at": ts(ph.in_progress_at),
            "expires_at": int(self.window_end),
            "finalizing_at": ts(ph.finalizing_at),
            "completed_at": ts(ph.completed_at),
            "failed_at": ts(ph.failed_at),
            "expired_at": ts(ph.expired_at),
            "cancelling_at": ts(ph.cancelling_at),
            "cancelled_at": ts(ph.cancelled_at),
            "request_counts": {
                "total": len(self.lines) if ph.validated else 0,
                "completed": completed,
                "failed": (k - completed) + ph.expired_lines,
            },
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "metadata": self.metadata,
        }

    # ---- results
    def envelope(self, index: int, line: LinePlan) -> dict[str, Any]:
        body = dict(line.body)
        if "created" in body:
            body["created"] = int(self.line_done_at(index))
        return {
            "id": "batch_req_" + hex_digest(self.id, line.custom_id),
            "custom_id": line.custom_id,
            "response": {
                "status_code": line.status_code,
                "request_id": hex_digest("request", self.id, line.custom_id),
                "body": body,
            },
            "error": None,
        }

    def result_files(self, ph: Phase) -> tuple[bytes, bytes]:
        """(output JSONL, error JSONL) for a batch that reached a terminal phase."""
        out: list[bytes] = []
        err: list[bytes] = []
        for index, line in enumerate(self.lines[: ph.processed]):
            (out if line.ok else err).append(orjson.dumps(self.envelope(index, line)))
        if ph.expired_lines:
            for line in self.lines[ph.processed :]:
                err.append(
                    orjson.dumps(
                        {
                            "id": "batch_req_" + hex_digest(self.id, line.custom_id),
                            "custom_id": line.custom_id,
                            "response": None,
                            "error": {
                                "code": "batch_expired",
                                "message": "This request could not be executed before the "
                                "completion window expired.",
                            },
                        }
                    )
                )
        return (
            b"".join(x + b"\n" for x in out),
            b"".join(x + b"\n" for x in err),
        )


@dataclass
class EmulatorState:
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, BatchRecord] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)  # batches not yet materialized
    next_seq: int = 0
    api_requests: int = 0
    injected_errors: int = 0
    over_quota: int = 0  # batches failed with token_limit_exceeded
    creates_refused: int = 0  # creates answered 429 for batch_creates_per_hour


# --------------------------------------------------------------------------- answers


def _text_of(content: Any) -> str:
    """The text of a chat message `content` (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _marker_status(text: str) -> int | None:
    for match in FAIL_MARKER.finditer(text):
        status = int(match.group(1))
        if 400 <= status <= 599:
            return status
    return None


def _line_error(status: int, message: str, param: str | None = None) -> LinePlan:
    type_, code = _http_error_type(status)
    return LinePlan(custom_id="", status_code=status, body=_error_body(message, type_, param, code))


RESPONSE_FORMATS = ("text", "json_object", "json_schema")
SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _response_format(body: dict[str, Any]) -> tuple[bool, Any] | LinePlan:
    """(whether the answer is JSON, its JSON Schema or None for any object), or the 400
    line when `response_format` is malformed."""
    fmt = body.get("response_format")
    if fmt is None:
        return False, None
    if not isinstance(fmt, dict):
        return _line_error(
            400, "Invalid type for 'response_format': expected an object.", "response_format"
        )
    kind = fmt.get("type")
    if kind not in RESPONSE_FORMATS:
        supported = ", ".join(repr(k) for k in RESPONSE_FORMATS)
        return _line_error(
            400,
            f"Invalid value: {kind!r}. Supported values are: {supported}.",
            "response_format.type",
        )
    if kind != "json_schema":
        return kind == "json_object", None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        return _line_error(
            400,
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        return _line_error(
            400,
            "Invalid 'response_format.json_schema.name': expected a string of 1 to 64 "
            "characters a-z, A-Z, 0-9, _ or -.",
            "response_format.json_schema.name",
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        return _line_error(
            400,
            "Invalid type for 'response_format.json_schema.schema': expected an object.",
            "response_format.json_schema.schema",
        )
    return True, schema


def _has_assistant_turn(messages: list[Any]) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)


def _chat_answer(body: dict[str, Any], custom_id: str, invalid: InvalidAnswers) -> LinePlan:
    messages = body["messages"]
    last_user = _last_user_text(messages)
    fmt = _response_format(body)
    if isinstance(fmt, LinePlan):
        return fmt
    structured, schema = fmt
    limit_param = next(
        (p for p in ("max_completion_tokens", "max_tokens") if body.get(p) is not None), None
    )
    limit: int | None = None
    if limit_param is not None:
        value = body[limit_param]
        if isinstance(value, bool) or not isinstance(value, int):
            return _line_error(
                400, f"Invalid type for '{limit_param}': expected an integer.", limit_param
            )
        if value < 1:
            return _line_error(
                400,
                f"Invalid '{limit_param}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                limit_param,
            )
        limit = value
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        n = 1
    snippet = " ".join(last_user.split())
    if len(snippet) > 60:
        snippet = snippet[:60] + "..."
    digest = hex_digest(orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode(), n=8)
    content = f"{CONTENT_PREFIX} answer to: {snippet} (#{digest})"
    if structured:
        kind = invalid.kind(custom_id, first_answer=not _has_assistant_turn(messages))
        content = structured_answer(schema, f"openai/{custom_id}/{digest}", kind).text
    finish_reason = "stop"
    completion_tokens = tokens(len(content))
    if limit is not None and completion_tokens > limit:
        content = content[: limit * 4]
        completion_tokens = limit
        finish_reason = "length"
    prompt_tokens = _prompt_tokens(body, "/v1/chat/completions")
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    answer = {
        "id": "chatcmpl-" + hex_digest("chatcmpl", custom_id, digest, n=29),
        "object": "chat.completion",
        "created": 0,  # set to the line's completion time when the results are written
        "model": body["model"],
        "choices": [dict(choice, index=i) for i in range(n)],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * n,
            "total_tokens": prompt_tokens + completion_tokens * n,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_batchline_emulator",
    }
    return LinePlan(custom_id, 200, answer, prompt_tokens, completion_tokens * n)


def _prompt_tokens(body: dict[str, Any], endpoint: str) -> int:
    """A request's prompt tokens as its answer's `usage.prompt_tokens` counts them: ~4
    characters a token of the messages' text, a structured `response_format` included
    (chat); each string input's estimate, or each token array's length (embeddings)."""
    if endpoint == "/v1/embeddings":
        inputs = _embedding_inputs(body.get("input")) or []
        return sum(tokens(len(x)) if isinstance(x, str) else len(x) for x in inputs)
    messages = body.get("messages")
    chars = sum(
        len(_text_of(m.get("content")))
        for m in (messages if isinstance(messages, list) else [])
        if isinstance(m, dict)
    )
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        chars += len(orjson.dumps(fmt))  # the schema is part of the prompt
    return tokens(chars)


def _embedding_inputs(value: Any) -> list[str | list[int]] | None:
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value or len(value) > 2048:
        return None
    if all(isinstance(x, str) and x for x in value):
        return list(value)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return [list(value)]
    if all(
        isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        for x in value
    ):
        return list(value)
    return None


def _embedding_answer(body: dict[str, Any], custom_id: str, default_dims: int) -> LinePlan:
    inputs = _embedding_inputs(body["input"])
    if inputs is None:
        return _line_error(400, "Invalid 'input': expected a non-empty string or array.", "input")
    dims = body.get("dimensions", default_dims)
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= 65536:
        return _line_error(400, "Invalid 'dimensions': expected a positive integer.", "dimensions")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        return _line_error(
            400, "Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format"
        )
    data = []
    for index, item in enumerate(inputs):
        seed = hashlib.sha256(orjson.dumps(item)).digest()
        rng = random.Random(seed)
        vector = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        vector = [round(x / norm, 8) for x in vector]
        embedding: list[float] | str = vector
        if fmt == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt_tokens = _prompt_tokens(body, "/v1/embeddings")
    answer = {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return LinePlan(custom_id, 200, answer, prompt_tokens, 0)


# --------------------------------------------------------------------------- validation


def _verror(
    code: str, message: str, param: str | None = None, line: int | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _missing(param: str, line: int) -> dict[str, Any]:
    return _verror(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", param, line
    )


_BODY_REQUIRED = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/embeddings": ("model", "input"),
}


def plan_batch(
    content: bytes, endpoint: str, config: EmulatorConfig
) -> tuple[list[dict[str, Any]], str | None, list[LinePlan]]:
    """Validate an input file; (errors, model, lines in processing order)."""
    if len(content) > config.max_bytes:
        return (
            [
                _verror(
                    "file_too_large",
                    f"The batch input file is larger than the {config.max_bytes} byte maximum.",
                )
            ],
            None,
            [],
        )
    raw_lines = content.split(b"\n")
    if raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()  # the trailing newline
    if not raw_lines:
        return [_verror("empty_file", "The batch input file is empty.")], None, []
    if len(raw_lines) > config.max_requests:
        return (
            [
                _verror(
                    "request_limit_exceeded",
                    f"The batch input file has {len(raw_lines)} requests; a batch may have at "
                    f"most {config.max_requests}.",
                )
            ],
            None,
            [],
        )

    errors: list[dict[str, Any]] = []
    parsed: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in enumerate(raw_lines, start=1):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            errors.append(
                _verror(
                    "invalid_json_line", "This line is not parseable as valid JSON.", None, number
                )
            )
            continue
        line_errors: list[dict[str, Any]] = []
        for key in ("custom_id", "method", "url", "body"):
            if obj.get(key) is None:
                line_errors.append(_missing(key, number))
        custom_id = obj.get("custom_id")
        if custom_id is not None and (not isinstance(custom_id, str) or not custom_id):
            line_errors.append(
                _verror(
                    "invalid_type",
                    "Invalid 'custom_id': expected a non-empty string.",
                    "custom_id",
                    number,
                )
            )
        method = obj.get("method")
        if method is not None and method != "POST":
            line_errors.append(
                _verror(
                    "invalid_value",
                    f"Invalid 'method': {method!r}. Batch requests must use POST.",
                    "method",
                    number,
                )
            )
        url = obj.get("url")
        if url is not None and url != endpoint:
            line_errors.append(
                _verror(
                    "invalid_url",
                    f"The URL provided for this request ({url!r}) does not match the batch "
                    f"endpoint {endpoint!r}.",
                    "url",
                    number,
                )
            )
        body = obj.get("body")
        if body is not None and not isinstance(body, dict):
            line_errors.append(
                _verror("invalid_type", "Invalid 'body': expected an object.", "body", number)
            )
        if isinstance(body, dict):
            for key in _BODY_REQUIRED.get(endpoint, ()):
                value = body.get(key)
                if value is None or value == "" or value == []:
                    line_errors.append(_missing(f"body.{key}", number))
            if "messages" in _BODY_REQUIRED.get(endpoint, ()) and not isinstance(
                body.get("messages", []), list
            ):
                line_errors.append(
                    _verror(
                        "invalid_type",
                        "Invalid 'body.messages': expected an array.",
                        "body.messages",
                        number,
                    )
                )
            body_model = body.get("model")
            if isinstance(body_model, str) and body_model:
                if model is None:
                    model = body_model
                elif body_model != model:
                    line_errors.append(
                        _verror(
                            "mismatched_model",
                            f"The provided model {body_model!r} does not match the model "
                            f"{model!r} used by the other requests in this batch.",
                            "body.model",
                            number,
                        )
                    )
            elif body_model is not None:
                line_errors.append(
                    _verror(
                        "invalid_type",
                        "Invalid 'body.model': expected a string.",
                        "body.model",
                        number,
                    )
                )
        if isinstance(custom_id, str) and custom_id:
            if custom_id in seen:
                line_errors.append(
                    _verror(
                        "duplicate_custom_id",
                        "The custom_id for this request is a duplicate of another request. The "
                        "custom_id parameter must be unique for each request in a batch.",
                        "custom_id",
                        number,
                    )
                )
            seen.add(custom_id)
        if line_errors:
            errors.extend(line_errors)
            continue
        assert isinstance(custom_id, str) and isinstance(body, dict)
        parsed.append((custom_id, body))
    if errors:
        return errors[:MAX_REPORTED_ERRORS], None, []

    lines: list[LinePlan] = []
    invalid = InvalidAnswers(config.invalid_answer_rate, config.seed)
    for custom_id, body in parsed:
        text = (
            _last_user_text(body["messages"])
            if endpoint == "/v1/chat/completions"
            else orjson.dumps(body.get("input")).decode()
        )
        status = _marker_status(text)
        if status is not None:
            plan = _line_error(
                status, f"Emulated failure with status {status} (marker in the request)."
            )
        elif config.line_fail_rate > 0 and fraction(config.seed, "line", custom_id) < (
            config.line_fail_rate
        ):
            plan = _line_error(
                500,
                "The server had an error while processing your request. Sorry about that! "
                "(emulated line_fail_rate)",
            )
        elif endpoint == "/v1/chat/completions":
            plan = _chat_answer(body, custom_id, invalid)
        else:
            plan = _embedding_answer(body, custom_id, config.embedding_dimensions)
        plan.custom_id = custom_id
        plan.enqueued_tokens = _prompt_tokens(body, endpoint)
        lines.append(plan)
    order_seed = hex_digest(config.seed, "order", *(line.custom_id for line in lines))
    random.Random(order_seed).shuffle(lines)
    return [], model, lines


def _plan_config(config: EmulatorConfig) -> EmulatorConfig:
    """`config` as far as a file's plan depends on it: its countdowns (taken down by
    calls and creates) left out."""
    return dataclasses.replace(config, api_error_next=0, quota_exceeded_next=0, batch_fail_next=0)


def _plan_upload(content: bytes, config: EmulatorConfig) -> FilePlan | None:
    """Plan an uploaded batch file for the endpoint its first line names (None: it names
    none the emulator supports; a create then plans it)."""
    first = content.split(b"\n", 1)[0]
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    endpoint = head.get("url") if isinstance(head, dict) else None
    if endpoint not in SUPPORTED_ENDPOINTS:
        return None
    errors, model, lines = plan_batch(content, endpoint, config)
    return FilePlan(endpoint, config, errors, model, lines)


# --------------------------------------------------------------------------- the app


def _url_map() -> Map:
    return Map(
        [
            Rule("/v1/files", endpoint="create_file", methods=["POST"]),
            Rule("/v1/files", endpoint="list_files", methods=["GET"]),
            Rule("/v1/files/<file_id>", endpoint="retrieve_file", methods=["GET"]),
            Rule("/v1/files/<file_id>", endpoint="delete_file", methods=["DELETE"]),
            Rule("/v1/files/<file_id>/content", endpoint="file_content", methods=["GET"]),
            Rule("/v1/batches", endpoint="create_batch", methods=["POST"]),
            Rule("/v1/batches", endpoint="list_batches", methods=["GET"]),
            Rule("/v1/batches/<batch_id>", endpoint="retrieve_batch", methods=["GET"]),
            Rule("/v1/batches/<batch_id>/cancel", endpoint="cancel_batch", methods=["POST"]),
            *admin_rules(),
            Rule("/_emulator/batches", endpoint="admin_batches", methods=["GET"]),
            Rule("/_emulator/stats", endpoint="admin_stats", methods=["GET"]),
            Rule("/_emulator/webhooks", endpoint="admin_webhooks", methods=["GET"]),
        ],
        strict_slashes=False,
        merge_slashes=False,
    )


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise api_error(
            400,
            f"Invalid '{name}': expected an integer, but got {raw!r} instead.",
            param=name,
            code="invalid_type",
        ) from None
    if not lo <= value <= hi:
        raise api_error(
            400,
            f"Invalid '{name}': expected a value between {lo} and {hi}, but got {value} instead.",
            param=name,
            code="invalid_value",
        )
    return value


def _page(items: list[Any], after: str | None, limit: int) -> tuple[list[Any], bool]:
    """Cursor pagination over objects with an `id`; an unknown cursor gives an empty page."""
    if after:
        ids = [item.id for item in items]
        if after not in ids:
            return [], False
        items = items[ids.index(after) + 1 :]
    return items[:limit], len(items) > limit


class OpenAIBatchEmulator(AdminEndpoints):
    """The WSGI app. `config` and `state` may be read (and config replaced) by tests."""

    emulator_name = EMULATOR_HEADER[1]
    api_error = staticmethod(api_error)

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.startup_config = config
        self.config = config
        self.clock = clock
        self.state = EmulatorState()
        self.lock = threading.RLock()
        self.url_map = _url_map()
        self.outbox = WebhookOutbox(self._tick)
        if config.webhook_url:
            self.outbox.ensure_started()

    # ---- WSGI
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
            response = api_error(
                500, "The emulator failed while handling the request.", "server_error"
            ).response()
        response.headers[EMULATOR_HEADER[0]] = EMULATOR_HEADER[1]
        response.headers.setdefault("x-request-id", "req_" + secrets.token_hex(16))
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        is_api = request.path.startswith("/v1/") or request.path == "/v1"
        if is_api:
            self._authenticate(request)
            with self.lock:
                self._maybe_inject_fault()
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed:
            raise api_error(405, f"Method not allowed ({request.method} {request.path}).") from None
        except HTTPException:
            raise api_error(404, f"Invalid URL ({request.method} {request.path})") from None
        handler: Callable[..., Response] = getattr(self, f"h_{endpoint}")
        response = handler(request, **args)
        if self.config.webhook_url:
            self.outbox.ensure_started()  # a config that names a webhook URL
        return response

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise api_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )

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
        if not inject:
            return
        self.state.injected_errors += 1
        status = cfg.api_error_status
        headers = {"retry-after": "0"}
        if cfg.api_error_retry_after_ms is not None:
            headers["retry-after-ms"] = str(cfg.api_error_retry_after_ms)
        if status == 429:
            raise api_error(
                429,
                "Rate limit reached for requests (emulated).",
                "requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        type_, code = _http_error_type(status)
        raise api_error(
            status,
            "The server had an error while processing your request. Sorry about that! (emulated)",
            type_,
            code=code,
            headers=headers,
        )

    def _tick(self) -> None:
        """Move every batch on (the webhook thread's round): ended ones send events."""
        with self.lock:
            self._advance_all(self.clock())

    # ---- state helpers (call with the lock held)
    def _advance_all(self, now: float) -> None:
        for batch_id in list(self.state.active):
            self._advance(self.state.batches[batch_id], now)

    def _advance(self, batch: BatchRecord, now: float) -> None:
        if batch.materialized:
            return
        ph = batch.phase(now)
        if not ph.terminal:
            return
        batch.materialized = True
        self.state.active.discard(batch.id)
        self._send_webhook(batch, ph, now)
        if ph.status == "failed":
            return
        output, errors = batch.result_files(ph)
        ended = ph.ended_at
        created = int(now if ended is None else ended)
        for content, kind in ((output, "output"), (errors, "error")):
            if not content:
                continue
            stored = StoredFile(
                id=_file_id(),
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                content=content,
                created_at=created,
                expires_at=created + batch.output_ttl,
            )
            self.state.files[stored.id] = stored
            if kind == "output":
                batch.output_file_id = stored.id
            else:
                batch.error_file_id = stored.id

    def _send_webhook(self, batch: BatchRecord, ph: Phase, now: float) -> None:
        """Queue the `batch.*` event of a batch that just ended, when a URL is configured
        (the current config: OpenAI's webhook endpoints belong to the project)."""
        cfg = self.config
        if not cfg.webhook_url or not cfg.webhook_secret:
            return
        ended = ph.ended_at
        event = {
            "id": "evt_" + secrets.token_hex(16),
            "object": "event",
            "created_at": int(now if ended is None else ended),
            "type": WEBHOOK_EVENTS[ph.status],
            "data": {"id": batch.id},
        }
        self.outbox.enqueue(
            cfg.webhook_url,
            cfg.webhook_secret,
            event,
            max_attempts=cfg.webhook_max_attempts,
            retry_seconds=cfg.webhook_retry_seconds,
        )

    def _file(self, file_id: str) -> StoredFile:
        stored = self.state.files.get(file_id)
        if stored is None:
            raise api_error(404, f"No such File object: {file_id}", param="id")
        return stored

    def _batch(self, batch_id: str) -> BatchRecord:
        batch = self.state.batches.get(batch_id)
        if batch is None:
            raise api_error(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    # ---- files
    def h_create_file(self, request: Request) -> Response:
        purpose = request.form.get("purpose")
        upload = request.files.get("file")
        if not purpose:
            raise api_error(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in UPLOAD_PURPOSES:
            raise api_error(
                400,
                f"Invalid value: {purpose!r}. Supported values are: "
                + ", ".join(repr(p) for p in UPLOAD_PURPOSES)
                + ".",
                param="purpose",
                code="invalid_value",
            )
        if upload is None:
            raise api_error(
                400,
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        filename = upload.filename or "upload"
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise api_error(
                400,
                f"Invalid file format for Batch API. Must be .jsonl (got {filename!r}).",
                param="file",
            )
        content = upload.read()
        ttl: int | None = BATCH_FILE_TTL_SECONDS if purpose == "batch" else None
        anchor = request.form.get("expires_after[anchor]")
        seconds = request.form.get("expires_after[seconds]")
        if anchor is not None or seconds is not None:
            ttl = _expires_after_seconds(anchor, seconds, "expires_after")
        # Planned now, not at create (as OpenAI answers a create at once): the file is
        # immutable and the config a frozen snapshot, so without the lock.
        plan = _plan_upload(content, self.config) if purpose == "batch" else None
        with self.lock:
            now = int(self.clock())
            stored = StoredFile(
                id=_file_id(),
                filename=filename,
                purpose=purpose,
                content=content,
                created_at=now,
                expires_at=None if ttl is None else now + ttl,
                plan=plan,
            )
            self.state.files[stored.id] = stored
            return json_response(stored.to_api())

    def h_list_files(self, request: Request) -> Response:
        limit = _int_param(request, "limit", MAX_LIST_FILES, 1, MAX_LIST_FILES)
        order = request.args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise api_error(
                400, f"Invalid 'order': {order!r}.", param="order", code="invalid_value"
            )
        purpose = request.args.get("purpose")
        with self.lock:
            self._advance_all(self.clock())
            files = list(self.state.files.values())
            if order == "desc":
                files.reverse()
            if purpose:
                files = [f for f in files if f.purpose == purpose]
            page, has_more = _page(files, request.args.get("after"), limit)
            return json_response(
                {
                    "object": "list",
                    "data": [f.to_api() for f in page],
                    "first_id": page[0].id if page else None,
                    "last_id": page[-1].id if page else None,
                    "has_more": has_more,
                }
            )

    def h_retrieve_file(self, request: Request, file_id: str) -> Response:
        with self.lock:
            self._advance_all(self.clock())
            return json_response(self._file(file_id).to_api())

    def h_delete_file(self, request: Request, file_id: str) -> Response:
        with self.lock:
            self._advance_all(self.clock())
            self._file(file_id)
            del self.state.files[file_id]
            return json_response({"id": file_id, "object": "file", "deleted": True})

    def h_file_content(self, request: Request, file_id: str) -> Response:
        with self.lock:
            self._advance_all(self.clock())
            stored = self._file(file_id)
        return Response(stored.content, mimetype="application/octet-stream")

    # ---- batches
    def h_create_batch(self, request: Request) -> Response:
        try:
            body = read_json(request)
        except ValueError:
            raise api_error(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise api_error(400, "The request body must be a JSON object.")
        unknown = sorted(set(body) - CREATE_BATCH_KEYS)
        if unknown:
            raise api_error(
                400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
            )
        for key in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(key):
                raise api_error(
                    400,
                    f"Missing required parameter: '{key}'.",
                    param=key,
                    code="missing_required_parameter",
                )
        endpoint = body["endpoint"]
        if endpoint not in KNOWN_ENDPOINTS:
            raise api_error(
                400,
                f"Invalid value: {endpoint!r}. Supported values are: "
                + ", ".join(repr(e) for e in KNOWN_ENDPOINTS)
                + ".",
                param="endpoint",
                code="invalid_value",
            )
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise api_error(
                400,
                f"The batchline OpenAI emulator does not support endpoint {endpoint!r}; it "
                f"supports {', '.join(SUPPORTED_ENDPOINTS)}.",
                param="endpoint",
                code="unsupported_endpoint",
            )
        if body["completion_window"] != "24h":
            raise api_error(
                400,
                f"Invalid value: {body['completion_window']!r}. Supported values are: '24h'.",
                param="completion_window",
                code="invalid_value",
            )
        metadata = _check_metadata(body.get("metadata"))
        output_ttl = BATCH_FILE_TTL_SECONDS
        oea = body.get("output_expires_after")
        if oea is not None:
            if not isinstance(oea, dict):
                raise api_error(
                    400,
                    "Invalid 'output_expires_after': expected an object.",
                    param="output_expires_after",
                    code="invalid_type",
                )
            output_ttl = _expires_after_seconds(
                oea.get("anchor"), oea.get("seconds"), "output_expires_after"
            )
        input_file_id = body["input_file_id"]
        with self.lock:
            stored = self.state.files.get(input_file_id)
            if stored is None:
                raise api_error(404, f"No such File object: {input_file_id}", param="input_file_id")
            if stored.purpose != "batch":
                raise api_error(
                    400,
                    f"Invalid 'input_file_id': {input_file_id!r} has purpose "
                    f"{stored.purpose!r}; a batch needs a file with purpose 'batch'.",
                    param="input_file_id",
                    code="invalid_value",
                )
            content, config, planned = stored.content, self.config, stored.plan
        if (
            planned is not None
            and planned.endpoint == endpoint
            and _plan_config(planned.config) == _plan_config(config)
        ):
            errors, model, lines = list(planned.errors), planned.model, list(planned.lines)
        else:  # not planned at upload, or a fault configured since: plan without the lock
            errors, model, lines = plan_batch(content, endpoint, config)
        with self.lock:
            now = self.clock()
            self._check_create_rate(now)
            if not errors and model is not None:
                wanted = sum(line.enqueued_tokens for line in lines)
                errors = self._token_limit_errors(model, wanted, now)
            if not errors:
                errors = self._forced_failure(input_file_id)
            expiry = Expiry()
            if not errors:
                expiry = self._early_expiry()
            seq = self.state.next_seq
            self.state.next_seq += 1
            batch = BatchRecord(
                id="batch_" + secrets.token_hex(16),
                seq=seq,
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window="24h",
                metadata=metadata,
                created=now,
                config=config,
                output_ttl=output_ttl,
                errors=errors,
                model=model,
                lines=[] if errors else lines,
                hold=Hold(config.hold_after_lines),
                expiry=expiry,
            )
            self.state.batches[batch.id] = batch
            self.state.active.add(batch.id)
            return json_response(batch.to_api(batch.created))

    # ---- quotas (call with the lock held)
    def _check_create_rate(self, now: float) -> None:
        """429 when `batch_creates_per_hour` batches were created in the last hour."""
        per_hour = self.config.batch_creates_per_hour
        since = now - CREATE_WINDOW_SECONDS
        recent = sorted(b.created for b in self.state.batches.values() if b.created > since)
        if per_hour is None or len(recent) < per_hour:
            return
        self.state.creates_refused += 1
        # Once this create leaves the hour, per_hour - 1 remain: room for one more.
        wait = max(1, math.ceil(recent[-per_hour] - since))
        # OpenAI's rate-limit shape (type "requests", code "rate_limit_exceeded") and
        # wording ("Rate limit reached for ... on requests per min (RPM): Limit ..., Used
        # ..., Requested 1. Please try again in ...s."), for its 2,000 batch creates an hour.
        raise api_error(
            429,
            f"Rate limit reached for batch creation in organization {ORGANIZATION} on "
            f"requests per hour: Limit {per_hour:,}, Used {len(recent):,}, Requested 1. "
            f"Please try again in {wait}s.",
            "requests",
            code="rate_limit_exceeded",
            headers={"retry-after": str(wait)},
        )

    def _enqueued_tokens(self, model: str, now: float) -> int:
        return sum(b.enqueued(now) for b in self.state.batches.values() if b.model == model)

    def _token_limit_errors(self, model: str, wanted: int, now: float) -> list[dict[str, Any]]:
        """The batch's `errors` when `wanted` more prompt tokens of `model` would pass its
        enqueued-token limit, or a test asked for that with `quota_exceeded_next`; else []."""
        cfg = self.config
        limit = limit_for(cfg.enqueued_token_limit, model)
        enqueued = self._enqueued_tokens(model, now)
        if cfg.quota_exceeded_next > 0:
            self.config = dataclasses.replace(cfg, quota_exceeded_next=cfg.quota_exceeded_next - 1)
        elif limit is None or enqueued + wanted <= limit:
            return []
        self.state.over_quota += 1
        # Code and message as OpenAI answers them (openai/openai-python#2084: "Enqueued
        # token limit reached for gpt-4o-mini in organization org-... Limit: 2,000,000
        # enqueued tokens. Please try again once some in_progress batches have been
        # completed.", param and line null), in the spec's Batch.errors: {"object": "list",
        # "data": [BatchError {code, message, param, line}]} (reference/openai/openapi.yaml).
        # Forced with no limit set, it names the tokens enqueued: a limit this batch breaks.
        shown = enqueued if limit is None else limit
        message = (
            f"Enqueued token limit reached for {model} in organization {ORGANIZATION}. "
            f"Limit: {shown:,} enqueued tokens. Please try again once some in_progress "
            "batches have been completed."
        )
        return [_verror("token_limit_exceeded", message)]

    def _forced_failure(self, input_file_id: str) -> list[dict[str, Any]]:
        """The `errors` of a batch that `batch_fail_next` fails at validation; else []."""
        cfg = self.config
        if cfg.batch_fail_next <= 0:
            return []
        self.config = dataclasses.replace(cfg, batch_fail_next=cfg.batch_fail_next - 1)
        # The batch-level failure OpenAI gave batches whose input it could not read
        # (tobert/kaibo#169: "Cannot find file file-..., or organization org-... does not
        # have access to it."); the code is the emulator's own, as OpenAI documents none.
        message = (
            f"Cannot find file {input_file_id}, or organization {ORGANIZATION} does not have "
            "access to it. (emulated batch_fail_next)"
        )
        return [_verror("invalid_request", message)]

    def _early_expiry(self) -> Expiry:
        """The `Expiry` a batch created now takes (`expire_after_lines`), counting it
        against `expire_next_batches`."""
        cfg = self.config
        expiry, left = early_expiry(cfg.expire_after_lines, cfg.expire_next_batches)
        if left != cfg.expire_next_batches:
            self.config = dataclasses.replace(cfg, expire_next_batches=left)
        return expiry

    def expire(self, batch_id: str | None, now: float) -> list[str]:
        self._advance_all(now)
        if batch_id is not None:
            batch = self._batch(batch_id)
            status = batch.phase(now).status
            if status not in EXPIRABLE:
                raise api_error(
                    409,
                    f"Cannot expire a batch with status '{status}'.",
                    headers={"x-should-retry": "false"},
                )
            batches = [batch]
        else:
            running = (b for b in self.state.batches.values() if b.phase(now).status in EXPIRABLE)
            batches = sorted(running, key=lambda b: b.seq)
        for batch in batches:
            batch.expiry.requested_at = now
            self._advance(batch, now)  # its files, and its webhook event
        return [b.id for b in batches]

    def quota(self) -> dict[str, Any]:
        """Per model: the prompt tokens enqueued now and the limit; the batch creates of the
        last hour and their limit; how many creates were refused or failed for either."""
        now = self.clock()
        limits = self.config.enqueued_token_limit
        models = {b.model for b in self.state.batches.values() if b.model}
        if isinstance(limits, dict):
            models |= set(limits) - {ANY_MODEL}
        since = now - CREATE_WINDOW_SECONDS
        return {
            "openai": {
                m: {"enqueued_tokens": self._enqueued_tokens(m, now), "limit": limit_for(limits, m)}
                for m in sorted(models)
            },
            "over_quota": self.state.over_quota,
            "batch_creates": {
                "last_hour": sum(1 for b in self.state.batches.values() if b.created > since),
                "limit": self.config.batch_creates_per_hour,
                "refused": self.state.creates_refused,
            },
        }

    def h_list_batches(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 20, 1, MAX_LIST_BATCHES)
        with self.lock:
            now = self.clock()
            self._advance_all(now)
            batches = sorted(self.state.batches.values(), key=lambda b: b.seq, reverse=True)
            page, has_more = _page(batches, request.args.get("after"), limit)
            return json_response(
                {
                    "object": "list",
                    "data": [b.to_api(now) for b in page],
                    "first_id": page[0].id if page else None,
                    "last_id": page[-1].id if page else None,
                    "has_more": has_more,
                }
            )

    def h_retrieve_batch(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            now = self.clock()
            self._advance_all(now)
            return json_response(self._batch(batch_id).to_api(now))

    def h_cancel_batch(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            now = self.clock()
            self._advance_all(now)
            batch = self._batch(batch_id)
            status = batch.phase(now).status
            if status in TERMINAL:
                raise api_error(
                    409,
                    f"Cannot cancel a batch with status '{status}'.",
                    headers={"x-should-retry": "false"},
                )
            if status != "cancelling":
                batch.cancel_requested_at = now
            self._advance(batch, now)  # cancel_seconds may be 0
            return json_response(batch.to_api(now))

    # ---- admin
    def h_admin_batches(self, request: Request) -> Response:
        with self.lock:
            now = self.clock()
            self._advance_all(now)
            batches = sorted(self.state.batches.values(), key=lambda b: b.seq, reverse=True)
            data = [{**b.to_api(now), "emulator": {"held": b.held(now)}} for b in batches]
            return json_response({"object": "list", "data": data})

    def holds(self) -> Iterable[tuple[str, Hold]]:
        return [(b.id, b.hold) for b in self.state.batches.values()]

    def h_admin_webhooks(self, request: Request) -> Response:
        """Every webhook event queued, oldest first, with its delivery attempts."""
        return json_response({"object": "list", "data": self.outbox.deliveries()})

    def h_admin_stats(self, request: Request) -> Response:
        with self.lock:
            return json_response(
                {
                    "api_requests": self.state.api_requests,
                    "injected_errors": self.state.injected_errors,
                    "files": len(self.state.files),
                    "batches": len(self.state.batches),
                }
            )

    def reset(self) -> None:
        """Drop all files and batches and restore the startup config."""
        with self.lock:
            self.state = EmulatorState()
            self.config = self.startup_config
            self.outbox.clear()


def _expires_after_seconds(anchor: Any, seconds: Any, param: str) -> int:
    if anchor != "created_at":
        raise api_error(
            400,
            f"Invalid '{param}.anchor': expected 'created_at'.",
            param=f"{param}.anchor",
            code="invalid_value",
        )
    try:
        value = int(seconds)
    except (TypeError, ValueError):
        value = -1
    if not 3600 <= value <= 2_592_000:
        raise api_error(
            400,
            f"Invalid '{param}.seconds': expected an integer between 3600 and 2592000.",
            param=f"{param}.seconds",
            code="invalid_value",
        )
    return value


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise api_error(
            400, "Invalid 'metadata': expected an object.", param="metadata", code="invalid_type"
        )
    if len(metadata) > 16:
        raise api_error(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise api_error(
                400,
                f"Invalid 'metadata': key {key[:20]!r}... is longer than 64 characters.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(value, str):
            raise api_error(
                400,
                f"Invalid 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > 512:
            raise api_error(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length 512, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return dict(metadata)


def make_app(
    config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.time
) -> OpenAIBatchEmulator:
    """The emulator as a WSGI app (`app.config`, `app.state`, `app.reset()`)."""
    return OpenAIBatchEmulator(config or EmulatorConfig(), clock)


def main(argv: list[str] | None = None) -> int:
    return cli_main(
        "OpenAI Batch API emulator (batchline)",
        lambda overrides: make_app(EmulatorConfig().merged(overrides or {})),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
