"""A webhook receiver for the local stack and tests: records every POST, checks its
Standard Webhooks signature, and answers what it is told to.

The signature is checked with the `openai` SDK's `webhooks.verify_signature` (a Standard
Webhooks implementation that is not batchline's), against the secret in the environment
variable the stack names (never on the command line). Each recorded delivery says
`verified` (true, or false with the SDK's reason), so a test sees both that a webhook
came and that it was signed right.

- `POST <any path>`: recorded; answered with the next status of the script (see config),
  else 200.
- `GET /_receiver/deliveries`: every delivery, oldest first (`path`, `headers`: the
  `webhook-*` ones, `body`, `verified`, `error`, `status` answered, `received_at`).
- `POST /_receiver/config {"answers": [500, 200]}`: the statuses the next POSTs get.
- `POST /_receiver/reset`: forget the deliveries and the script.
- `GET /`: health.

    python -m batchline_tools.local.receiver --host 127.0.0.1 --port P [--secret-env NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from batchline_emulators._wsgi import json_response, serve

WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type")
MAX_BODY_BYTES = 1024 * 1024


class WebhookReceiver:
    """The WSGI app; `deliveries()` for tests that run it in a thread."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._deliveries: list[dict[str, Any]] = []
        self._answers: list[int] = []

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        response = self._dispatch(request)
        return response(environ, start_response)

    def deliveries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for d in self._deliveries]

    def script(self, answers: list[int]) -> None:
        with self._lock:
            self._answers = list(answers)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path == "/" and request.method == "GET":
            return json_response({"receiver": "batchline-webhooks", "ok": True})
        if path == "/_receiver/deliveries" and request.method == "GET":
            return json_response({"data": self.deliveries()})
        if path == "/_receiver/config" and request.method == "POST":
            body = orjson.loads(request.get_data() or b"{}")
            answers = body.get("answers", []) if isinstance(body, dict) else None
            if not isinstance(answers, list) or not all(
                isinstance(a, int) and 100 <= a <= 599 for a in answers
            ):
                return json_response({"error": "answers: a list of HTTP statuses"}, 400)
            self.script(answers)
            return json_response({"answers": answers})
        if path == "/_receiver/reset" and request.method == "POST":
            with self._lock:
                self._deliveries, self._answers = [], []
            return json_response({"ok": True})
        if request.method != "POST":
            return json_response({"error": "POST a webhook"}, 405)
        return self._receive(request)

    def _receive(self, request: Request) -> Response:
        raw = request.stream.read(MAX_BODY_BYTES + 1)
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified, error = self._verify(raw, headers)
        with self._lock:
            status = self._answers.pop(0) if self._answers else 200
            self._deliveries.append(
                {
                    "path": request.full_path.rstrip("?"),
                    "headers": {k: headers[k] for k in WEBHOOK_HEADERS if k in headers},
                    "body": raw.decode("utf-8", errors="replace"),
                    "verified": verified,
                    "error": error,
                    "status": status,
                    "received_at": time.time(),
                }
            )
        return json_response({"received": True}, status)

    def _verify(self, raw: bytes, headers: dict[str, str]) -> tuple[bool, str | None]:
        if not self.secret:
            return False, "the receiver has no secret to verify with"
        from openai import OpenAI

        try:
            OpenAI(api_key="unused").webhooks.verify_signature(raw, headers, secret=self.secret)
        except Exception as exc:  # the SDK's refusal, whatever its kind, is the answer
            return False, f"{type(exc).__name__}: {exc}"
        return True, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batchline_tools.local.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--secret-env",
        default="BATCHLINE_WEBHOOK_SECRET",
        help="the environment variable holding the whsec_ secret to verify with",
    )
    args = parser.parse_args(argv)
    serve(WebhookReceiver(os.environ.get(args.secret_env)), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
