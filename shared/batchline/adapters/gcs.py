"""BlobStore on Google Cloud Storage (and on fake-gcs-server via STORAGE_EMULATOR_HOST).

Every call translates the client's errors the same way (`adapters._google.translated`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from batchline.adapters._google import translated
from batchline.errors import NotFound, PreconditionFailed
from batchline.ports import ObjectInfo

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

# Streaming writes upload in parts of this size (GCS needs a multiple of 256 KiB).
WRITE_CHUNK_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 8 * 1024 * 1024
#: How much `_TranslatedReader.readline` reads ahead at a time.
LINE_READ_BYTES = 256 * 1024


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    if not bucket or not name:
        raise ValueError(f"gs:// URI needs a bucket and an object name: {uri!r}")
    return bucket, name


def make_client(project: str) -> Client:
    from google.cloud.storage import Client

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return Client(project=project, credentials=anonymous)
    return Client(project=project)


class GcsBlobStore:
    def __init__(self, client: Client) -> None:
        self._client = client

    def _blob(self, uri: str, generation: str | None = None) -> Blob:
        bucket, name = split_uri(uri)
        gen = int(generation) if generation else None
        return self._client.bucket(bucket).blob(name, generation=gen)

    @contextmanager
    def open_read(
        self, uri: str, generation: str | None = None, *, buffer_bytes: int | None = None
    ) -> Iterator[BinaryIO]:
        blob = self._blob(uri, generation)
        doing = f"reading {uri} (generation {generation})"
        # Opening fetches nothing: a missing object shows on the first read, so every
        # read is translated; what the caller's own code raises (a gzip error) is not.
        with translated(doing):
            chunk = READ_CHUNK_BYTES if buffer_bytes is None else max(buffer_bytes, 64 * 1024)
            reader = blob.open("rb", chunk_size=chunk, raw_download=True)
        try:
            yield _TranslatedReader(reader, doing)  # type: ignore[misc]
        finally:
            with translated(doing):
                reader.close()

    def read_bytes(self, uri: str) -> bytes:
        with translated(f"reading {uri}"):
            data: bytes = self._blob(uri).download_as_bytes(raw_download=True)
        return data

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> bool:
        try:
            self.create(uri, data, content_type)
        except PreconditionFailed:
            return False
        return True

    def create(self, uri: str, data: bytes, content_type: str) -> str:
        blob = self._blob(uri)
        with translated(f"writing {uri}"):
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0)
        return str(blob.generation)

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        blob = self._blob(uri)
        blob.chunk_size = WRITE_CHUNK_BYTES  # only here: ranged reads of empty objects fail locally
        with (
            translated(f"writing {uri}"),
            blob.open(
                "wb", content_type=content_type, if_generation_match=0, ignore_flush=True
            ) as writer,
        ):
            yield writer

    def put(
        self,
        uri: str,
        data: bytes | BinaryIO,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        blob = self._blob(uri)
        if metadata:
            blob.metadata = dict(metadata)
        with translated(f"writing {uri}"):
            if isinstance(data, bytes):
                blob.upload_from_string(data, content_type=content_type)
            else:
                blob.upload_from_file(data, content_type=content_type)
        return str(blob.generation)

    def exists(self, uri: str) -> bool:
        with translated(f"looking up {uri}"):
            return bool(self._blob(uri).exists())

    def describe(self, uri: str) -> ObjectInfo:
        bucket, name = split_uri(uri)
        with translated(f"looking up {uri}"):
            blob = self._client.bucket(bucket).get_blob(name)
        if blob is None:
            raise NotFound(f"{uri} does not exist")
        return ObjectInfo(
            generation=str(blob.generation),
            size=int(blob.size or 0),
            content_encoding=blob.content_encoding or None,
            md5=blob.md5_hash or None,
            updated=blob.updated.timestamp() if blob.updated else None,
            metadata=dict(blob.metadata or {}),
        )

    def list_prefix(self, prefix: str) -> Iterator[str]:
        bucket, _, name_prefix = prefix.removeprefix("gs://").partition("/")
        if not prefix.startswith("gs://") or not bucket:
            raise ValueError(f"not a gs:// prefix: {prefix!r}")
        with translated(f"listing {prefix}"):
            for blob in self._client.list_blobs(bucket, prefix=name_prefix):
                yield f"gs://{bucket}/{blob.name}"


class _TranslatedReader:
    """A GCS reader whose own failures come out as batchline's errors."""

    def __init__(self, reader: BinaryIO, doing: str) -> None:
        self._reader = reader
        self._doing = doing
        # What readline read ahead and has not handed out: _buffer[_pos:].
        self._buffer = b""
        self._pos = 0

    def read(self, size: int = -1, /) -> bytes:
        ahead = len(self._buffer) - self._pos
        if ahead and size is not None and 0 <= size <= ahead:
            data = self._buffer[self._pos : self._pos + size]
            self._pos += size
            return data
        data = self._buffer[self._pos :]
        self._buffer, self._pos = b"", 0
        with translated(self._doing):
            rest = self._reader.read(-1 if size is None or size < 0 else size - len(data))
        return data + rest if data else rest

    def readline(self, size: int = -1, /) -> bytes:
        # google-cloud-storage's BlobReader has no peek(), so io's readline would read it
        # one byte a call (a collect merging 1M lines spent minutes there): read ahead
        # LINE_READ_BYTES at a time and cut the lines here.
        limit = -1 if size is None or size < 0 else size
        while True:
            end = self._buffer.find(b"\n", self._pos)
            ahead = len(self._buffer) - self._pos
            if end >= 0 or (0 <= limit <= ahead):
                stop = end + 1 if end >= 0 else len(self._buffer)
                if 0 <= limit < stop - self._pos:
                    stop = self._pos + limit
                line = self._buffer[self._pos : stop]
                self._pos = stop
                return line
            with translated(self._doing):
                more = self._reader.read(LINE_READ_BYTES)
            if not more:
                line = self._buffer[self._pos :]
                self._buffer, self._pos = b"", 0
                return line
            self._buffer = self._buffer[self._pos :] + more
            self._pos = 0

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        with translated(self._doing):
            data = self._reader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The store closes the underlying reader."""

    @property
    def closed(self) -> bool:
        return bool(self._reader.closed)
