"""The jobs page over HTTP: routes, rendering, and the headers every answer carries.

Routes (GET and HEAD only; anything else is a 405 naming them in `Allow`):

- `/`: the jobs list, newest first; `?state=S`, `?label.KEY=VALUE`, `?cursor=C` (the
  "older jobs" link);
- `/jobs/{job_id}`: one job;
- `/assets/{name}`: the page's script, style sheet and icon (not under `/static/`:
  functions-framework's Flask app keeps Flask's own `/static/<path>` route, which answers
  before the function is called).

`?fragment=1` on the first two answers with the page's content alone: the script fetches
it every few seconds while a job shown is running and swaps it in.

Errors on these routes are small HTML pages with the right status (404 for an unknown
job or file, 400 for a bad filter, 503 with `Retry-After` for a transient failure, 500
with an error id that is also in the log). Every answer carries a strict
Content-Security-Policy (scripts, styles and images from this origin only: no inline
script or style, no framing), `X-Content-Type-Options: nosniff` and `Referrer-Policy:
no-referrer`; HTML is never cached.

Values are escaped by Jinja2's autoescaping, on every interpolation: job data (custom
ids, error messages, file names, labels) is the users' text.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from batchline.domain.models import JobState
from batchline.errors import RetryableError
from batchline.log import fields, get_logger
from batchline.ports import InvalidCursor
from batchline.web import views

if TYPE_CHECKING:
    from flask import Request, Response

    from batchline.bootstrap import Deps

log = get_logger("batchline.page")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
ASSETS = HERE / "assets"
#: Seconds between refreshes while a job shown is running.
REFRESH_SECONDS = 3
RETRY_AFTER_SECONDS = 5
JOB_ID = re.compile(r"job-[0-9a-f]{24}")
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_CURSOR_CHARS = 1024
MAX_LABEL_FILTERS = 8
METHODS = ("GET", "HEAD")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class PageError(Exception):
    """An answer other than the page: its status, a title and a sentence for the reader."""

    def __init__(
        self, status: int, title: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load_assets() -> dict[str, Asset]:
    files = {}
    for path in sorted(ASSETS.iterdir()):
        if path.is_file() and path.suffix in ASSET_TYPES:
            body = path.read_bytes()
            files[path.name] = Asset(
                body, ASSET_TYPES[path.suffix], hashlib.sha256(body).hexdigest()[:32]
            )
    return files


ASSETS_BY_NAME = _load_assets()


def handle(request: Request, get_deps: Callable[[], Deps] | None = None) -> Response:
    """Answer a request for one of the page's routes (`batchline.web.is_page`)."""
    try:
        return _route(request, get_deps or _default_deps)
    except PageError as exc:
        return _error_page(exc)
    except RetryableError as exc:
        log.warning("page: transient failure", extra=fields(error=str(exc)))
        return _error_page(
            PageError(
                503,
                "Try again",
                "A transient failure; reload the page in a few seconds.",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        )
    except Exception:
        error_id = uuid.uuid4().hex[:16]
        log.exception("page: unexpected error", extra=fields(error_id=error_id))
        return _error_page(
            PageError(
                500,
                "Something went wrong",
                f"An unexpected error; it is logged under error id {error_id}.",
            )
        )


def _default_deps() -> Deps:
    from batchline.bootstrap import deps

    return deps()


def _route(request: Request, get_deps: Callable[[], Deps]) -> Response:
    path = request.path.rstrip("/") or "/"
    if request.method not in METHODS:
        allowed = ", ".join(METHODS)
        raise PageError(
            405,
            "Method not allowed",
            f"{request.method} is not allowed here; use {allowed}.",
            {"Allow": allowed},
        )
    fragment = request.args.get("fragment") == "1"
    if path == "/":
        try:
            listed = views.job_list(get_deps(), **_list_filters(request))
        except InvalidCursor:
            raise PageError(400, "Bad cursor", "That cursor is not one this page made.") from None
        return _page("jobs.html", "Jobs", fragment, listing=listed, live=listed.live)
    if path.startswith("/jobs/"):
        job_id = path.removeprefix("/jobs/")
        if not JOB_ID.fullmatch(job_id):
            raise PageError(404, "No such job", "That is not a job id (job- and 24 hex digits).")
        detail = views.job_detail(get_deps(), job_id)
        if detail is None:
            raise PageError(404, "No such job", f"There is no job {job_id}.")
        return _page("job.html", job_id, fragment, detail=detail, live=detail.live)
    if path.startswith("/assets/"):
        return _asset(request, path.removeprefix("/assets/"))
    raise PageError(404, "Not found", "There is no page here.")


def _list_filters(request: Request) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    state = request.args.get("state") or None
    if state is not None:
        try:
            filters["state"] = JobState(state)
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            raise PageError(
                400, "Bad filter", f"There is no job state {state!r}; use one of {known}."
            ) from None
    labels = {}
    for name, value in request.args.items():
        if not name.startswith("label."):
            continue
        key = name.removeprefix("label.")
        if not LABEL_KEY.fullmatch(key):
            raise PageError(400, "Bad filter", f"{key!r} is not a label key.")
        labels[key] = value
    if len(labels) > MAX_LABEL_FILTERS:
        raise PageError(400, "Bad filter", f"At most {MAX_LABEL_FILTERS} label filters.")
    filters["labels"] = labels
    cursor = request.args.get("cursor") or None
    if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
        raise PageError(400, "Bad cursor", "That cursor is not one this page made.")
    filters["cursor"] = cursor
    return filters


# ---------------------------------------------------------------------------- answers


def _page(template: str, title: str, fragment: bool, **context: Any) -> Response:
    context.update(title=title, refresh_seconds=REFRESH_SECONDS, states=list(JobState))
    if fragment:
        html = _env().get_template(template).render(**context)
    else:
        html = _env().get_template("layout.html").render(content=template, **context)
    return _html(200, html)


def _error_page(error: PageError) -> Response:
    html = (
        _env()
        .get_template("layout.html")
        .render(
            content="error.html",
            title=error.title,
            error=error,
            live=False,
            refresh_seconds=REFRESH_SECONDS,
        )
    )
    return _html(error.status, html, error.headers)


def _html(status: int, html: str, headers: dict[str, str] | None = None) -> Response:
    from flask import Response

    response = Response(html, status=status, mimetype="text/html")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers or {})
    return response


def _asset(request: Request, name: str) -> Response:
    from flask import Response

    found = ASSETS_BY_NAME.get(name)
    if found is None:
        raise PageError(404, "Not found", "There is no such file.")
    response = Response(found.body, status=200, content_type=found.content_type)
    response.headers.update(SECURITY_HEADERS)
    # Revalidated on every use: a deploy changes the files under the same names.
    response.headers["Cache-Control"] = "no-cache"
    response.set_etag(found.etag)
    response.make_conditional(request)  # 304 when the caller has this version
    return response


# ------------------------------------------------------------------------- templates

_environment: Environment | None = None


def _env() -> Environment:
    global _environment
    if _environment is None:
        env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,  # every template, whatever its name
            auto_reload=False,  # templates change only with a deploy
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(when=when, usd=usd, number=number)
        _environment = env
    return _environment


def when(epoch: float | None) -> str:
    """An epoch time as `YYYY-MM-DD HH:MM:SS UTC` ("" for None)."""
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def usd(value: float | None) -> str:
    """Dollars with enough digits for the small sums batch jobs often cost."""
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.6f}".rstrip("0")


def number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"
