"""One exception hierarchy: retryable versus permanent.

Functions raise (so the trigger retries) only for `RetryableError`; a `PermanentError` is
recorded on the job and acknowledged, so that bad input never loops. Every error an
adapter raises for a failed call is one or the other (`ProviderError` included), so the
entry points decide retry by these two classes alone. `NotFound` and `PreconditionFailed`
are answers, not failures: the services turn them into one of the two where it matters.
"""

from __future__ import annotations

from typing import Any


class BatchlineError(Exception):
    """Base of every error batchline raises on purpose."""


class RetryableError(BatchlineError):
    """A transient failure: the same work done again later may succeed."""


class Contention(RetryableError):
    """A transaction kept losing to concurrent ones and gave up: someone else changed
    the record; trying later may succeed, and where the winner does the work, nothing is
    left to do (`services.leases.contended`)."""


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
    """A provider call failed; `retryable` says whether to try again, and `retry_after`
    (seconds) when the provider said when (its `Retry-After`).

    `ProviderError(message, retryable=...)` builds a `RetryableProviderError` or a
    `PermanentProviderError`, so that every provider failure is also exactly one of
    `RetryableError` and `PermanentError`.
    """

    retryable: bool

    def __new__(
        cls,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> Any:
        if cls is ProviderError:
            cls = RetryableProviderError if retryable else PermanentProviderError
        return super().__new__(cls, message)

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> Any:
        return (_provider_error, (str(self), self.retryable, self.status, self.retry_after))


class RetryableProviderError(ProviderError, RetryableError):
    """A provider failure worth trying again (429, 5xx, a dropped connection)."""


class PermanentProviderError(ProviderError, PermanentError):
    """A provider refusal that the same call cannot get past (400, 401, 404)."""


def _provider_error(
    message: str, retryable: bool, status: int | None, retry_after: float | None = None
) -> ProviderError:
    error: ProviderError = ProviderError(
        message, retryable=retryable, status=status, retry_after=retry_after
    )
    return error
