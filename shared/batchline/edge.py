"""The HTTP edge of the api function: routes, what a request may be, and what every answer
looks like. Every caller and every byte is treated as hostile here: bodies are bounded
before they are read whole, parsed strictly, and every error is one JSON shape,
`{"error": {"type", "message", "field"?}}`, with the right status — never an HTML page,
never a trace. The one exception is the jobs page (`batchline.web`): its own routes (`/`,
`/jobs/{id}`, `/assets/{name}`) answer HTML, their 404s and 405s too.

Operations live in `services.api` (its route table: `services.api.routes`); this module
only routes and translates.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from batchline.errors import PermanentError, RetryableError
from batchline.log import fields, get_logger
from batchline.web import is_page

if TYPE_CHECKING:
    from flask import Request, Response

log = get_logger("batchline.api")

#: The largest request body taken (Cloud Run's own limit for an HTTP/1 request is 32 MiB);
#: larger inputs go to the input bucket and are named by `input_uri`.
MAX_BODY_BYTES = 32 * 1024 * 1024
#: How deeply a body's JSON may nest: far beyond any request or schema, and well within
#: what every encoder on the way takes.
MAX_JSON_DEPTH = 64
#: Integers must fit 64 bits: beyond, a JSON parser turns them into floats silently.
INT64 = (-(2**63), 2**63 - 1)
RETRY_AFTER_SECONDS = 5
JOB_ID = re.compile(r"job-[0-9a-f]{24}")
_LONG_NUMBER = re.compile(rb"\d{19}")


class ApiError(Exception):
    """An answer other than success: its status, type, message and the field to fix."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def handle(request: Request) -> Response:
    """Answer one request: route it, run it, and shape whatever comes out as JSON.

    The jobs page's routes (`/`, `/jobs/...`, `/assets/...`) answer HTML, their errors
    included (`batchline.web.pages`); every other path is the JSON API."""
    if is_page(request.path):
        from batchline.web import pages

        return pages.handle(request)
    try:
        status, body = _route(request)
        return _reply(status, body)
    except ApiError as exc:
        return _reply(exc.status, exc.body(), exc.headers)
    except Exception:
        error_id = uuid.uuid4().hex[:16]
        log.exception("api: unexpected error", extra=fields(error_id=error_id))
        return _reply(
            500,
            {
                "error": {
                    "type": "internal",
                    "message": f"an unexpected error; it is logged under error id {error_id}",
                    "error_id": error_id,
                }
            },
        )


def not_routed(request: Request) -> Response:
    """The answer to a request the framework did not route to the function."""
    error = ApiError(404, "not_found", f"{request.method} {request.path!r} is not an operation")
    return _reply(error.status, error.body())


def _route(request: Request) -> tuple[int, Any]:
    from batchline.services.api.call import Call
    from batchline.services.api.routes import find

    path = request.path.rstrip("/") or "/"
    route, params, allowed = find(request.method, path)
    if route is None and not allowed:
        raise ApiError(404, "not_found", f"{request.method} {path} is not an operation")
    if route is None:
        raise ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {path}; use {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed)},
        )
    job_id = params.get("job_id")
    if job_id is not None and not JOB_ID.fullmatch(job_id):
        shown = job_id if len(job_id) <= 80 else job_id[:80] + "..."
        raise ApiError(
            400, "bad_request", f"{shown!r} is not a job id (job- and 24 hex digits)", "job_id"
        )
    return _run(lambda: route.handler(Call(request, params)))


def _run(work: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
    from batchline.services.api import errors

    try:
        return work()
    except errors.TooLarge as exc:
        raise ApiError(413, "too_large", str(exc), exc.field) from None
    except errors.BadRequest as exc:
        raise ApiError(400, "bad_request", str(exc), exc.field) from None
    except errors.KeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc), "Idempotency-Key") from None
    except errors.Missing as exc:
        raise ApiError(404, "not_found", str(exc), exc.field) from None
    except errors.Conflict as exc:
        raise ApiError(409, "job_ended", str(exc), exc.field) from None
    except RetryableError as exc:
        log.warning("api: transient failure", extra=fields(error=str(exc)))
        raise ApiError(
            503,
            "unavailable",
            "a transient failure; try again with the same Idempotency-Key",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
    except PermanentError:
        raise  # ours, not the caller's: the catch-all logs it under an error id


# ------------------------------------------------------------------------------ bodies


def read_json_body(request: Request) -> Any:
    """The body as JSON: of a JSON media type, at most MAX_BODY_BYTES (refused before it
    is read whole), strict JSON (no NaN or Infinity, no lone surrogates), nested at most
    MAX_JSON_DEPTH deep, integers within 64 bits."""
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be application/json, not {mimetype or 'untyped'}",
            "Content-Type",
        )
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large()
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _too_large()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_request", f"the body must be JSON: {exc}", "body") from None
    _check_depth(body)
    if _LONG_NUMBER.search(raw):
        _check_integers(raw)
    return body


def _too_large() -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the body is over {MAX_BODY_BYTES} bytes; upload large inputs to the input bucket "
        "and name them in 'input_uri'",
        "body",
    )


def _check_depth(value: Any) -> None:
    """Iteratively (a recursive walk is what the limit protects against)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, dict):
            children = [(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()]
        elif isinstance(item, list):
            children = [(v, f"{where}[{i}]") for i, v in enumerate(item)]
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise ApiError(
                400,
                "bad_request",
                f"JSON nested deeper than {MAX_JSON_DEPTH} levels at {where or 'the top'}",
                where or "body",
            )
        stack.extend((child, depth + 1, path) for child, path in children)


def _check_integers(raw: bytes) -> None:
    """Refuse an integer beyond 64 bits, naming where it is: orjson would have made it a
    float, changing what the caller sent."""

    def integer(text: str) -> int:
        number = int(text)
        if not INT64[0] <= number <= INT64[1]:
            raise _BigInteger(text)
        return number

    try:
        json.loads(raw, parse_int=integer)
    except _BigInteger as exc:
        where = _locate(raw, exc.text) or "body"
        raise ApiError(
            400,
            "bad_request",
            f"the integer {exc.text[:40]}{'...' if len(exc.text) > 40 else ''} is beyond "
            f"64 bits at {where}; send it as a string",
            where,
        ) from None


class _BigInteger(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _locate(raw: bytes, text: str) -> str | None:
    """The path of the first number spelt `text` in `raw`'s JSON, for the error."""
    target = int(text)

    def walk(value: Any, where: str) -> str | None:
        if isinstance(value, dict):
            for k, v in value.items():
                found = walk(v, f"{where}.{k}" if where else str(k))
                if found is not None:
                    return found
        elif isinstance(value, list):
            for i, v in enumerate(value):
                found = walk(v, f"{where}[{i}]")
                if found is not None:
                    return found
        elif isinstance(value, int) and not isinstance(value, bool) and value == target:
            return where or "body"
        return None

    try:
        return walk(json.loads(raw), "")
    except (ValueError, RecursionError):
        return None


def _reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer; a model is dumped as its fields were set (optional ones left out)."""
    from flask import Response

    from batchline.services.api.call import Raw, Stream

    if isinstance(body, Stream):
        response = Response(body.blocks, status=status, mimetype=body.media_type)
    elif isinstance(body, Raw):
        response = Response(body.data, status=status, mimetype=body.media_type)
    else:
        if hasattr(body, "model_dump"):
            body = body.model_dump(mode="json", by_alias=True, exclude_unset=True)
        response = Response(orjson.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
