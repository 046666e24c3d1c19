"""What the API's operations refuse, each with the HTTP status `batchline.edge` answers."""

from __future__ import annotations

from batchline.errors import PermanentError


class BadRequest(PermanentError):
    """The API call itself is malformed (HTTP 400); `field` names what to fix."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TooLarge(BadRequest):
    """A part of the call is over its documented size limit (HTTP 413)."""


class KeyReused(PermanentError):
    """The Idempotency-Key was first used with a different request (HTTP 422)."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class Missing(PermanentError):
    """What the call names does not exist, or not yet (HTTP 404); `field` names it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conflict(PermanentError):
    """The call does not fit the job's state (HTTP 409)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
