"""Read a job's results.jsonl as typed records, one line at a time.

```python
from batchline import BatchSuccess, read_results

for result in read_results("gs://OUTPUT/invoices/JOB_ID/", Invoice):
    if isinstance(result, BatchSuccess):
        save(result.custom_id, result.parsed)  # an Invoice
    else:
        print(result.custom_id, result.error_type, result.path, result.message)
```

The source is a local file (`.jsonl`, or gzip-compressed), a `gs://bucket/name` object,
or a job's output prefix ending in `/` (its `results.jsonl` is read). Nothing is loaded
whole: lines are decoded, checked and yielded one by one, so a results file of any size
reads in constant memory. A line that is not a success, or whose answer does not fit
`model`, comes back as a `BatchError`; only a file that cannot be read raises
`ResultsFileError`.

This module imports neither pydantic nor the Google clients until a read needs them.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import orjson

from batchline.errors import BatchlineError

if TYPE_CHECKING:
    from google.cloud.storage import Client

__all__ = ["BatchError", "BatchSuccess", "ResultsFileError", "read_results"]

T = TypeVar("T")

RESULTS_NAME = "results.jsonl"
_GZIP_MAGIC = b"\x1f\x8b"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ResultsFileError(BatchlineError):
    """The results file cannot be read: missing, not JSONL, corrupt gzip, ...
    `line_number` is the 1-based line of the file where reading failed, when known."""

    def __init__(self, message: str, *, source: str, line_number: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.line_number = line_number


@dataclass(frozen=True, slots=True)
class BatchSuccess(Generic[T]):
    """A request that succeeded; `parsed` is its answer (a `model` instance when the read
    was given a model, else `output.parsed` when a schema applied, else the text)."""

    custom_id: str
    line: int
    parsed: T
    text: str | None
    provider: str | None
    model: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    cost_usd: float | None
    #: How many times the request was sent (repairs and retries included).
    attempts: int
    #: The result line as written, with the provider's `response`.
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BatchError:
    """A request without a usable answer. `status` is the line's (`failed`, `expired`,
    `canceled`, `invalid`, or `succeeded` when the answer did not fit the model);
    `error_type` is the line's `error.type` (`schema_validation`, `invalid_request`, ...)
    or `model_validation`, with `path` the place in the answer (or request) at fault."""

    custom_id: str
    line: int
    status: str
    error_type: str | None
    message: str
    path: str | None
    retryable: bool
    raw: dict[str, Any] = field(repr=False, compare=False)


@overload
def read_results(
    source: str | os.PathLike[str], model: None = None, *, client: Client | None = None
) -> Iterator[BatchSuccess[Any] | BatchError]: ...


@overload
def read_results(
    source: str | os.PathLike[str], model: type[T], *, client: Client | None = None
) -> Iterator[BatchSuccess[T] | BatchError]: ...


def read_results(
    source: str | os.PathLike[str],
    model: type[Any] | None = None,
    *,
    client: Client | None = None,
) -> Iterator[BatchSuccess[Any] | BatchError]:
    """Yield one `BatchSuccess` or `BatchError` per result line of `source`, in order.

    `source`: a local path (a directory means its results.jsonl), `gs://bucket/name`, or
    `gs://bucket/prefix/` (its results.jsonl). `model`: a pydantic model (validated with
    `model_validate`), or any type pydantic's `TypeAdapter` takes; None yields the parsed
    JSON as it is. `client`: a `google.cloud.storage.Client` for gs:// sources (default:
    one from the environment, on STORAGE_EMULATOR_HOST when that is set).

    Reading starts at the first `next()`. Raises `ResultsFileError` when the file cannot
    be read or a line is not a JSON object; never for one line's content.
    """
    validate = _Validator(model) if model is not None else None
    name = _source_name(source)
    number = 0  # lines read so far
    opened = False
    try:
        with _open(name, client) as stream:
            opened = True
            for raw in stream:
                number += 1
                record = _decode(raw, name, number)
                if record is not None:
                    yield _result(record, validate)
    except ResultsFileError:
        raise
    except (OSError, EOFError, zlib.error, BatchlineError) as exc:
        # A missing object, a failed download, corrupt gzip: the file, not one line.
        at = f" at line {number + 1}" if opened else ""
        raise ResultsFileError(
            f"cannot read {name}{at}: {exc}",
            source=name,
            line_number=number + 1 if opened else None,
        ) from exc


# -- opening -----------------------------------------------------------------------------


def _source_name(source: str | os.PathLike[str]) -> str:
    text = os.fspath(source)
    if text.startswith("gs://") and text.endswith("/"):
        return text + RESULTS_NAME
    if not text.startswith("gs://") and Path(text).is_dir():
        return str(Path(text) / RESULTS_NAME)
    return text


@contextmanager
def _open(name: str, client: Client | None) -> Iterator[Iterable[bytes]]:
    """`name` as a binary stream of lines (split on b"\\n" only), gunzipped when its
    content is gzip. A GCS read's errors come out as batchline's (NotFound, ...)."""
    with ExitStack() as stack:
        stream: Any
        if name.startswith("gs://"):
            from batchline.adapters.gcs import GcsBlobStore, split_uri

            try:
                split_uri(name)
            except ValueError as exc:
                raise ResultsFileError(str(exc), source=name) from exc
            store = GcsBlobStore(client or _storage_client())
            stream = stack.enter_context(store.open_read(name))
        else:
            stream = stack.enter_context(open(name, "rb"))
        # GCS's reader cannot peek; a buffer over it can.
        buffered: io.BufferedReader = (
            stream if hasattr(stream, "peek") else io.BufferedReader(stream)
        )
        if buffered.peek(2)[:2] == _GZIP_MAGIC:
            yield stack.enter_context(gzip.GzipFile(fileobj=buffered, mode="rb"))
        else:
            yield buffered


def _storage_client() -> Client:
    from google.cloud.storage import Client

    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return Client(project=project, credentials=anonymous)
    return Client(project=project)


def _decode(raw: bytes, name: str, number: int) -> dict[str, Any] | None:
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ResultsFileError(
            f"{name}: line {number} is not JSON ({exc}); is this a batchline results file?",
            source=name,
            line_number=number,
        ) from exc
    if not isinstance(record, dict):
        raise ResultsFileError(
            f"{name}: line {number} is not a result record (a JSON object)",
            source=name,
            line_number=number,
        )
    return record


# -- records -----------------------------------------------------------------------------


class _Validator:
    """Turns a success's answer into a `model` instance, or raises ValueError."""

    def __init__(self, model: type[Any]) -> None:
        self.model = model
        if hasattr(model, "model_validate") and hasattr(model, "model_validate_json"):
            self._python = model.model_validate
            self._json = model.model_validate_json
        else:
            from pydantic import TypeAdapter

            adapter: TypeAdapter[Any] = TypeAdapter(model)
            self._python = adapter.validate_python
            self._json = adapter.validate_json

    def __call__(self, output: dict[str, Any]) -> Any:
        if "parsed" in output:
            return self._python(output["parsed"])
        text = output.get("text")
        if not isinstance(text, str):
            raise ValueError("the result has no answer to validate (no output.parsed or text)")
        return self._json(text)


def _result(record: dict[str, Any], validate: _Validator | None) -> BatchSuccess[Any] | BatchError:
    status = str(record.get("status"))
    custom_id = str(record.get("custom_id"))
    line = _int(record.get("line"))
    output = record.get("output")
    if status != "succeeded" or not isinstance(output, dict):
        return _error(record, custom_id, line, status)
    if validate is None:
        parsed = output["parsed"] if "parsed" in output else output.get("text")
    else:
        try:
            parsed = validate(output)
        except (ValueError, TypeError) as exc:
            path, message = _validation_error(exc)
            return BatchError(
                custom_id=custom_id,
                line=line,
                status=status,
                error_type="model_validation",
                message=f"answer does not fit {_type_name(validate.model)}: {message}",
                path=path,
                retryable=False,
                raw=record,
            )
    usage = record.get("usage")
    cost = record.get("cost_usd")
    attempts = record.get("attempts")
    return BatchSuccess(
        custom_id=custom_id,
        line=line,
        parsed=parsed,
        text=_str_or_none(output.get("text")),
        provider=_str_or_none(record.get("provider")),
        model=_str_or_none(record.get("model")),
        finish_reason=_str_or_none(output.get("finish_reason")),
        usage=usage if isinstance(usage, dict) else None,
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
        attempts=len(attempts) if isinstance(attempts, list) else _int(attempts, default=1),
        raw=record,
    )


def _error(record: dict[str, Any], custom_id: str, line: int, status: str) -> BatchError:
    error = record.get("error")
    if not isinstance(error, dict):
        error = {}
    message = error.get("message")
    if not message:
        message = "no output" if status == "succeeded" else f"the request ended {status}"
    path = error.get("path") or error.get("field")
    return BatchError(
        custom_id=custom_id,
        line=line,
        status=status,
        error_type=_str_or_none(error.get("type")),
        message=str(message),
        path=str(path) if path is not None else None,
        retryable=bool(error.get("retryable", False)),
        raw=record,
    )


def _validation_error(exc: Exception) -> tuple[str | None, str]:
    """The path and message of a validation failure; a pydantic error's location as a
    JSON path (`$.items[0].price`, `$` for the whole answer)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return None, str(exc)
    try:
        details = list(errors(include_url=False))
    except TypeError:
        details = list(errors())
    if not details:
        return None, str(exc)
    described = [f"{_json_path(d.get('loc', ()))}: {d.get('msg', '')}" for d in details[:3]]
    more = len(details) - len(described)
    message = "; ".join(described) + (f" (and {more} more)" if more > 0 else "")
    return _json_path(details[0].get("loc", ())), message


def _json_path(loc: Iterable[Any]) -> str:
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.match(part):
            path += f".{part}"
        else:
            path += f"[{str(part)!r}]"
    return path


def _type_name(model: type[Any]) -> str:
    return getattr(model, "__qualname__", None) or repr(model)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
