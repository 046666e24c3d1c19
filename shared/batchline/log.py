"""Structured JSON logs that Cloud Logging understands (`severity`, `message`, fields).

Never log secrets or request bodies: callers pass ids, counts and states only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

_configured = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def get_logger(name: str) -> logging.Logger:
    global _configured
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
        root = logging.getLogger("batchline")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
        _configured = True
    return logging.getLogger(name)


def fields(**values: Any) -> dict[str, Any]:
    """`logger.info("msg", extra=fields(job_id=...))` — keeps call sites short."""
    return {"fields": values}
