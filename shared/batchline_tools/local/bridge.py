"""Event bridge: GCS notifications (Pub/Sub push) in, Eventarc storage CloudEvents out.

In production Eventarc turns "object finalized" into a CloudEvent and POSTs it to the
`submit` function. Locally fake-gcs-server publishes a GCS notification (payload format
JSON_API_V1) to the Pub/Sub emulator, whose push subscription delivers it here; the bridge
re-sends it to the function as the CloudEvent Eventarc would deliver, in binary content
mode, and answers Pub/Sub with the function's status so that a failure is redelivered.

    python -m batchline_tools.local.bridge --port P --target http://127.0.0.1:Q/
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from werkzeug.wrappers import Request, Response

log = logging.getLogger("batchline_tools.local.bridge")

FINALIZED_TYPE = "google.cloud.storage.object.v1.finalized"
_ACK = 204
_FORWARD_TIMEOUT_SECONDS = 900.0


class PushError(ValueError):
    """The request is not a Pub/Sub push delivery of a GCS notification."""


def storage_cloudevent(envelope: Mapping[str, Any]) -> tuple[dict[str, str], bytes] | None:
    """CloudEvent headers and body for a push delivery, or None when it is not a finalize.

    `envelope` is the JSON body of a Pub/Sub push request:
    `{"message": {"data", "attributes", "messageId", "publishTime"}, "subscription"}`.
    """
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        raise PushError("push body has no 'message' object")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise PushError("message attributes are not an object")
    if attributes.get("eventType") != "OBJECT_FINALIZE":
        return None
    try:
        obj = json.loads(base64.b64decode(str(message.get("data") or ""), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise PushError(f"message data is not base64 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise PushError("message data is not a JSON object")
    bucket = obj.get("bucket") or attributes.get("bucketId")
    name = obj.get("name") or attributes.get("objectId")
    if not bucket or not name:
        raise PushError("notification names no bucket or object")
    obj.setdefault("bucket", bucket)
    obj.setdefault("name", name)
    event_id = str(message.get("messageId") or message.get("message_id") or "")
    if not event_id:
        raise PushError("message has no messageId")
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-type": FINALIZED_TYPE,
        "ce-subject": header_value(f"objects/{name}"),
        "ce-time": _event_time(attributes, obj, message),
        "Content-Type": "application/json",
    }
    return headers, json.dumps(obj, separators=(",", ":")).encode()


def header_value(text: str) -> str:
    """A CloudEvents attribute as an HTTP header value: the HTTP binding percent-encodes
    everything outside printable ASCII, and space, `"` and `%` (a header is Latin-1 at
    best, so a non-ASCII object name would otherwise never be delivered)."""
    return "".join(
        c if "!" <= c <= "~" and c not in '"%' else urllib.parse.quote(c, safe="") for c in text
    )


def _event_time(
    attributes: Mapping[str, Any], obj: Mapping[str, Any], message: Mapping[str, Any]
) -> str:
    # The object's `updated` is when the finalize happened, with sub-second precision;
    # the notification's eventTime is whole seconds in fake-gcs-server.
    for value in (
        obj.get("updated"),
        attributes.get("eventTime"),
        message.get("publishTime"),
        message.get("publish_time"),
    ):
        if isinstance(value, str) and value:
            return value
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Bridge:
    """WSGI app: POST a push delivery to any path; GET /healthz answers 200."""

    def __init__(self, target: str, *, timeout: float = _FORWARD_TIMEOUT_SECONDS) -> None:
        self.target = target
        self.timeout = timeout

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        response = self.handle(request)
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:
        if request.method == "GET":
            return Response("ok\n", status=200, mimetype="text/plain")
        if request.method != "POST":
            return Response(status=405)
        try:
            envelope = json.loads(request.get_data())
            if not isinstance(envelope, dict):
                raise PushError("push body is not a JSON object")
            event = storage_cloudevent(envelope)
        except (PushError, ValueError) as exc:
            # Acknowledge: a malformed delivery would fail again on every redelivery.
            log.error("dropping malformed push delivery: %s", exc)
            return Response(f"malformed push delivery: {exc}\n", status=_ACK)
        if event is None:
            attributes = envelope.get("message", {}).get("attributes", {})
            log.info("acknowledging %s (not forwarded)", attributes.get("eventType"))
            return Response(status=_ACK)
        headers, body = event
        status, text = self.forward(headers, body)
        log.info(
            "forwarded %s %s -> %s",
            headers["ce-id"],
            headers["ce-subject"],
            status,
        )
        return Response(text, status=status, mimetype="text/plain")

    def forward(self, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
        req = urllib.request.Request(self.target, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return int(resp.status), resp.read(4096).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read(4096).decode(errors="replace")
        except OSError as exc:
            log.warning("target %s unreachable: %s", self.target, exc)
            return 502, f"target unreachable: {exc}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchline_tools.local.bridge", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="URL of the submit function")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    from werkzeug.serving import run_simple

    log.info("bridge on http://%s:%d -> %s", args.host, args.port, args.target)
    run_simple(args.host, args.port, Bridge(args.target), threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
