"""What every work file's reader and writer share: the blob calls they make, the error a
file that is not what its reader expects raises, and streamed create-if-absent writes."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from batchline.errors import PermanentError, PreconditionFailed

JSON = "application/json"
JSONL = "application/jsonl"
TSV = "text/tab-separated-values"


class WorkBlobs(Protocol):
    """The part of `ports.BlobStore` the work files use (any BlobStore is one)."""

    def open_read(
        self, uri: str, generation: str | None = None, *, buffer_bytes: int | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """A streaming reader (raises NotFound); `buffer_bytes` bounds one fetch."""
        ...

    def read_bytes(self, uri: str) -> bytes:
        """The whole object (raises NotFound)."""
        ...

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> bool:
        """Create the object only if absent; False when it existed."""
        ...

    def open_write(self, uri: str, content_type: str) -> AbstractContextManager[BinaryIO]:
        """A streaming writer that creates the object only if absent."""
        ...


class WorkFileError(PermanentError):
    """A work file that is not what its reader expects (malformed, or another kind of file):
    names the file and the field. Reading it again cannot help."""

    def __init__(self, uri: str, field: str, reason: str) -> None:
        super().__init__(f"{uri}: {field}: {reason}")
        self.uri = uri
        self.field = field
        self.reason = reason


def kind(value: object) -> str:
    """The JSON name of `value`'s type, for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


class Fields:
    """Reads the fields of one JSON object of a work file, each checked for its type; any
    mismatch raises `WorkFileError` naming the file and the field (`where` prefixes it:
    `line 3.custom_id`)."""

    __slots__ = ("_data", "_uri", "_where")

    def __init__(self, data: object, uri: str, where: str = "") -> None:
        if not isinstance(data, dict):
            raise WorkFileError(uri, where or "file", f"expected an object, got {kind(data)}")
        self._data: dict[str, Any] = data
        self._uri = uri
        self._where = where

    def _name(self, name: str) -> str:
        return f"{self._where}.{name}" if self._where else name

    def _get(self, name: str, types: type | tuple[type, ...], what: str, optional: bool) -> Any:
        if name not in self._data:
            if optional:
                return None
            raise WorkFileError(self._uri, self._name(name), "missing")
        value = self._data[name]
        if value is None and optional:
            return None
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise WorkFileError(self._uri, self._name(name), f"expected {what}, got {kind(value)}")
        return value

    def integer(self, name: str) -> int:
        """The field `name`, an integer."""
        value: int = self._get(name, int, "an integer", False)
        return value

    def number(self, name: str) -> float:
        """The field `name`, a number."""
        value: float = self._get(name, (int, float), "a number", False)
        return value

    def optional_number(self, name: str) -> float | None:
        """The field `name`, a number, or None when null or absent."""
        value: float | None = self._get(name, (int, float), "a number", True)
        return value

    def text(self, name: str) -> str:
        """The field `name`, a string."""
        value: str = self._get(name, str, "a string", False)
        return value

    def optional_text(self, name: str) -> str | None:
        """The field `name`, a string, or None when null or absent."""
        value: str | None = self._get(name, str, "a string", True)
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        """The field `name`, an object."""
        value: dict[str, Any] = self._get(name, dict, "an object", False)
        return value

    def optional_mapping(self, name: str) -> dict[str, Any] | None:
        """The field `name`, an object, or None when null or absent."""
        value: dict[str, Any] | None = self._get(name, dict, "an object", True)
        return value

    def array(self, name: str) -> list[Any]:
        """The field `name`, an array."""
        value: list[Any] = self._get(name, list, "an array", False)
        return value

    def optional_array(self, name: str) -> list[Any] | None:
        """The field `name`, an array, or None when null or absent."""
        value: list[Any] | None = self._get(name, list, "an array", True)
        return value

    def error(self, name: str, reason: str) -> WorkFileError:
        """The error for a field whose value is wrong in a way its type does not show."""
        return WorkFileError(self._uri, self._name(name), reason)


class StreamedFile:
    """A work file written as a stream while its content is produced, created only if
    absent (`BlobStore.open_write`). Work files have deterministic names and content, so
    a file that exists already holds these bytes (an earlier invocation wrote it): then
    the writes go nowhere. `commit` finishes the file; `abandon` (on failure) leaves no
    file behind. A write's error goes through the store's writer as it would leaving a
    `with` block (the store raises its own error for it)."""

    def __init__(self, blobs: WorkBlobs, uri: str, content_type: str) -> None:
        self.uri = uri
        self._context: AbstractContextManager[BinaryIO] | None = blobs.open_write(uri, content_type)
        self._out: BinaryIO | None = None
        try:
            self._out = self._context.__enter__()
        except PreconditionFailed:
            self._context = None

    def write(self, data: bytes) -> None:
        """Append `data` (nothing when the file existed already)."""
        if self._out is None:
            return
        try:
            self._out.write(data)
        except Exception as exc:
            self._end(exc)

    def commit(self) -> None:
        """Finish the file: from now on it exists, whole."""
        self._end(None)

    def abandon(self, exc: BaseException) -> None:
        """Give the file up after `exc` (planning failed): nothing is created, and nothing
        is raised here (the caller raises `exc`)."""
        with contextlib.suppress(Exception):
            self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        """Leave the store's writer, with `exc` when one ended the writing: the store's
        error for it is raised, or `exc` itself, except that a file found to exist already
        (PreconditionFailed) is no error."""
        context, self._context, self._out = self._context, None, None
        if context is None:
            return
        try:
            suppressed = context.__exit__(*_info(exc))
        except PreconditionFailed:
            return  # written meanwhile, or before us: the same bytes
        if exc is not None and not suppressed and not isinstance(exc, PreconditionFailed):
            raise exc

    @property
    def open(self) -> bool:
        """Whether writes still go to the file (neither ended nor found existing)."""
        return self._out is not None


def _info(
    exc: BaseException | None,
) -> tuple[type[BaseException] | None, BaseException | None, TracebackType | None]:
    if exc is None:
        return None, None, None
    return type(exc), exc, exc.__traceback__
