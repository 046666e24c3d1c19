"""Outbound webhooks, the pure parts: which `notify_url` a job may name, the
`job.completed` event, and its Standard Webhooks signature.

Standard Webhooks (standardwebhooks.com), as OpenAI and Svix sign theirs:
- `webhook-id`: the event's id, the same on every delivery of it (a receiver dedupes on
  it). Ours is derived from the job id: a redelivery, or a second publish after a crash,
  carries the same id.
- `webhook-timestamp`: when this delivery was signed, in unix seconds (a receiver refuses
  one too far from its clock, so a retry is signed anew).
- `webhook-signature`: `v1,` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")),
  where the secret is `whsec_` + base64 of its bytes.

A `notify_url` is checked twice: when the job is submitted (the URL's shape and any IP
literal in it) and before each delivery (the addresses its host resolves to), so that a
job cannot make batchline POST into the deployment's own network (SSRF).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

from batchline.domain.models import Job, JobState
from batchline.errors import PermanentError

SECRET_PREFIX = "whsec_"
COMPLETED_EVENT = "job.completed"
MAX_URL_CHARS = 2048
#: Seconds a receiver should accept a timestamp away from its clock (the spec's default).
TOLERANCE_SECONDS = 300
#: Host names that always mean this machine or the cloud's metadata server.
_INTERNAL_NAMES = ("localhost", "metadata", "metadata.google.internal")
_INTERNAL_SUFFIXES = (".localhost", ".internal", ".local")


class WebhookRefused(PermanentError):
    """The receiver's address is not one batchline may connect to (SSRF guard)."""


class WebhookSecretError(ValueError):
    """The configured secret is not `whsec_` + base64 of at least 16 bytes."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookSecretError(f"a webhook secret starts with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSecretError("a webhook secret is whsec_ and base64") from None
    if len(key) < 16:
        raise WebhookSecretError("a webhook secret needs at least 16 bytes of key")
    return key


def make_secret(key: bytes) -> str:
    """The `whsec_...` text of a key (give it 32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(key).decode()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value of one delivery."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery of `body`, signed at `timestamp` (unix seconds)."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, webhook_id, timestamp, body),
    }


def completed_webhook_id(job_id: str) -> str:
    """The `webhook-id` of a job's `job.completed` event: the same on every delivery."""
    return f"msg_{job_id}_completed"


def completed_event(job: Job) -> dict[str, Any]:
    """The `job.completed` event of a job that ended (Standard Webhooks' payload shape:
    `type`, `timestamp`, `data`). Built from the terminal record only, so every publish
    of it is the same."""
    ended = job.ended_at if job.ended_at is not None else job.updated_at
    return {
        "type": COMPLETED_EVENT,
        "timestamp": datetime.fromtimestamp(ended, UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "job_id": job.job_id,
            "state": str(job.state),
            "counts": job.counts,
            "usage": job.usage,
            "cost_usd": job.cost_usd,
            "labels": job.options.labels,
            "error": job.error,
            "output_prefix": job.output_prefix,
            "results_uri": job.results_uri if job.state is not JobState.REJECTED else None,
            "summary_uri": job.summary_uri,
            "created_at": job.created_at,
            "ended_at": job.ended_at,
        },
    }


# ------------------------------------------------------------------------ notify_url


def notify_url_problem(url: object, *, allow_insecure_local: bool = False) -> str | None:
    """Why `url` cannot be a job's `notify_url`, or None when it can.

    https only, with a host, no user info, no fragment, at most MAX_URL_CHARS; no IP
    literal or host name that means this machine, a private network, link-local addresses
    (the metadata server) or other special ranges. `allow_insecure_local` (the local stack
    and tests, never a deployment) also takes `http://127.0.0.1:<port>/...` and
    `http://localhost:<port>/...`, so that the stack can deliver to its own receiver.
    """
    if not isinstance(url, str):
        return "expected an https:// URL as a string"
    if len(url) > MAX_URL_CHARS:
        return f"longer than {MAX_URL_CHARS} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "must not hold spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry user info (user:password@)"
    if parts.fragment or url.endswith("#"):
        return "must not have a fragment (#...)"
    if allow_insecure_local and _is_local(parts, host):
        return None
    if parts.scheme != "https":
        return "must be an https:// URL"
    if port == 0:
        return "port 0 is not a port"
    if _internal_name(host):
        return f"the host {host!r} is internal; give a public host"
    address = _ip_literal(host)
    if address is not None:
        return address_problem(address)
    return None


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why batchline must not connect to `address`, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return f"the address {address} is not public (loopback, private, link-local or reserved)"
    return None


def _is_local(parts: SplitResult, host: str) -> bool:
    if parts.scheme not in ("http", "https"):
        return False
    if host.lower() == "localhost":
        return True
    address = _ip_literal(host)
    return address is not None and address.is_loopback


def _internal_name(host: str) -> bool:
    lowered = host.lower()
    return lowered in _INTERNAL_NAMES or lowered.endswith(_INTERNAL_SUFFIXES)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        pass
    # Forms a resolver reads as IPv4 (`2130706433`, `0x7f.1`, `127.1`) but ip_address does
    # not: refused as if they were the address they spell.
    if all(part and _is_number(part) for part in host.split(".")) and host.count(".") <= 3:
        try:
            return _legacy_ipv4(host)
        except ValueError:
            return ipaddress.IPv4Address(0)
    return None


def _is_number(part: str) -> bool:
    lowered = part.lower()
    if lowered.startswith("0x"):
        return all(c in "0123456789abcdef" for c in lowered[2:])
    return part.isdigit()


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address:
    """inet_aton's reading of a dotted number with 1 to 4 parts (hex, octal, decimal)."""
    numbers = [
        int(p, 0) if not (len(p) > 1 and p[0] == "0" and p[1] not in "xX") else int(p, 8)
        for p in host.split(".")
    ]
    *head, last = numbers
    value = 0
    for number in head:
        if number > 255:
            raise ValueError(host)
        value = value << 8 | number
    value = value << (8 * (4 - len(numbers) + 1)) | last if head else last
    if value >= 2**32:
        raise ValueError(host)
    return ipaddress.IPv4Address(value)
