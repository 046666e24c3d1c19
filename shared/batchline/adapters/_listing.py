"""The cursors of `JobStore.list_jobs`, for every adapter: the position of the last job a
page covered (its `created_at` and id) and a MAC over that position and the query's
filters, keyed by the store. A cursor someone changed, one from another deployment's
store and one from a query with other filters all fail the MAC: `InvalidCursor`.

The key is not a secret (a cursor only says where a listing stopped, which the listing
itself shows): the MAC catches mistakes and tampering, it does not hide anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson

from batchline.ports import InvalidCursor, JobQuery

MAX_CURSOR_CHARS = 512
_MAC_BYTES = 16


def store_key(*identity: str) -> bytes:
    """A cursor key for the store named by `identity` (project, database, ...)."""
    return hashlib.sha256("\0".join(("batchline-cursor", *identity)).encode()).digest()


def _filters(query: JobQuery) -> bytes:
    return orjson.dumps(
        [
            None if query.state is None else str(query.state),
            sorted(query.labels.items()),
            query.created_after,
            query.created_before,
        ]
    )


def _mac(key: bytes, body: bytes, query: JobQuery) -> bytes:
    return hmac.new(key, body + b"\0" + _filters(query), hashlib.sha256).digest()[:_MAC_BYTES]


def encode(key: bytes, query: JobQuery, created_at: float, job_id: str) -> str:
    """The cursor of the page after the job at (`created_at`, `job_id`)."""
    body = orjson.dumps([created_at, job_id])
    return base64.urlsafe_b64encode(body + _mac(key, body, query)).decode().rstrip("=")


def decode(key: bytes, query: JobQuery) -> tuple[float, str] | None:
    """The position `query.cursor` holds, None without one; raises InvalidCursor."""
    cursor = query.cursor
    if cursor is None:
        return None
    if not cursor or len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("not a cursor this listing handed out")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCursor("not a cursor this listing handed out") from None
    body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(key, body, query)):
        raise InvalidCursor(
            "not a cursor this listing handed out for these filters (changed, from another "
            "deployment, or from a listing with other filters)"
        )
    created_at, job_id = orjson.loads(body)
    return float(created_at), str(job_id)
