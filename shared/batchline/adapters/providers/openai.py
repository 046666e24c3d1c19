"""ProviderClient for the OpenAI Batch API, through the official `openai` SDK.

The SDK is imported on first use, not at module load: cold start matters more than the
first call's latency. Creation is not idempotent at OpenAI, so every batch carries its
job and chunk in `metadata`, and `find_batches` looks for it before a second submit.

A batch's input is a file uploaded first: `upload_input` uploads it while the chunk
waits for its quota, so that `create_batch(uploaded=...)` only creates the batch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from batchline.adapters.providers._errors import TranslateErrors, http_retryable, retry_after
from batchline.adapters.providers._jsonl import jsonl_lines
from batchline.domain.models import BatchTag, ProviderBatch, ProviderResult
from batchline.domain.providers import openai as wire
from batchline.domain.providers.openai import OpenAISettings
from batchline.errors import ProviderError
from batchline.log import fields, get_logger
from batchline.ports import BlobStore, StagedPayload

if TYPE_CHECKING:
    import openai

log = get_logger(__name__)

JOB_KEY = "batchline_job"
CHUNK_KEY = "batchline_chunk"
LIST_PAGE = 100
# Per HTTP request; with the SDK's retries a call stays well inside a chunk's lease.
REQUEST_TIMEOUT_SECONDS = 120.0
#: How long an uploaded input file lives at OpenAI: a chunk waits for its quota at most
#: `max_queue_hours` (72 h) and its batch runs in a 24 h window; an upload whose uploader
#: died before noting it goes away by itself.
UPLOAD_TTL_SECONDS = 7 * 24 * 3600


class OpenAIProvider:
    name = wire.NAME

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ):
        self._timeout = timeout_seconds
        self._api_key = api_key
        self._base_url = base_url
        self._max_retries = max_retries
        self._sdk_client: openai.OpenAI | None = None
        # Poll follows a job's batches from several threads: the client is built once.
        self._client_lock = threading.Lock()

    @property
    def _client(self) -> openai.OpenAI:
        with self._client_lock:
            return self._build_client()

    def _build_client(self) -> openai.OpenAI:
        if self._sdk_client is None:
            import openai

            if not self._api_key:
                raise ProviderError("OPENAI_API_KEY is not set", retryable=False)
            self._sdk_client = openai.OpenAI(
                api_key=self._api_key,
                base_url=self._base_url,
                max_retries=self._max_retries,
                timeout=self._timeout,
            )
        return self._sdk_client

    def upload_input(self, payload: StagedPayload, tag: BatchTag) -> str:
        """Upload the chunk's input file; it expires by itself after `UPLOAD_TTL_SECONDS`
        (an upload whose uploader died before noting it is never deleted otherwise)."""
        with _errors("uploading the input"), payload.open() as stream:
            file = self._client.files.create(
                file=(f"{tag.job_id}-{tag.chunk:05d}.jsonl", stream, "application/jsonl"),
                purpose="batch",
                expires_after={"anchor": "created_at", "seconds": UPLOAD_TTL_SECONDS},
            )
        return file.id

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        if uploaded is not None:
            try:
                return self._create(uploaded, tag)
            except ProviderError as exc:
                if not _input_gone(exc):
                    raise
                log.warning(
                    "the input uploaded ahead is gone; uploading it again",
                    extra=fields(job_id=tag.job_id, chunk=tag.chunk, file_id=uploaded),
                )
        return self._create(self.upload_input(payload, tag), tag)

    def _create(self, file_id: str, tag: BatchTag) -> ProviderBatch:
        with _errors("submitting"):
            batch = self._client.batches.create(
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={JOB_KEY: tag.job_id, CHUNK_KEY: str(tag.chunk)},
            )
        return _to_batch(batch)

    def discard_input(self, file_id: str) -> None:
        try:
            with _errors(f"deleting file {file_id}"):
                self._client.files.delete(file_id)
        except ProviderError as exc:
            if exc.status == 404:  # expired, or deleted already
                return
            raise

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        """The batch tagged `tag` created after `created_after`, if any: the tag is exact,
        so neither the end of the window nor the count is needed to tell it apart."""
        with _errors("listing batches"):
            # Newest first: stop at the first batch older than the window.
            # created_at is in whole seconds: compare at that precision.
            floor = math.floor(created_after)
            for batch in self._client.batches.list(limit=LIST_PAGE):
                if batch.created_at < floor:
                    return []
                found = _to_batch(batch)
                if found.tag == tag:
                    return [found]
        return []

    def get_batch(self, batch_id: str) -> ProviderBatch:
        with _errors(f"retrieving batch {batch_id}"):
            return _to_batch(self._client.batches.retrieve(batch_id))

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.native.get(key)
            if not file_id:  # null and "" both mean "no such file"
                continue
            for line in self._file_lines(file_id):
                yield wire.normalise(orjson.loads(line))

    def _file_lines(self, file_id: str) -> Iterator[bytes]:
        with (
            _errors(f"downloading file {file_id}"),
            self._client.files.with_streaming_response.content(file_id) as response,
        ):
            yield from jsonl_lines(response.iter_bytes())

    def cancel(self, batch_id: str) -> None:
        try:
            with _errors(f"cancelling batch {batch_id}"):
                self._client.batches.cancel(batch_id)
        except ProviderError as exc:
            if exc.status == 409:  # already ended: nothing left to cancel
                return
            raise


def _input_gone(exc: ProviderError) -> bool:
    """Whether OpenAI refused a create because its input file is gone (expired or
    deleted): a 404, or a 400 about `input_file_id`."""
    if exc.status == 404:
        return True
    if exc.status != 400:
        return False
    import openai

    cause = exc.__cause__
    return isinstance(cause, openai.APIStatusError) and cause.param == "input_file_id"


def _to_batch(batch: Any) -> ProviderBatch:
    native: dict[str, Any] = batch.model_dump(mode="json")
    metadata = native.get("metadata") or {}
    tag = None
    if JOB_KEY in metadata and CHUNK_KEY in metadata:
        try:
            tag = BatchTag(metadata[JOB_KEY], int(metadata[CHUNK_KEY]))
        except ValueError:
            tag = None
    counts = native.get("request_counts") or {}
    errors = tuple(
        f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
        for e in ((native.get("errors") or {}).get("data") or [])
    )
    return ProviderBatch(
        batch_id=native["id"],
        state=wire.BATCH_STATES.get(native["status"], wire.BATCH_STATES["in_progress"]),
        counts={k: int(counts.get(k) or 0) for k in ("total", "completed", "failed")},
        tag=tag,
        created_at=float(native.get("created_at") or 0),
        errors=errors,
        native=native,
    )


class _errors(TranslateErrors):
    """Translate SDK exceptions into ProviderError, retryable or not."""

    def translate(self, exc: Exception) -> ProviderError | None:
        import openai

        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retryable = http_retryable(status, exc.response.headers.get("x-should-retry"))
            return ProviderError(
                f"OpenAI {self._doing}: HTTP {status}: {exc.message}",
                retryable=retryable,
                status=status,
                retry_after=retry_after(exc.response.headers),
            )
        if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError):
            return ProviderError(f"OpenAI {self._doing}: {exc}", retryable=True)
        return None


def make_client(settings: OpenAISettings, *, project: str, blobs: BlobStore) -> OpenAIProvider:
    """The client for OpenAI's settings block (the project and blobs are not needed)."""
    return OpenAIProvider(api_key=settings.api_key, base_url=settings.base_url)
