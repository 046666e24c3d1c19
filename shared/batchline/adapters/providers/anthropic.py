"""ProviderClient for Anthropic Message Batches, through the official `anthropic` SDK.

The SDK is imported on first use, not at module load (cold start). Three differences from
OpenAI shape this adapter:

- A batch is created from a JSON body, not an uploaded file. The staged payload (JSONL)
  becomes that body as it is sent (`domain.providers.anthropic.request_body`), through the
  SDK's low-level `post` with raw content: memory stays near one payload, where
  `messages.batches.create(requests=...)` would hold the parsed requests and their
  re-serialised copy besides.
- Counts other than `processing` stay 0 until the batch has ended.
- Batches carry no metadata, so a batch cannot be found by its tag: `find_batches` returns
  the batches created in a time window with the chunk's request count, and creates go one
  at a time through a create lock, after a mark (`latest_batch`), so that the batch a
  crashed create made is the only one listed after the mark (`services/create_lock.py`).
  For the same reason a create is never retried by the SDK on an answer that may have
  made a batch (a timeout, a 500): only on one that says it made none (429, 529).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from batchline.adapters.providers._errors import TranslateErrors, http_retryable, retry_after
from batchline.adapters.providers._inline import NoUploads
from batchline.adapters.providers._jsonl import jsonl_lines
from batchline.domain.models import BatchTag, ProviderBatch, ProviderResult
from batchline.domain.providers import anthropic as wire
from batchline.domain.providers.anthropic import AnthropicSettings
from batchline.errors import ProviderError
from batchline.ports import BlobStore, StagedPayload

if TYPE_CHECKING:
    import anthropic

BATCHES_PATH = "/v1/messages/batches"
LIST_PAGE = 1000  # the most Anthropic returns per page
READ_PART = 1024 * 1024
# Per HTTP request; a live create keeps its leases by heartbeat however long it takes.
REQUEST_TIMEOUT_SECONDS = 120.0
#: Answers to a create that say no batch was made and are retried here: overloaded, which
#: passes in seconds. A 429 (the processing queue is full, or a rate limit) is raised at
#: once, with its Retry-After: its chunk waits for room outside the deployment's create
#: lock (`submitting.refused`), not inside it, holding up every other create.
RETRIED_CREATES = frozenset({529})
#: Pause before the n-th retry of a create refused with RETRIED_CREATES (doubled, capped).
CREATE_BACKOFF_SECONDS = 0.5
CREATE_BACKOFF_MAX_SECONDS = 8.0


class AnthropicProvider(NoUploads):
    name = wire.NAME

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ):
        self._api_key = api_key
        self._base_url = base_url
        self._max_retries = max_retries
        self._timeout = timeout_seconds
        self._sdk_client: anthropic.Anthropic | None = None
        # Poll follows a job's batches from several threads: the client is built once.
        self._client_lock = threading.Lock()

    @property
    def _client(self) -> anthropic.Anthropic:
        with self._client_lock:
            return self._build_client()

    def _build_client(self) -> anthropic.Anthropic:
        if self._sdk_client is None:
            import anthropic

            if not self._api_key:
                raise ProviderError("ANTHROPIC_API_KEY is not set", retryable=False)
            self._sdk_client = anthropic.Anthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                max_retries=self._max_retries,
                timeout=self._timeout,
            )
        return self._sdk_client

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        """Create the batch. Retried only while Anthropic answers that it is overloaded
        (529: it made none); a 429 is raised at once (the caller's quota backoff honours
        its Retry-After), and any other failure may have made one, and is raised for the
        caller to settle (`services/create_lock.py`): a second create could make a
        second batch."""
        with payload.open() as stream:
            body = RequestBody(_read_all(stream))
        for attempt in range(self._max_retries + 1):
            try:
                return self._create(body)
            except ProviderError as exc:
                if exc.status not in RETRIED_CREATES or attempt == self._max_retries:
                    raise
            pause = CREATE_BACKOFF_SECONDS * 2**attempt
            time.sleep(min(pause, CREATE_BACKOFF_MAX_SECONDS))
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(self, body: RequestBody) -> ProviderBatch:
        from anthropic.types.messages import MessageBatch

        with _errors("submitting"):
            batch = self._client.post(
                BATCHES_PATH,
                cast_to=MessageBatch,
                content=body,
                options={
                    "headers": {
                        "Content-Type": "application/json",
                        "Content-Length": str(len(body)),
                    },
                    "max_retries": 0,
                },
            )
        return _to_batch(batch)

    def latest_batch(self) -> ProviderBatch | None:
        """The newest batch Anthropic lists (None: none): a create lock's mark."""
        with _errors("listing the newest batch"):
            page = self._client.messages.batches.list(limit=1)
            newest = next(iter(page.data), None)
        return _to_batch(newest) if newest is not None else None

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        """Every batch created in the window whose counts add up to `request_count`."""
        found: list[ProviderBatch] = []
        with _errors("listing batches"):
            # Newest first (the SDK pages on with after_id): stop at the first older one.
            for batch in self._client.messages.batches.list(limit=LIST_PAGE):
                created = batch.created_at.timestamp()
                if created < created_after:
                    break
                if created > created_before:
                    continue
                candidate = _to_batch(batch)
                if wire.request_total(candidate.native) == request_count:
                    found.append(candidate)
        return found

    def get_batch(self, batch_id: str) -> ProviderBatch:
        with _errors(f"retrieving batch {batch_id}"):
            return _to_batch(self._client.messages.batches.retrieve(batch_id))

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        """The batch's results, streamed from its `results_url` and parsed line by line
        (not through the SDK's models: `response` keeps Anthropic's message as sent)."""
        batch_id = batch.batch_id
        with (
            _errors(f"downloading the results of batch {batch_id}"),
            self._client.messages.batches.with_streaming_response.results(batch_id) as response,
        ):
            for line in jsonl_lines(response.iter_bytes()):
                yield wire.normalise(orjson.loads(line))

    def cancel(self, batch_id: str) -> None:
        try:
            with _errors(f"cancelling batch {batch_id}"):
                self._client.messages.batches.cancel(batch_id)
        except ProviderError as exc:
            # Refused because the batch has ended already: nothing left to cancel.
            if exc.status in (400, 409) and self.get_batch(batch_id).state.ended:
                return
            raise


class RequestBody:
    """The create-batch body, made from the staged payload while it is sent.

    Iterable again for each attempt (the SDK retries 429 and 5xx with the same content),
    and of known length, so that it is sent with a Content-Length, not chunked.
    """

    def __init__(self, payload: bytes | bytearray) -> None:
        self._payload = payload

    def __len__(self) -> int:
        return wire.request_body_size(len(self._payload))

    def __iter__(self) -> Iterator[bytes]:
        return wire.request_body(self._payload)


def _read_all(payload: BinaryIO) -> bytearray:
    """The payload in one buffer, read in parts (no second copy of it while reading)."""
    data = bytearray()
    while part := payload.read(READ_PART):
        data += part
    return data


def _to_batch(batch: Any) -> ProviderBatch:
    native: dict[str, Any] = batch.model_dump(mode="json")
    return ProviderBatch(
        batch_id=native["id"],
        state=wire.batch_state(native),
        counts=wire.batch_counts(native),
        tag=None,  # Anthropic batches carry no metadata
        created_at=wire.timestamp(native.get("created_at")),
        native=native,
    )


class _errors(TranslateErrors):
    """Translate SDK (and mid-stream transport) exceptions into ProviderError."""

    def translate(self, exc: Exception) -> ProviderError | None:
        import anthropic
        import httpx2

        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            # 529 is Anthropic's "overloaded": a 5xx like the others.
            retryable = http_retryable(status, exc.response.headers.get("x-should-retry"))
            return ProviderError(
                f"Anthropic {self._doing}: HTTP {status}: {exc.message}",
                retryable=retryable,
                status=status,
                retry_after=retry_after(exc.response.headers),
            )
        if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
            return ProviderError(f"Anthropic {self._doing}: {exc}", retryable=True)
        if isinstance(exc, anthropic.AnthropicError):
            return ProviderError(f"Anthropic {self._doing}: {exc}", retryable=False)
        return None


def make_client(
    settings: AnthropicSettings, *, project: str, blobs: BlobStore
) -> AnthropicProvider:
    """The client for Anthropic's settings block (the project and blobs are not needed)."""
    return AnthropicProvider(api_key=settings.api_key, base_url=settings.base_url)
