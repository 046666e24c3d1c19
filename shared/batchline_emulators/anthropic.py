"""Anthropic Message Batches emulator: a real HTTP server the official `anthropic` SDK talks to.

Point the SDK at it with ``Anthropic(api_key="anything", base_url="http://127.0.0.1:PORT")``
(no ``/v1``: the SDK's paths carry it). Objects have every field of the SDK's own types
(`MessageBatch`, `MessageBatchIndividualResponse`, `Message`, `DeletedMessageBatch`), with
``null`` where the real API sends ``null``; errors are ``{"type": "error", "error": {"type",
"message"}, "request_id"}``.

API (under ``/v1``; ``x-api-key`` or ``Authorization: Bearer``, non-empty, else 401; an
``anthropic-version`` header of the form ``YYYY-MM-DD``, from ``2023-06-01`` on, else 400 —
older SDKs send ``2023-06-01``, recent ones a newer date):

- ``POST /messages/batches`` ``{"requests": [{"custom_id", "params"}, ...]}``. Checked at
  once (400 ``invalid_request_error``): the envelope, 1 to ``max_requests`` requests,
  every ``custom_id`` matching ``^[a-zA-Z0-9_-]{1,64}$`` and unique. A body over
  ``max_bytes`` answers 413 ``request_too_large`` (from its Content-Length, unread).
  ``params`` are checked later, as Anthropic does: a bad one comes back as an ``errored``
  result naming the field, never as a create error.
- ``GET /messages/batches`` (``limit`` 1..1000, default 20, newest first; ``after_id``
  pages towards older batches, ``before_id`` towards newer ones; ``has_more``,
  ``first_id``, ``last_id``), ``GET /messages/batches/{id}``,
  ``POST /messages/batches/{id}/cancel``, ``DELETE /messages/batches/{id}`` (only once the
  batch has ended; 400 before), ``GET /messages/batches/{id}/results``: streamed JSONL
  (no blank line), at the absolute ``results_url`` the batch gives once it has ended,
  built from the URL the client reached the emulator at.

Lifecycle, computed from timestamps on every request (no background thread):
``in_progress`` (requests run one per ``1/lines_per_second`` after ``start_seconds``, in a
shuffled order) -> ``ended``. ``request_counts`` show only ``processing`` until the batch
has ended, then every request at once as ``succeeded``, ``errored``, ``canceled`` or
``expired`` (they always add up to the total). ``expires_at`` is 24 h after creation
(``expire_after_seconds`` shortens it): a batch still running then ends, its unfinished
requests ``expired``. Cancel: ``canceling`` (``cancel_initiated_at`` set) for
``cancel_seconds``, then ``ended``; requests finished before the cancel keep their results,
the others are ``canceled``. Results come in processing order, not input order.

Answers: a ``Message`` whose one text block starts with ``[batchline anthropic emulator]``
and quotes the last user message; ``max_tokens`` cuts it (``stop_reason: max_tokens``), a
stop sequence it contains ends it (``stop_sequence``); usage from ~4 characters a token.

Structured outputs (a forced tool): with ``tools: [{"name", "description"?,
"input_schema"}]`` and ``tool_choice: {"type": "tool", "name"}`` (or ``{"type": "any"}``:
the first custom tool) the ``content`` is one ``tool_use`` block (``toolu_...`` id, the
tool's name, ``input`` generated for its ``input_schema``, deterministic: see
`batchline_emulators._answers`) and ``stop_reason`` is ``tool_use``. The tool
definitions count as input tokens, the input's JSON text as output tokens; when that
passes ``max_tokens`` the call is cut off (``max_tokens``, an empty ``input``). Tools and
tool_choice are checked like the other params (an ``errored`` result naming the field):
a custom tool needs a name and an ``input_schema`` of type ``object``, a forced tool must
be one of ``tools``.

Faults (`EmulatorConfig`, changeable at runtime with ``POST /_emulator/config``):

- marker ``[emulator:fail=NNN]`` (400..599) in the last user message: that request is
  ``errored`` with the error type Anthropic uses for the status (500 ``api_error``, 529
  ``overloaded_error``, 429 ``rate_limit_error``, 400 ``invalid_request_error``, ...);
  ``[emulator:fail=expired]``: it comes back ``expired``.
- ``errored_rate`` / ``expired_rate``: that fraction of requests (a seeded hash of the
  custom_id) is ``errored`` (``api_error``) / ``expired``.
- ``invalid_answer_rate``: that fraction of forced-tool *first answers* (a seeded hash of
  the custom_id) does not fit the tool's ``input_schema``; the kinds cycle, in input
  order, through ``wrong_type`` (a property of a type the schema refuses),
  ``missing_field`` (a required property left out; ``wrong_type`` when none is required)
  and ``not_json`` (a ``text`` block instead of the ``tool_use``, ``stop_reason:
  end_turn``). A first answer is one to a conversation with no ``assistant`` message; a
  repair (the conversation carries an earlier assistant turn, as batchline's repair does)
  is always answered validly: the model corrects itself when told what was wrong. Set it
  with ``EmulatorConfig(invalid_answer_rate=0.2)``, ``--config-json
  '{"invalid_answer_rate": 0.2}'`` or ``POST /_emulator/config``.
- ``api_error_rate`` / ``api_error_next`` with ``api_error_status`` (429, 500, 529, ...):
  that fraction of ``/v1`` calls (a seeded sequence), or the next N calls, answer with
  that error, with ``retry-after: 0`` and ``retry-after-ms``.

Quota (Anthropic's processing queue; the config holds it as the account's: a change
applies to the next create; ``GET /_emulator/quota`` shows its use):
``queued_request_limit`` (null, the default: no limit) bounds the requests in the
processing queue: those of every batch not yet ended (``in_progress`` or ``canceling``,
held or not, whatever the model), as its ``request_counts.processing`` shows them. A
create that would pass it answers 429 ``{"type": "error", "error": {"type":
"rate_limit_error", "message": "This request would exceed the rate limit for your
organization (<org>) of 100,000 batch requests in the processing queue: ..."}}`` with
``retry-after``: whole seconds until the batches due to end first leave room (1 to 60; 60
when they never would). The SDK honours ``retry-after`` and retries 429s: a test sees the
error with ``max_retries=0``. ``quota_exceeded_next: N`` refuses the next N creates so,
whatever the limit (``retry-after: 1`` when there was room).

A batch keeps the config current at its creation; the API error faults apply at once.

Admin endpoints (no auth, never faulted): ``GET /`` (health), ``GET|POST
/_emulator/config``, ``POST /_emulator/reset``, ``POST /_emulator/release``, ``POST /_emulator/expire``,
``GET /_emulator/batches`` (every batch ever created, deleted ones too, newest first, each
with an ``emulator`` object: request count, models, whether deleted, whether ``held``),
``GET /_emulator/batches/{id}/requests`` (the requests as received), ``GET
/_emulator/stats`` (API calls, injected errors, creates), ``GET /_emulator/quota``
(``{"anthropic": {"queued_requests": N, "limit": L}, "over_quota": <creates refused>}``).

Hold: with ``hold_after_lines: N``, batches created from then on answer N requests and
stay ``in_progress`` until ``POST /_emulator/release`` (``{}`` or ``{"batch": ID}``); see
the OpenAI emulator and ``_common.Hold``.

Expire on demand (deterministic, no clock to race): ``POST /_emulator/expire``
(``{"batch": ID}`` or ``{}`` for every batch ``in_progress``) ends the batch now exactly
as if its 24 h had passed: ``ended``, the requests that ran keep their results, the
others are ``expired`` (``expires_at`` still names the window). Answers ``{"expired":
[ids]}``; an unknown (or deleted) batch 404 ``not_found_error``, one ``canceling`` or
``ended`` 409 (``invalid_request_error``: Anthropic documents no 409). With
``hold_after_lines: N`` that is "N requests answered, then expired".
``expire_after_lines: N``: batches created from then on end right after their N-th request
has run (a batch of N requests or fewer ends as usual); with ``expire_next_batches: K``
only the next K creates do so (each takes one; null, the default: every one). See the
OpenAI emulator and ``_common.Expiry``. Anthropic has no batch that fails as a whole after
create (a bad batch is refused at create with a 400): there is no ``batch_fail_next``.

Every response carries ``x-emulator: batchline-anthropic`` and a ``request-id``.

Command line: ``python -m batchline_emulators.anthropic --host 127.0.0.1 --port P
[--config-json '{...}'] [--verbose]``; serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import re
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from batchline_emulators._answers import InvalidAnswers, structured_answer
from batchline_emulators._common import (
    ConfigRules,
    Expiry,
    Hold,
    early_expiry,
    fraction,
    hex_digest,
    merged_config,
    tokens,
)
from batchline_emulators._wsgi import (
    AdminEndpoints,
    HTTPError,
    admin_rules,
    cli_main,
    json_response,
)

EMULATOR_HEADER = ("x-emulator", "batchline-anthropic")
CONTENT_PREFIX = "[batchline anthropic emulator]"

EXPIRY_SECONDS = 24 * 3600
MAX_LIST = 1000
DEFAULT_LIST = 20
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
OLDEST_VERSION = "2023-06-01"
FAIL_MARKER = re.compile(r"\[emulator:fail=(\d{3}|expired)\]")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_CHOICES = ("auto", "any", "tool", "none")
#: The organization the emulator's rate-limit messages name.
ORGANIZATION = "batchline-emulator-org"
#: The longest `retry-after` a queue-limit 429 carries (the SDK honours any value).
MAX_RETRY_AFTER = 60

#: Keys of the SDK's MessageCreateParamsNonStreaming.
PARAM_KEYS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "cache_control",
        "container",
        "diagnostics",
        "inference_geo",
        "metadata",
        "output_config",
        "service_tier",
        "speed",
        "stop_sequences",
        "stream",
        "system",
        "thinking",
        "tool_choice",
        "tools",
        "user_profile_id",
        "workspace_id",
    }
)
#: Sampling parameters the current API refuses ("deprecated for this model").
DEPRECATED_PARAMS = frozenset({"temperature", "top_p", "top_k"})
ROLES = ("user", "assistant", "system")
#: Input content block types (the SDK's ContentBlockParam).
BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
    }
)

#: Anthropic's error type for an HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EmulatorConfig:
    """Behaviour of the emulator. Times in seconds, rates are fractions in [0, 1]."""

    seed: int = 0
    #: From create until the first request runs.
    start_seconds: float = 0.1
    lines_per_second: float = 5000.0
    #: From the cancel request until the batch has ended.
    cancel_seconds: float = 0.1
    #: None means Anthropic's 24 h.
    expire_after_seconds: float | None = None
    errored_rate: float = 0.0
    expired_rate: float = 0.0
    api_error_rate: float = 0.0
    api_error_status: int = 529
    #: Fail the next N /v1 calls with api_error_status (decremented by each).
    api_error_next: int = 0
    #: `retry-after-ms` on injected errors; None leaves it out (the SDK then backs off).
    api_error_retry_after_ms: int | None = 1
    max_requests: int = 100_000
    #: Anthropic says 256 MB; 256,000,000 is the stricter reading (batchline's own constant).
    max_bytes: int = 256_000_000
    #: Size of the parts the results are streamed in.
    results_part_bytes: int = 64 * 1024
    #: Fraction of forced-tool first answers (picked by a seeded hash of the custom_id)
    #: that are invalid for the tool's input_schema.
    invalid_answer_rate: float = 0.0
    #: Batches created from now on answer this many requests, then stay in_progress until
    #: `POST /_emulator/release` (None: never held). See `Hold`.
    hold_after_lines: int | None = None
    #: Batches created from now on end right after this many requests have run, the rest
    #: `expired`, as if their 24 h had passed then (None: only the window). See `Expiry`.
    expire_after_lines: int | None = None
    #: With `expire_after_lines`: only the next K batches created expire so (decremented
    #: by each); later ones run as usual. None: every one.
    expire_next_batches: int | None = None
    #: Requests that may be in the processing queue (those of every batch not yet ended,
    #: whatever its model); None: no limit. A create that would pass it answers 429.
    queued_request_limit: int | None = None
    #: Refuse the next N batch creates as over the queue limit (429), whatever the limit
    #: (decremented by each), as a limit lower than the client believes would.
    quota_exceeded_next: int = 0

    def merged(self, overrides: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with `overrides` applied; ValueError on unknown keys or bad values."""
        return merged_config(self, overrides, _CONFIG_RULES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CONFIG_RULES: ConfigRules = {
    "seed": (int, False, None, None),
    "start_seconds": (float, False, 0, None),
    "lines_per_second": (float, False, 1e-9, None),
    "cancel_seconds": (float, False, 0, None),
    "expire_after_seconds": (float, True, 0, None),
    "errored_rate": (float, False, 0, 1),
    "expired_rate": (float, False, 0, 1),
    "api_error_rate": (float, False, 0, 1),
    "api_error_status": (int, False, 400, 599),
    "api_error_next": (int, False, 0, None),
    "api_error_retry_after_ms": (int, True, 1, None),
    "max_requests": (int, False, 1, None),
    "max_bytes": (int, False, 1, None),
    "results_part_bytes": (int, False, 1, None),
    "invalid_answer_rate": (float, False, 0, 1),
    "hold_after_lines": (int, True, 0, None),
    "expire_after_lines": (int, True, 0, None),
    "expire_next_batches": (int, True, 0, None),
    "queued_request_limit": (int, True, 0, None),
    "quota_exceeded_next": (int, False, 0, None),
}


# --------------------------------------------------------------------------- errors


def api_error(
    status: int,
    message: str,
    type_: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTTPError:
    """An HTTPError with Anthropic's error body."""
    body = {
        "type": "error",
        "error": {"type": type_ or error_type(status), "message": message},
        "request_id": _request_id(),
    }
    return HTTPError(status, body, headers)


def _request_id() -> str:
    return "req_011" + secrets.token_hex(12)


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


# --------------------------------------------------------------------------- requests


@dataclass
class RequestPlan:
    """One request of a batch, with its outcome decided at create time."""

    custom_id: str
    params: Any  # as received
    outcome: str  # "succeeded" | "errored" | "expired"
    result: dict[str, Any]  # the `result` of its results line (when it ran)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    return ""


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def check_params(params: dict[str, Any]) -> str | None:
    """What is wrong with a request's params, naming the field; None when nothing is."""
    for key in params:
        if key in DEPRECATED_PARAMS:
            return f"`{key}` is deprecated for this model."
        if key not in PARAM_KEYS:
            return f"{key}: Extra inputs are not permitted"
    model = params.get("model")
    if not isinstance(model, str) or not model:
        return "model: Field required" if model is None else "model: Input should be a string"
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        return "max_tokens: Field required"
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        return "max_tokens: Input should be a valid integer"
    if max_tokens < 0:
        return "max_tokens: Input should be greater than or equal to 0"
    if params.get("stream"):
        return "stream: a batch request cannot stream"
    problem = _check_messages(params.get("messages"))
    if problem:
        return problem
    system = params.get("system")
    if system is not None and not _is_system(system):
        return "system: Input should be a valid string or a list of text blocks"
    stops = params.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        return "stop_sequences: Input should be a valid list of strings"
    metadata = params.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            return "metadata: Input should be a valid dictionary"
        for key in metadata:
            if key != "user_id":
                return f"metadata.{key}: Extra inputs are not permitted"
    return _check_tools(params.get("tools"), params.get("tool_choice"))


def _check_tools(tools: Any, choice: Any) -> str | None:
    """What is wrong with `tools` and `tool_choice`. Only custom tools are checked; server
    tools, which have a `type` of their own, are let through."""
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return f"tools.{i}: Input should be a valid dictionary"
            name = tool.get("name")
            if tool.get("type") not in (None, "custom"):
                names.append(str(name))
                continue
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                return f"tools.{i}.custom.name: String should match pattern '{TOOL_NAME.pattern}'"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                return f"tools.{i}.custom.input_schema: Field required"
            if schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
            if name in names:
                return f"tools: Tool names must be unique (found {name!r} twice)"
            names.append(name)
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        return (
            f"tool_choice: Input tag {kind!r} does not match any of the expected tags: "
            + ", ".join(repr(c) for c in TOOL_CHOICES)
        )
    if choice["type"] in ("any", "tool") and not tools:
        return "tool_choice: tool_choice may only be specified while providing tools."
    if choice["type"] == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            return "tool_choice.tool.name: Field required"
        if name not in names:
            return f"tool_choice.tool.name: Tool {name!r} not found in the provided tools"
    return None


def forced_tool(params: dict[str, Any]) -> dict[str, Any] | None:
    """The custom tool the model must call (`tool_choice` ``tool``, or ``any``: the first),
    None when it may answer in text. The params were checked already."""
    choice = params.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") not in ("any", "tool"):
        return None
    for tool in params.get("tools") or ():
        if tool.get("type") in (None, "custom") and (
            choice["type"] == "any" or tool.get("name") == choice.get("name")
        ):
            result: dict[str, Any] = tool
            return result
    return None


def _is_system(system: Any) -> bool:
    return isinstance(system, str) or (
        isinstance(system, list)
        and all(
            isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
            for b in system
        )
    )


def _check_messages(messages: Any) -> str | None:
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: List should have at least 1 item after validation, not 0"
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            return f"{where}: Input should be a valid dictionary"
        for key in message:
            if key not in ("role", "content"):
                return f"{where}.{key}: Extra inputs are not permitted"
        if message.get("role") not in ROLES:
            return f"{where}.role: Input should be 'user', 'assistant' or 'system'"
        content = message.get("content")
        if content is None:
            return f"{where}.content: Field required"
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"{where}.content: Input should be a valid string or list"
        for j, block in enumerate(content):
            spot = f"{where}.content.{j}"
            if not isinstance(block, dict):
                return f"{spot}: Input should be a valid dictionary"
            kind = block.get("type")
            if kind not in BLOCK_TYPES:
                return f"{spot}.type: Input tag {kind!r} does not match any of the expected tags"
            if kind == "text" and not isinstance(block.get("text"), str):
                return f"{spot}.text: Field required"
            if kind == "image" and not isinstance(block.get("source"), dict):
                return f"{spot}.source: Field required"
    return None


def _errored(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": error_type(status), "message": message},
            "request_id": _request_id(),
        },
    }


def _message(
    params: dict[str, Any], custom_id: str, seed: int, invalid: InvalidAnswers
) -> dict[str, Any]:
    messages = params["messages"]
    snippet = " ".join(_last_user_text(messages).split())
    if len(snippet) > 60:
        snippet = snippet[:60] + "..."
    digest = hex_digest(orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode(), n=8)
    max_tokens = params["max_tokens"]
    tool = forced_tool(params)
    content: list[dict[str, Any]]
    if tool is not None:
        content, stop_reason, output_tokens = _tool_answer(
            tool, messages, max_tokens, custom_id, f"{seed}/{digest}", invalid
        )
        stop_sequence = None
    else:
        text = f"{CONTENT_PREFIX} answer to: {snippet} (#{digest})"
        stop_reason, stop_sequence = "end_turn", None
        found = [(text.find(s), s) for s in params.get("stop_sequences") or () if s and s in text]
        if found:
            at, stop_sequence = min(found)
            text, stop_reason = text[:at], "stop_sequence"
        output_tokens = tokens(len(text)) if text else 0
        if output_tokens > max_tokens:
            text = text[: max_tokens * 4]
            output_tokens = max_tokens
            stop_reason, stop_sequence = "max_tokens", None
        content = [{"type": "text", "text": text, "citations": None}] if text else []
    prompt = sum(len(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    system = params.get("system")
    prompt += len(system if isinstance(system, str) else _text_of(system))
    if params.get("tools"):  # tool definitions are part of the prompt
        prompt += len(orjson.dumps(params["tools"]))
    return {
        "id": "msg_01" + hex_digest("msg", seed, custom_id, digest, n=22),
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "stop_details": None,
        "container": None,
        "diagnostics": None,
        "usage": {
            "input_tokens": tokens(prompt),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
            "inference_geo": None,
            "output_tokens_details": {"thinking_tokens": 0},
            "server_tool_use": None,
            "service_tier": "batch",
            "speed": None,
        },
    }


def _tool_answer(
    tool: dict[str, Any],
    messages: list[Any],
    max_tokens: int,
    custom_id: str,
    seed: str,
    invalid: InvalidAnswers,
) -> tuple[list[dict[str, Any]], str, int]:
    """(content, stop_reason, output tokens) of the answer to a forced tool: one tool_use
    block whose input is generated for the tool's input_schema; or, for a `not_json`
    invalid answer, a text block (the model talked instead of calling the tool)."""
    first = not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
    kind = invalid.kind(custom_id, first_answer=first)
    answer = structured_answer(tool["input_schema"], seed, kind, object_root=True)
    output_tokens = tokens(len(answer.text))
    if answer.kind == "not_json":
        text = answer.text
        stop_reason = "end_turn"
        if output_tokens > max_tokens:
            text, output_tokens, stop_reason = text[: max_tokens * 4], max_tokens, "max_tokens"
        blocks = [{"type": "text", "text": text, "citations": None}] if text else []
        return blocks, stop_reason, output_tokens
    block = {
        "type": "tool_use",
        "id": "toolu_01" + hex_digest("toolu", custom_id, seed, n=22),
        "caller": {"type": "direct"},
        "name": tool["name"],
        "input": answer.value,
        "toolset_name": None,
    }
    if output_tokens > max_tokens:
        # Cut off while writing the call: the block is there, its input incomplete.
        if max_tokens == 0:
            return [], "max_tokens", 0
        return [{**block, "input": {}}], "max_tokens", max_tokens
    return [block], "tool_use", output_tokens


def plan_request(
    custom_id: str,
    params: dict[str, Any],
    config: EmulatorConfig,
    invalid: InvalidAnswers | None = None,
) -> RequestPlan:
    """Decide a request's outcome (it is revealed when the batch has ended); `invalid`
    picks the batch's invalid answers (by default, one for this request alone)."""
    problem = check_params(params)
    if problem is not None:
        return RequestPlan(custom_id, params, "errored", _errored(400, problem))
    marker = FAIL_MARKER.search(_last_user_text(params["messages"]))
    if marker is not None:
        if marker.group(1) == "expired":
            return RequestPlan(custom_id, params, "expired", {"type": "expired"})
        status = int(marker.group(1))
        if 400 <= status <= 599:
            result = _errored(status, f"Emulated failure with status {status} (marker).")
            return RequestPlan(custom_id, params, "errored", result)
    if config.errored_rate > 0 and fraction(config.seed, "errored", custom_id) < (
        config.errored_rate
    ):
        result = _errored(500, "Internal server error (emulated errored_rate)")
        return RequestPlan(custom_id, params, "errored", result)
    if config.expired_rate > 0 and fraction(config.seed, "expired", custom_id) < (
        config.expired_rate
    ):
        return RequestPlan(custom_id, params, "expired", {"type": "expired"})
    if invalid is None:
        invalid = InvalidAnswers(config.invalid_answer_rate, config.seed)
    message = _message(params, custom_id, config.seed, invalid)
    return RequestPlan(custom_id, params, "succeeded", {"type": "succeeded", "message": message})


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Phase:
    """A batch as seen at one instant."""

    status: str  # in_progress | canceling | ended
    processed: int = 0  # requests finished, in processing order
    rest: str | None = None  # what the unfinished ones became: "canceled" | "expired"
    ended_at: float | None = None


@dataclass
class BatchRecord:
    id: str
    seq: int
    created: float
    config: EmulatorConfig  # snapshot at create
    requests: list[RequestPlan]  # processing (shuffled) order
    cancel_requested_at: float | None = None
    hold: Hold = field(default_factory=Hold)
    expiry: Expiry = field(default_factory=Expiry)
    deleted: bool = False
    outcome_prefix: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prefix: dict[str, list[int]] = {k: [0] for k in ("succeeded", "errored", "expired")}
        for plan in self.requests:
            for kind, counts in prefix.items():
                counts.append(counts[-1] + (plan.outcome == kind))
        self.outcome_prefix = prefix

    @property
    def started_at(self) -> float:
        return self.created + self.config.start_seconds

    @property
    def lines_end(self) -> float:
        return self.hold.end(self.started_at, self.config.lines_per_second, len(self.requests))

    @property
    def expires_at(self) -> float:
        window = self.config.expire_after_seconds
        return self.created + (EXPIRY_SECONDS if window is None else window)

    @property
    def deadline(self) -> float:
        """When it expires unless ended: its `expires_at`, or earlier as a test asked."""
        rate, n = self.config.lines_per_second, len(self.requests)
        return min(self.expires_at, self.expiry.at(self.hold, self.started_at, rate, n))

    def done(self, t: float) -> int:
        return self.hold.done(t, self.started_at, self.config.lines_per_second, len(self.requests))

    def held(self, now: float) -> bool:
        """Waiting for `POST /_emulator/release` (not canceled, not expired) at `now`."""
        if self.phase(now).status != "in_progress":
            return False
        rate = self.config.lines_per_second
        return self.hold.holding(now, self.started_at, rate, len(self.requests))

    def phase(self, now: float) -> Phase:
        deadline, t_end = self.deadline, self.lines_end
        tc = self.cancel_requested_at
        if tc is not None:  # cancel is accepted only before the batch ends
            ends = tc + self.config.cancel_seconds
            if now < ends:
                return Phase("canceling")
            return Phase("ended", self.done(tc), "canceled", ends)
        if deadline < t_end:
            if now < deadline:
                return Phase("in_progress")
            return Phase("ended", self.done(deadline), "expired", deadline)
        if now < t_end:
            return Phase("in_progress")
        return Phase("ended", len(self.requests), None, t_end)

    def ended_by(self, now: float) -> bool:
        return self.phase(now).status == "ended"

    def due_end(self) -> float:
        """When the batch ends as things stand (a held one: at its expiry)."""
        if self.cancel_requested_at is not None:
            return self.cancel_requested_at + self.config.cancel_seconds
        return min(self.deadline, self.lines_end)

    def counts(self, ph: Phase) -> dict[str, int]:
        n = len(self.requests)
        if ph.status != "ended":
            return {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        k = ph.processed
        unfinished = n - k
        return {
            "processing": 0,
            "succeeded": self.outcome_prefix["succeeded"][k],
            "errored": self.outcome_prefix["errored"][k],
            "canceled": unfinished if ph.rest == "canceled" else 0,
            "expired": self.outcome_prefix["expired"][k]
            + (unfinished if ph.rest == "expired" else 0),
        }

    def to_api(self, now: float, root_url: str) -> dict[str, Any]:
        ph = self.phase(now)
        ended = ph.status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": ph.status,
            "request_counts": self.counts(ph),
            "ended_at": rfc3339(ph.ended_at),
            "created_at": rfc3339(self.created),
            "expires_at": rfc3339(self.expires_at),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(self.cancel_requested_at),
            "results_url": f"{root_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }

    def result_lines(self, ph: Phase) -> Iterator[bytes]:
        for index, plan in enumerate(self.requests):
            # Requests that had not run when the batch ended were canceled or expired.
            result = plan.result if index < ph.processed else {"type": ph.rest or "expired"}
            yield orjson.dumps({"custom_id": plan.custom_id, "result": result}) + b"\n"


@dataclass
class EmulatorState:
    batches: dict[str, BatchRecord] = field(default_factory=dict)
    next_seq: int = 0
    api_requests: int = 0
    injected_errors: int = 0
    creates: int = 0
    over_quota: int = 0  # creates answered 429 for the queue limit


def _retry_after(queued: list[BatchRecord], wanted: int, limit: int, now: float) -> int:
    """Whole seconds (1 to MAX_RETRY_AFTER) until the `queued` batches due to end first
    leave room for `wanted` more requests under `limit`."""
    in_queue = sum(len(b.requests) for b in queued)
    room_at = now
    for end, size in sorted((b.due_end(), len(b.requests)) for b in queued):
        if in_queue + wanted <= limit:
            break
        in_queue, room_at = in_queue - size, end
    if in_queue + wanted > limit:
        return MAX_RETRY_AFTER
    return min(MAX_RETRY_AFTER, max(1, math.ceil(room_at - now)))


def _batch_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "msgbatch_01" + "".join(secrets.choice(alphabet) for _ in range(22))


# --------------------------------------------------------------------------- the app


def _url_map() -> Map:
    return Map(
        [
            Rule("/v1/messages/batches", endpoint="create_batch", methods=["POST"]),
            Rule("/v1/messages/batches", endpoint="list_batches", methods=["GET"]),
            Rule("/v1/messages/batches/<batch_id>", endpoint="retrieve_batch", methods=["GET"]),
            Rule("/v1/messages/batches/<batch_id>", endpoint="delete_batch", methods=["DELETE"]),
            Rule(
                "/v1/messages/batches/<batch_id>/cancel", endpoint="cancel_batch", methods=["POST"]
            ),
            Rule("/v1/messages/batches/<batch_id>/results", endpoint="results", methods=["GET"]),
            *admin_rules(),
            Rule("/_emulator/batches", endpoint="admin_batches", methods=["GET"]),
            Rule(
                "/_emulator/batches/<batch_id>/requests",
                endpoint="admin_requests",
                methods=["GET"],
            ),
            Rule("/_emulator/stats", endpoint="admin_stats", methods=["GET"]),
        ],
        strict_slashes=False,
        merge_slashes=False,
    )


def _root_url(request: Request) -> str:
    return request.host_url.rstrip("/")


class AnthropicBatchEmulator(AdminEndpoints):
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
        response.headers.setdefault("request-id", _request_id())
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        if request.path.startswith("/v1/") or request.path == "/v1":
            self._authenticate(request)
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

    def _authenticate(self, request: Request) -> None:
        key = request.headers.get("x-api-key", "").strip()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not key and not (scheme.lower() == "bearer" and token.strip()):
            raise api_error(401, "x-api-key header is required")
        version = request.headers.get("anthropic-version", "").strip()
        if not version:
            raise api_error(400, "anthropic-version: header is required")
        if not VERSION.match(version) or version < OLDEST_VERSION:
            raise api_error(400, f"anthropic-version: {version!r} is not a valid version")

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
        headers = {"retry-after": "0"}
        if cfg.api_error_retry_after_ms is not None:
            headers["retry-after-ms"] = str(cfg.api_error_retry_after_ms)
        status = cfg.api_error_status
        message = {
            429: "Number of request tokens has exceeded your per-minute rate limit (emulated)",
            529: "Overloaded (emulated)",
        }.get(status, "Internal server error (emulated)")
        raise api_error(status, message, headers=headers)

    def _batch(self, batch_id: str) -> BatchRecord:
        batch = self.state.batches.get(batch_id)
        if batch is None or batch.deleted:
            raise api_error(404, f"Message batch {batch_id!r} not found.")
        return batch

    # ---- batches
    def h_create_batch(self, request: Request) -> Response:
        config = self.config
        size = request.content_length
        if size is not None and size > config.max_bytes:
            # Drain the body unkept, so that the client reads the answer on a sane connection.
            while request.stream.read(1024 * 1024):
                pass
            raise api_error(413, "Request exceeds the maximum allowed number of bytes.")
        data = request.get_data(cache=False)
        if len(data) > config.max_bytes:
            raise api_error(413, "Request exceeds the maximum allowed number of bytes.")
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise api_error(400, "The request body is not valid JSON.") from None
        del data
        requests = self._check_create(body, config)
        invalid = InvalidAnswers(config.invalid_answer_rate, config.seed)
        plans = [plan_request(r["custom_id"], r["params"], config, invalid) for r in requests]
        order = hex_digest(config.seed, "order", *(p.custom_id for p in plans))
        random.Random(order).shuffle(plans)
        with self.lock:
            now = self.clock()
            self._check_queue(len(plans), now)
            seq = self.state.next_seq
            self.state.next_seq += 1
            self.state.creates += 1
            hold = Hold(config.hold_after_lines)
            cfg = self.config
            expiry, left = early_expiry(cfg.expire_after_lines, cfg.expire_next_batches)
            if left != cfg.expire_next_batches:
                self.config = dataclasses.replace(cfg, expire_next_batches=left)
            batch = BatchRecord(_batch_id(), seq, now, config, plans, hold=hold, expiry=expiry)
            self.state.batches[batch.id] = batch
            return json_response(batch.to_api(batch.created, _root_url(request)))

    def _check_create(self, body: Any, config: EmulatorConfig) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            raise api_error(400, "Input should be a valid dictionary")
        for key in body:
            if key != "requests":
                raise api_error(400, f"{key}: Extra inputs are not permitted")
        requests = body.get("requests")
        if requests is None:
            raise api_error(400, "requests: Field required")
        if not isinstance(requests, list):
            raise api_error(400, "requests: Input should be a valid list")
        if not requests:
            raise api_error(
                400, "requests: List should have at least 1 item after validation, not 0"
            )
        if len(requests) > config.max_requests:
            raise api_error(
                400,
                f"requests: List should have at most {config.max_requests} items after "
                f"validation, not {len(requests)}",
            )
        seen: set[str] = set()
        for i, item in enumerate(requests):
            where = f"requests.{i}"
            if not isinstance(item, dict):
                raise api_error(400, f"{where}: Input should be a valid dictionary")
            for key in item:
                if key not in ("custom_id", "params"):
                    raise api_error(400, f"{where}.{key}: Extra inputs are not permitted")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str):
                raise api_error(400, f"{where}.custom_id: Field required")
            if not CUSTOM_ID.match(custom_id):
                raise api_error(
                    400,
                    f"{where}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'",
                )
            if custom_id in seen:
                raise api_error(
                    400,
                    f"{where}.custom_id: Duplicate custom_id {custom_id!r}: each request in a "
                    "batch needs a unique custom_id",
                )
            seen.add(custom_id)
            if not isinstance(item.get("params"), dict):
                raise api_error(400, f"{where}.params: Input should be a valid dictionary")
        return requests

    # ---- the processing queue (call with the lock held)
    def _queued(self, now: float) -> list[BatchRecord]:
        """The batches whose requests are in the processing queue: those not yet ended."""
        return [b for b in self.state.batches.values() if not b.ended_by(now)]

    def _check_queue(self, wanted: int, now: float) -> None:
        """429 when `wanted` more requests would pass `queued_request_limit`, or a test
        asked for one with `quota_exceeded_next`."""
        cfg = self.config
        limit = cfg.queued_request_limit
        queued = self._queued(now)
        in_queue = sum(len(b.requests) for b in queued)
        over = limit is not None and in_queue + wanted > limit
        if cfg.quota_exceeded_next > 0:
            self.config = dataclasses.replace(cfg, quota_exceeded_next=cfg.quota_exceeded_next - 1)
        elif not over:
            return
        self.state.over_quota += 1
        shown = in_queue if limit is None else limit  # forced with no limit: the queue now
        wait = _retry_after(queued, wanted, shown, now) if over else 1
        # Anthropic limits the batch requests in its processing queue, across models (its
        # rate-limits page); the wording follows its rate_limit_error bodies ("This request
        # would exceed the rate limit for your organization (<id>) of 50,000 input tokens
        # per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.
        # ..."), naming this limit instead.
        raise api_error(
            429,
            f"This request would exceed the rate limit for your organization ({ORGANIZATION}) "
            f"of {shown:,} batch requests in the processing queue: {in_queue:,} are queued "
            f"and this batch has {wanted:,}. For details, refer to: "
            "https://docs.claude.com/en/api/rate-limits. Please try again once some "
            "batches have ended.",
            headers={"retry-after": str(wait)},
        )

    def quota(self) -> dict[str, Any]:
        """The requests in the processing queue now and the limit; how many creates were
        refused for it."""
        queued = sum(len(b.requests) for b in self._queued(self.clock()))
        return {
            "anthropic": {"queued_requests": queued, "limit": self.config.queued_request_limit},
            "over_quota": self.state.over_quota,
        }

    def h_list_batches(self, request: Request) -> Response:
        raw = request.args.get("limit", "")
        try:
            limit = int(raw) if raw else DEFAULT_LIST
        except ValueError:
            raise api_error(400, "limit: Input should be a valid integer") from None
        if not 1 <= limit <= MAX_LIST:
            raise api_error(400, f"limit: Input should be between 1 and {MAX_LIST}")
        after, before = request.args.get("after_id"), request.args.get("before_id")
        if after and before:
            raise api_error(400, "after_id and before_id cannot be given together")
        with self.lock:
            now = self.clock()
            batches = sorted(
                (b for b in self.state.batches.values() if not b.deleted),
                key=lambda b: b.seq,
                reverse=True,
            )
            ids = [b.id for b in batches]
            if after:
                start = ids.index(after) + 1 if after in ids else len(ids)
                page, has_more = batches[start : start + limit], len(batches) > start + limit
            elif before:
                end = ids.index(before) if before in ids else 0
                page, has_more = batches[max(0, end - limit) : end], end - limit > 0
            else:
                page, has_more = batches[:limit], len(batches) > limit
            root = _root_url(request)
            return json_response(
                {
                    "data": [b.to_api(now, root) for b in page],
                    "has_more": has_more,
                    "first_id": page[0].id if page else None,
                    "last_id": page[-1].id if page else None,
                }
            )

    def h_retrieve_batch(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            return json_response(self._batch(batch_id).to_api(self.clock(), _root_url(request)))

    def h_cancel_batch(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            now = self.clock()
            batch = self._batch(batch_id)
            if batch.ended_by(now):
                raise api_error(400, f"Message batch {batch_id!r} has ended: nothing to cancel.")
            if batch.cancel_requested_at is None:
                batch.cancel_requested_at = now
            return json_response(batch.to_api(now, _root_url(request)))

    def expire(self, batch_id: str | None, now: float) -> list[str]:
        if batch_id is not None:
            batch = self._batch(batch_id)
            status = batch.phase(now).status
            if status != "in_progress":
                # Anthropic documents no 409 error type: invalid_request_error, as for 4xx.
                raise api_error(409, f"Message batch {batch_id!r} is {status}: it cannot expire.")
            batches = [batch]
        else:
            running = (
                b
                for b in self.state.batches.values()
                if not b.deleted and b.phase(now).status == "in_progress"
            )
            batches = sorted(running, key=lambda b: b.seq)
        for batch in batches:
            batch.expiry.requested_at = now
        return [b.id for b in batches]

    def h_delete_batch(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            batch = self._batch(batch_id)
            if not batch.ended_by(self.clock()):
                raise api_error(
                    400,
                    f"Message batch {batch_id!r} is still processing: cancel it, and delete it "
                    "once it has ended.",
                )
            batch.deleted = True
            return json_response({"id": batch_id, "type": "message_batch_deleted"})

    def h_results(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            batch = self._batch(batch_id)
            ph = batch.phase(self.clock())
        if ph.status != "ended":
            raise api_error(
                404, f"Message batch {batch_id!r} has no results yet: it has not ended."
            )
        part_size = batch.config.results_part_bytes

        def stream() -> Iterator[bytes]:
            part = bytearray()
            for line in batch.result_lines(ph):
                part += line
                if len(part) >= part_size:
                    yield bytes(part)
                    part.clear()
            if part:
                yield bytes(part)

        return Response(stream(), mimetype="application/x-jsonl", direct_passthrough=True)

    # ---- admin
    def h_admin_batches(self, request: Request) -> Response:
        with self.lock:
            now, root = self.clock(), _root_url(request)
            batches = sorted(self.state.batches.values(), key=lambda b: b.seq, reverse=True)
            data = [
                {
                    **b.to_api(now, root),
                    "emulator": {
                        "requests": len(b.requests),
                        "models": sorted(
                            {str(p.params.get("model")) for p in b.requests if p.params}
                        ),
                        "deleted": b.deleted,
                        "held": b.held(now),
                    },
                }
                for b in batches
            ]
            return json_response({"data": data})

    def holds(self) -> Iterable[tuple[str, Hold]]:
        return [(b.id, b.hold) for b in self.state.batches.values()]

    def h_admin_requests(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            batch = self.state.batches.get(batch_id)
            if batch is None:
                raise api_error(404, f"Message batch {batch_id!r} not found.")
            received = [{"custom_id": p.custom_id, "params": p.params} for p in batch.requests]
        received.sort(key=lambda r: str(r["custom_id"]))
        return json_response({"data": received})

    def h_admin_stats(self, request: Request) -> Response:
        with self.lock:
            return json_response(
                {
                    "api_requests": self.state.api_requests,
                    "injected_errors": self.state.injected_errors,
                    "creates": self.state.creates,
                    "batches": sum(1 for b in self.state.batches.values() if not b.deleted),
                }
            )

    def reset(self) -> None:
        """Drop all batches and restore the startup config."""
        with self.lock:
            self.state = EmulatorState()
            self.config = self.startup_config


def make_app(
    config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.time
) -> AnthropicBatchEmulator:
    """The emulator as a WSGI app (`app.config`, `app.state`, `app.reset()`)."""
    return AnthropicBatchEmulator(config or EmulatorConfig(), clock)


def main(argv: list[str] | None = None) -> int:
    return cli_main(
        "Anthropic Message Batches emulator (batchline)",
        lambda overrides: make_app(EmulatorConfig().merged(overrides or {})),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
