"""HTTP plumbing shared by the provider emulators.

JSON responses, an exception that carries a ready-made error response, a threaded
werkzeug server that is quiet unless asked (`serve`, `start_in_thread`) and the common
command line (`--host`, `--port`, `--config-json`, `--verbose`), and the admin endpoints
every emulator serves alike.

Every provider formats its error bodies differently, so `HTTPError` takes the body as
is; the emulator modules build it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import Any

import orjson
from werkzeug.routing import Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from batchline_emulators._common import Hold

WSGIApp = Callable[..., Iterable[bytes]]


class HTTPError(Exception):
    """Raised inside a handler; the app turns it into `response()`."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return json_response(self.body, self.status, self.headers)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson (UTF-8, compact)."""
    resp = Response(orjson.dumps(data), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def read_json(request: Request) -> Any:
    """The request body parsed as JSON; `ValueError` when it is not valid JSON."""
    data = request.get_data(cache=True)
    if not data:
        raise ValueError("empty body")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from exc


class _QuietHandler(WSGIRequestHandler):
    """Request handler that logs requests only when the server is verbose."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    verbose = False

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.verbose:
            line = getattr(self, "requestline", "")
            sys.stderr.write(f"{self.address_string()} {line!r} {code} {size}\n")


def _handler(verbose: bool) -> type[WSGIRequestHandler]:
    return type("EmulatorRequestHandler", (_QuietHandler,), {"verbose": verbose})


def make_threaded_server(
    app: WSGIApp, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False
) -> BaseWSGIServer:
    """A threaded werkzeug server bound to (host, port); port 0 picks a free port."""
    return make_server(host, port, app, threaded=True, request_handler=_handler(verbose))


def server_url(server: BaseWSGIServer) -> str:
    host, port = server.socket.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(app: WSGIApp, host: str, port: int, *, verbose: bool = False) -> None:
    """Serve `app` until SIGTERM or SIGINT, then return."""
    server = make_threaded_server(app, host, port, verbose=verbose)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so it must not run on the
        # thread that is inside serve_forever() (this one, where signals arrive).
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_in_thread(
    app: WSGIApp, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False
) -> tuple[str, Callable[[], None]]:
    """Serve `app` on a daemon thread; returns (root URL without path, shutdown)."""
    server = make_threaded_server(app, host, port, verbose=verbose)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    stopped = False

    def shutdown() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server_url(server), shutdown


def cli_main(
    description: str,
    build_app: Callable[[dict[str, Any] | None], WSGIApp],
    argv: list[str] | None = None,
    *,
    default_port: int | None = None,
) -> int:
    """Common `python -m ...` entry point: parse the options, build the app, serve."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port, required=default_port is None)
    parser.add_argument(
        "--config-json", default=None, help="JSON object overriding the emulator's config"
    )
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] | None = None
    if args.config_json:
        try:
            overrides = orjson.loads(args.config_json)
        except orjson.JSONDecodeError as exc:
            parser.error(f"--config-json is not valid JSON: {exc}")
        if not isinstance(overrides, dict):
            parser.error("--config-json must be a JSON object")
    try:
        app = build_app(overrides)
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(app, args.host, args.port, verbose=args.verbose)
    return 0


def admin_rules() -> list[Rule]:
    """The routes of `AdminEndpoints`, for an emulator's URL map."""
    return [
        Rule("/", endpoint="root", methods=["GET"]),
        Rule("/_emulator/config", endpoint="admin_get_config", methods=["GET"]),
        Rule("/_emulator/config", endpoint="admin_set_config", methods=["POST"]),
        Rule("/_emulator/reset", endpoint="admin_reset", methods=["POST"]),
        Rule("/_emulator/release", endpoint="admin_release", methods=["POST"]),
        Rule("/_emulator/expire", endpoint="admin_expire", methods=["POST"]),
        Rule("/_emulator/quota", endpoint="admin_quota", methods=["GET"]),
    ]


class AdminEndpoints:
    """The admin endpoints every emulator serves alike: health, config, reset, release,
    expire, quota.

    No auth and never faulted. A subclass names itself (`emulator_name`), says how its
    provider shapes a 400 (`api_error`), has `lock`, `config`, `clock` and `reset()`,
    lists its batches' holds (`holds()`), expires its batches on demand (`expire()`) and
    says how much of its quotas is in use (`quota()`).
    """

    emulator_name: str
    api_error: Callable[[int, str], HTTPError]
    lock: threading.RLock
    config: Any
    clock: Callable[[], float]

    def reset(self) -> None:
        raise NotImplementedError

    def holds(self) -> Iterable[tuple[str, Hold]]:
        """(batch id, its hold) for every batch (call with the lock held)."""
        raise NotImplementedError

    def expire(self, batch_id: str | None, now: float) -> list[str]:
        """End one batch (`batch_id`: its id, or a Vertex job's name) or, with None, every
        batch still running, at `now` exactly as if its window had passed; the ids expired
        (call with the lock held). An unknown batch answers 404 and one that has ended, or
        is being cancelled, 409, each in the provider's error shape."""
        raise NotImplementedError

    def quota(self) -> dict[str, Any]:
        """Quota use and limits now, keyed by the provider's name (call with the lock held)."""
        raise NotImplementedError

    def h_root(self, request: Request) -> Response:
        """Health check: answers 200 without auth."""
        return json_response({"emulator": self.emulator_name, "ok": True})

    def h_admin_get_config(self, request: Request) -> Response:
        with self.lock:
            return json_response(self.config.to_dict())

    def h_admin_set_config(self, request: Request) -> Response:
        try:
            overrides = read_json(request)
            with self.lock:
                self.config = self.config.merged(overrides)
                return json_response(self.config.to_dict())
        except ValueError as exc:
            raise type(self).api_error(400, str(exc)) from None

    def h_admin_quota(self, request: Request) -> Response:
        """`GET /_emulator/quota`: what counts against each quota now, and the limits."""
        with self.lock:
            return json_response(self.quota())

    def h_admin_reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"ok": True, "config": self.config.to_dict()})

    def _wanted_batch(self, request: Request) -> str | None:
        """The batch an admin call names (`{"batch": ID}`), or None for every one (`{}`)."""
        try:
            body = read_json(request) if request.get_data(cache=True) else {}
        except ValueError as exc:
            raise type(self).api_error(400, str(exc)) from None
        wanted = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(body, dict) or (wanted is not None and not isinstance(wanted, str)):
            raise type(self).api_error(400, 'expected {} or {"batch": "<id>"}')
        return wanted

    def h_admin_expire(self, request: Request) -> Response:
        """End batches now as if their window had passed: every one still running, or
        `{"batch": ID}` only (404 unknown, 409 ended). Answers the ids expired."""
        wanted = self._wanted_batch(request)
        with self.lock:
            expired = self.expire(wanted, self.clock())
        return json_response({"expired": expired})

    def h_admin_release(self, request: Request) -> Response:
        """Let held batches go on: every one, or `{"batch": ID}` only. Answers the ids
        released. Batches created later still take `hold_after_lines` from the config."""
        wanted = self._wanted_batch(request)
        with self.lock:
            now = self.clock()
            released = []
            for batch_id, hold in self.holds():
                if wanted is not None and wanted.rsplit("/", 1)[-1] != batch_id:
                    continue
                if hold.after is not None and hold.released_at is None:
                    hold.released_at = now
                    released.append(batch_id)
        return json_response({"released": released})
