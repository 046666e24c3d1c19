"""Turning the Google clients' exceptions (GCS, Firestore) into batchline's, the same way
for every call: each failure is retryable or permanent, and `NotFound`, `AccessDenied`
and `PreconditionFailed` keep their meaning."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from batchline.errors import (
    AccessDenied,
    BatchlineError,
    NotFound,
    PermanentError,
    PreconditionFailed,
    RetryableError,
)


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """`with translated("reading gs://b/x"):` re-raises the client's errors as ours."""
    from google.api_core import exceptions as gexc

    try:
        yield
    except BatchlineError:
        raise
    except gexc.NotFound as exc:
        raise NotFound(f"{doing}: not found") from exc
    except (gexc.Forbidden, gexc.Unauthorized, gexc.PermissionDenied) as exc:
        raise AccessDenied(f"{doing}: permission denied") from exc
    except gexc.PreconditionFailed as exc:
        raise PreconditionFailed(f"{doing}: precondition failed") from exc
    except gexc.GoogleAPICallError as exc:
        if _transient_status(exc):
            raise RetryableError(f"{doing}: {exc}") from exc
        raise PermanentError(f"{doing}: {exc}") from exc
    except gexc.RetryError as exc:
        raise RetryableError(f"{doing}: gave up retrying: {exc}") from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise RetryableError(f"{doing}: {exc}") from exc
    except Exception as exc:
        if _transport_error(exc):
            raise RetryableError(f"{doing}: {exc}") from exc
        raise


def _transient_status(exc: Exception) -> bool:
    from google.api_core import exceptions as gexc

    transient = (
        gexc.TooManyRequests,
        gexc.ResourceExhausted,
        gexc.ServerError,
        gexc.DeadlineExceeded,
        gexc.ServiceUnavailable,
        gexc.Aborted,
    )
    return isinstance(exc, transient) or getattr(exc, "code", None) in (408, 429)


def _transport_error(exc: Exception) -> bool:
    """requests' and google-auth's connection failures (not subclasses of OSError)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"RequestException", "TransportError", "ChunkedEncodingError"})
