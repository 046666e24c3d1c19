"""One exception hierarchy: retryable versus permanent.

Functions raise (so the trigger retries) only for `RetryableError`; a `PermanentError` is
recorded on the job and acknowledged, so that bad input never loops.
"""

from __future__ import annotations


class BatchlineError(Exception):
    """Base of every error batchline raises on purpose."""


class RetryableError(BatchlineError):
    """A transient failure: the same work done again later may succeed."""


class PermanentError(BatchlineError):
    """Retrying cannot help: record it and move on."""


class ConfigError(PermanentError):
    """The deployment's settings are missing or malformed."""


class InvalidTransition(PermanentError):
    """A state machine was asked for a move it does not allow."""


class PreconditionFailed(BatchlineError):
    """A conditional write found the object already there (GCS 412, Firestore conflict)."""


class NotFound(BatchlineError):
    """The object, document or provider batch does not exist."""


class AccessDenied(PermanentError):
    """Our service account may not read or write that object."""


class ProviderError(BatchlineError):
    """A provider call failed; `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
