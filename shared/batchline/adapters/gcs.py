"""BlobStore on Google Cloud Storage (and on fake-gcs-server via STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

from batchline.errors import AccessDenied, NotFound, PreconditionFailed, RetryableError

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

# Streaming writes upload in parts of this size (GCS needs a multiple of 256 KiB).
WRITE_CHUNK_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 8 * 1024 * 1024


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
    def open_read(self, uri: str, generation: str | None = None) -> Iterator[BinaryIO]:
        from google.api_core import exceptions

        blob = self._blob(uri, generation)
        # Opening fetches nothing: a missing object shows on the first read, so the
        # translation covers the whole read.
        try:
            with blob.open("rb", chunk_size=READ_CHUNK_BYTES, raw_download=True) as reader:
                yield reader
        except exceptions.NotFound as exc:
            raise NotFound(f"{uri} (generation {generation}) does not exist") from exc
        except exceptions.Forbidden as exc:
            raise AccessDenied(f"no permission to read {uri}") from exc
        except (exceptions.ServerError, exceptions.TooManyRequests) as exc:
            raise RetryableError(f"reading {uri}: {exc}") from exc

    def read_bytes(self, uri: str) -> bytes:
        from google.api_core import exceptions

        try:
            data: bytes = self._blob(uri).download_as_bytes(raw_download=True)
        except exceptions.NotFound as exc:
            raise NotFound(f"{uri} does not exist") from exc
        return data

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> bool:
        from google.api_core import exceptions

        try:
            self._blob(uri).upload_from_string(
                data, content_type=content_type, if_generation_match=0
            )
        except exceptions.PreconditionFailed:
            return False
        return True

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        from google.api_core import exceptions

        blob = self._blob(uri)
        blob.chunk_size = WRITE_CHUNK_BYTES  # only here: ranged reads of empty objects fail locally
        try:
            with blob.open(
                "wb", content_type=content_type, if_generation_match=0, ignore_flush=True
            ) as writer:
                yield writer
        except exceptions.PreconditionFailed as exc:
            raise PreconditionFailed(f"{uri} already exists") from exc

    def exists(self, uri: str) -> bool:
        return bool(self._blob(uri).exists())

    def stat(self, uri: str) -> tuple[str, int]:
        from google.api_core import exceptions

        bucket, name = split_uri(uri)
        try:
            blob = self._client.bucket(bucket).get_blob(name)
        except exceptions.Forbidden as exc:
            raise AccessDenied(f"no permission to read {uri}") from exc
        if blob is None:
            raise NotFound(f"{uri} does not exist")
        return str(blob.generation), int(blob.size or 0)

    def list_prefix(self, prefix: str) -> Iterator[str]:
        from google.api_core import exceptions

        bucket, _, name_prefix = prefix.removeprefix("gs://").partition("/")
        if not prefix.startswith("gs://") or not bucket:
            raise ValueError(f"not a gs:// prefix: {prefix!r}")
        try:
            for blob in self._client.list_blobs(bucket, prefix=name_prefix):
                yield f"gs://{bucket}/{blob.name}"
        except exceptions.Forbidden as exc:
            raise AccessDenied(f"no permission to list {prefix}") from exc
        except (exceptions.ServerError, exceptions.TooManyRequests) as exc:
            raise RetryableError(f"listing {prefix}: {exc}") from exc
