"""ProviderClient for Vertex AI Gemini batch prediction, through `google-cloud-aiplatform`.

Only the light `aiplatform_v1` JobServiceClient is used, imported on first use (cold start).
What shapes this adapter:

- Vertex reads its input from and writes its output to GCS. The chunk's staged payload is
  already Vertex's input file (`domain.providers.vertex.encode`), so the job is created
  over it as it lies in the work bucket, with its output beside it
  (`.../chunks/<n>/prediction-model-<timestamp>/predictions*.jsonl`); the results are read
  from there through the BlobStore, file by file, streamed.
- Rows carry no id and come in any order: the request id travels in each request's
  `labels` and comes back with the echoed request.
- Jobs carry labels, so `find_batches` finds the one a crashed submit created by its tag.
- The emulator or the real service is chosen by configuration only: an `http://` endpoint
  is an emulator (REST transport, no credentials); otherwise the regional endpoint with the
  default transport and credentials.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from batchline.adapters.providers._errors import TranslateErrors
from batchline.adapters.providers._inline import NoUploads
from batchline.adapters.providers._jsonl import jsonl_lines
from batchline.domain.models import BatchTag, ProviderBatch, ProviderResult
from batchline.domain.providers import vertex as wire
from batchline.domain.providers.vertex import VertexSettings
from batchline.errors import ProviderError
from batchline.ports import BlobStore, StagedPayload

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud.aiplatform_v1.services.job_service import JobServiceClient

LIST_PAGE = 100
READ_PART = 1024 * 1024
# Per call; with the retries of idempotent calls a call stays well inside a chunk's lease.
REQUEST_TIMEOUT_SECONDS = 120.0


def regional_endpoint(location: str) -> str:
    """Vertex AI's API host for `location` (batch jobs live in a region)."""
    if location == "global":
        return "aiplatform.googleapis.com"
    return f"{location}-aiplatform.googleapis.com"


def output_prefix(payload_uri: str) -> str:
    """Where the job writes its output: the folder of its input, the chunk's own."""
    return payload_uri.rsplit("/", 1)[0] + "/"


class VertexProvider(NoUploads):
    name = wire.NAME

    def __init__(
        self,
        project: str,
        location: str,
        blobs: BlobStore,
        api_endpoint: str | None = None,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self._project = project
        self._location = location
        self._blobs = blobs
        self._api_endpoint = api_endpoint
        self._timeout = timeout_seconds
        self._sdk_client: JobServiceClient | None = None
        # Poll follows a job's batches from several threads: the client is built once.
        self._client_lock = threading.Lock()
        self._retry: Retry | None = None

    @property
    def parent(self) -> str:
        return f"projects/{self._project}/locations/{self._location}"

    @property
    def emulated(self) -> bool:
        return bool(self._api_endpoint and self._api_endpoint.startswith("http://"))

    @property
    def _client(self) -> JobServiceClient:
        with self._client_lock:
            return self._build_client()

    def _build_client(self) -> JobServiceClient:
        if self._sdk_client is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud.aiplatform_v1.services.job_service import JobServiceClient

            if not self._project:
                raise ProviderError("no Google Cloud project for Vertex AI", retryable=False)
            if self.emulated:
                from google.auth.credentials import AnonymousCredentials

                anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
                self._sdk_client = JobServiceClient(
                    transport="rest",
                    credentials=anonymous,
                    client_options=ClientOptions(api_endpoint=self._api_endpoint),
                )
            else:
                endpoint = self._api_endpoint or regional_endpoint(self._location)
                self._sdk_client = JobServiceClient(
                    client_options=ClientOptions(api_endpoint=endpoint)
                )
        return self._sdk_client

    @property
    def _idempotent_retry(self) -> Retry:
        """Retries for calls that may be repeated (get, list, cancel); never for create."""
        if self._retry is None:
            from google.api_core import retry as retries

            self._retry = retries.Retry(
                predicate=retries.if_transient_error,
                initial=0.5,
                maximum=10.0,
                multiplier=2.0,
                timeout=self._timeout,
            )
        return self._retry

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        """Create the job over the staged payload (Vertex reads it from GCS: no upload).

        Not retried here: a create that failed on the way back may have created the job,
        which the next attempt finds by its labels (`find_batches`) before creating again.
        """
        if not payload.uri.startswith("gs://"):
            raise ProviderError(
                f"Vertex AI reads its input from GCS; the payload is at {payload.uri}",
                retryable=False,
            )
        job = {
            "display_name": f"batchline-{tag.job_id}-{tag.chunk:05d}",
            "model": wire.model_path(model),
            "input_config": {"instances_format": "jsonl", "gcs_source": {"uris": [payload.uri]}},
            "output_config": {
                "predictions_format": "jsonl",
                "gcs_destination": {"output_uri_prefix": output_prefix(payload.uri)},
            },
            "labels": wire.job_labels(tag),
        }
        with _errors("creating a batch prediction job"):
            created = self._client.create_batch_prediction_job(
                request={"parent": self.parent, "batch_prediction_job": job},
                timeout=self._timeout,
            )
        return _to_batch(created)

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        """The newest job labelled with `tag` created after `created_after`, if any: labels
        are exact, so neither the end of the window nor the count is needed."""
        floor = math.floor(created_after)
        with _errors("listing batch prediction jobs"):
            pager = self._client.list_batch_prediction_jobs(
                request={
                    "parent": self.parent,
                    "filter": wire.tag_filter(tag),
                    "page_size": LIST_PAGE,
                },
                retry=self._idempotent_retry,
                timeout=self._timeout,
            )
            found = [_to_batch(job) for job in pager]
        ours = [b for b in found if b.tag == tag and (b.created_at or 0) >= floor]
        ours.sort(key=lambda b: b.created_at or 0, reverse=True)
        return ours[:1]

    def get_batch(self, batch_id: str) -> ProviderBatch:
        with _errors(f"retrieving {batch_id}"):
            job = self._client.get_batch_prediction_job(
                name=batch_id, retry=self._idempotent_retry, timeout=self._timeout
            )
        return _to_batch(job)

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        """Every row of every `predictions*.jsonl` in the job's output directory, streamed.

        A job that ended before writing anything (failed at validation, canceled while
        queued) has no output directory: no rows, and collect accounts for the requests.
        """
        directory = (batch.native.get("outputInfo") or {}).get("gcsOutputDirectory")
        if not directory:
            return
        files = [
            uri
            for uri in self._blobs.list_prefix(directory.rstrip("/") + "/")
            if wire.is_predictions_file(uri)
        ]
        for uri in files:
            with self._blobs.open_read(uri) as stream:
                for line in jsonl_lines(iter(lambda: stream.read(READ_PART), b"")):
                    yield wire.normalise(orjson.loads(line))

    def cancel(self, batch_id: str) -> None:
        try:
            with _errors(f"cancelling {batch_id}"):
                self._client.cancel_batch_prediction_job(
                    name=batch_id, retry=self._idempotent_retry, timeout=self._timeout
                )
        except ProviderError as exc:
            # Refused because the job has ended already: nothing left to cancel.
            if exc.status == 400 and self.get_batch(batch_id).state.ended:
                return
            raise


def _to_batch(job: Any) -> ProviderBatch:
    """The job as batchline sees it; `native` is its REST form (camelCase, int64 as
    strings, enums by name)."""
    from google.protobuf import json_format

    native: dict[str, Any] = json_format.MessageToDict(type(job).pb(job))
    return ProviderBatch(
        batch_id=native["name"],
        state=wire.batch_state(native),
        counts=wire.batch_counts(native),
        tag=wire.batch_tag(native),
        created_at=wire.timestamp(native.get("createTime")),
        errors=wire.batch_errors(native),
        native=native,
    )


class _errors(TranslateErrors):
    """Translate google-api-core (and transport) exceptions into ProviderError."""

    def translate(self, exc: Exception) -> ProviderError | None:
        import requests
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        if isinstance(exc, exceptions.GoogleAPICallError):
            status = exc.code if isinstance(exc.code, int) else None
            retryable = status is not None and (status in (408, 429) or status >= 500)
            return ProviderError(
                f"Vertex AI {self._doing}: HTTP {status}: {exc.message}",
                retryable=retryable,
                status=status,
            )
        if isinstance(
            exc,
            exceptions.RetryError
            | requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | auth_exceptions.TransportError,
        ):
            return ProviderError(f"Vertex AI {self._doing}: {exc}", retryable=True)
        if isinstance(exc, exceptions.GoogleAPIError | auth_exceptions.GoogleAuthError):
            return ProviderError(f"Vertex AI {self._doing}: {exc}", retryable=False)
        return None


def make_client(settings: VertexSettings, *, project: str, blobs: BlobStore) -> VertexProvider:
    """The client for Vertex AI's settings block: its jobs run in the settings' project,
    else the deployment's, and read and write the work bucket through `blobs`."""
    return VertexProvider(
        project=settings.project or project,
        location=settings.location,
        blobs=blobs,
        api_endpoint=settings.api_endpoint,
    )
