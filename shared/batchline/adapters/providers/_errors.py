"""Turning an SDK's exceptions into ProviderError, retryable or not: the shared part.

Each adapter subclasses `TranslateErrors` with the one thing that differs, `translate`.
"""

from __future__ import annotations

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
