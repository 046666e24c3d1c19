"""Turning an SDK's exceptions into ProviderError, retryable or not: the shared part.

Each adapter subclasses `TranslateErrors` with the one thing that differs, `translate`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from batchline.errors import ProviderError


class TranslateErrors:
    """`with Sub("doing X"):` re-raises the SDK's exceptions as ProviderError."""

    def __init__(self, doing: str) -> None:
        self._doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, ProviderError):
            return  # success, ours already, or GeneratorExit/KeyboardInterrupt: not the SDK's
        error = self.translate(exc)
        if error is not None:
            raise error from exc

    def translate(self, exc: Exception) -> ProviderError | None:
        """The ProviderError for `exc`, or None to let it through unchanged."""
        raise NotImplementedError


def http_retryable(status: int, should_retry: str | None) -> bool:
    """The retry rule of the OpenAI and Anthropic SDKs (they honour `x-should-retry`)."""
    if should_retry == "false":
        return False
    return status in (408, 409, 429) or status >= 500


#: The longest `Retry-After` taken as said (a larger one is capped by its user anyway).
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a response's `retry-after-ms` or `retry-after` (seconds) asks for; None
    when it names none, or one that is not a sane number of seconds (an HTTP date is not
    read: the providers send seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and 0 <= seconds <= MAX_RETRY_AFTER_SECONDS:
            return seconds
    return None
