"""Fixtures for the integration tests: the provider emulators, served on loopback."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anthropic
import pytest
from openai import OpenAI

from batchline.adapters.gcs import GcsBlobStore
from batchline.ports import StagedPayload
from batchline_emulators import anthropic as anthropic_emulator_module
from batchline_emulators import vertex as vertex_emulator_module
from batchline_tools.local.stack import create_bucket

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1.services.job_service import JobServiceClient
from batchline_emulators._wsgi import start_in_thread
from batchline_emulators.openai import EmulatorConfig, OpenAIBatchEmulator, make_app

#: Fast timings so that a small batch finishes in a fraction of a second.
FAST_OPENAI_CONFIG: dict[str, Any] = {
    "validating_seconds": 0.05,
    "lines_per_second": 2000.0,
    "finalizing_seconds": 0.05,
    "cancel_seconds": 0.05,
}
FAST_ANTHROPIC_CONFIG: dict[str, Any] = {
    "start_seconds": 0.05,
    "lines_per_second": 2000.0,
    "cancel_seconds": 0.05,
}
FAST_VERTEX_CONFIG: dict[str, Any] = {
    "queued_seconds": 0.03,
    "pending_seconds": 0.02,
    "lines_per_second": 2000.0,
    "cancel_seconds": 0.05,
}
VERTEX_PROJECT = "bl-vertex"
VERTEX_LOCATION = "us-central1"
VERTEX_WORK_BUCKET = "bl-vertex-work"


class ManualClock:
    """An emulator clock that only moves when the test moves it (`clock.now += 5`)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


#: Bounds a wait that only ends early on success; generous, as it only bounds a failure.
WAIT_SECONDS = 60.0


def wait_held(root_url: str, batch_id: str, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    """Poll `GET /_emulator/batches` until the batch waits at its hold point; its entry."""
    wanted = batch_id.rsplit("/", 1)[-1]
    deadline = time.monotonic() + timeout
    while True:
        entries = _http_json("GET", f"{root_url}/_emulator/batches")["data"]
        entry = next((b for b in entries if b["id"].rsplit("/", 1)[-1] == wanted), None)
        if entry is not None and entry["emulator"]["held"]:
            held: dict[str, Any] = entry
            return held
        assert time.monotonic() < deadline, f"{batch_id} not held after {timeout:.0f} s: {entry}"
        time.sleep(0.02)


def _http_json(method: str, url: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class HeldBatches:
    """The admin controls every emulator shares: holds (`hold_after_lines`,
    /_emulator/release), expiry on demand (/_emulator/expire) and the quota view
    (/_emulator/quota)."""

    root_url: str

    def quota(self) -> dict[str, Any]:
        """What counts against the emulator's quotas now, and the limits."""
        result: dict[str, Any] = _http_json("GET", f"{self.root_url}/_emulator/quota")
        return result

    def release(self, batch: str | None = None) -> list[str]:
        """Let held batches (or one) go on (POST /_emulator/release); the ids released."""
        body = {} if batch is None else {"batch": batch}
        released: list[str] = _http_json("POST", f"{self.root_url}/_emulator/release", body)[
            "released"
        ]
        return released

    def wait_held(self, batch_id: str) -> dict[str, Any]:
        """Wait until the batch has answered its `hold_after_lines` and waits for release."""
        return wait_held(self.root_url, batch_id)

    def expire(self, batch: str | None = None) -> list[str]:
        """End running batches (or one) now, as if their window had passed
        (POST /_emulator/expire); the ids expired."""
        body = {} if batch is None else {"batch": batch}
        expired: list[str] = _http_json("POST", f"{self.root_url}/_emulator/expire", body)[
            "expired"
        ]
        return expired


@dataclass
class OpenAIEmulatorHandle(HeldBatches):
    app: OpenAIBatchEmulator
    root_url: str  # http://127.0.0.1:P
    base_url: str  # http://127.0.0.1:P/v1, for OpenAI(base_url=...)

    def admin(self, config: dict[str, Any]) -> dict[str, Any]:
        """Merge `config` into the emulator's config (POST /_emulator/config)."""
        result: dict[str, Any] = _http_json("POST", f"{self.root_url}/_emulator/config", config)
        return result

    def reset(self) -> None:
        """Drop all files and batches and restore the startup config."""
        _http_json("POST", f"{self.root_url}/_emulator/reset", {})

    def batches(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _http_json("GET", f"{self.root_url}/_emulator/batches")[
            "data"
        ]
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = _http_json("GET", f"{self.root_url}/_emulator/stats")
        return result

    def client(self, **kwargs: Any) -> OpenAI:
        kwargs.setdefault("max_retries", 2)
        kwargs.setdefault("timeout", 10.0)
        return OpenAI(api_key="sk-emulator", base_url=self.base_url, **kwargs)


@pytest.fixture(scope="session")
def openai_emulator() -> Iterator[OpenAIEmulatorHandle]:
    """The OpenAI Batch API emulator on a free loopback port, for the whole session."""
    app = make_app(EmulatorConfig().merged(FAST_OPENAI_CONFIG))
    root_url, shutdown = start_in_thread(app)
    try:
        yield OpenAIEmulatorHandle(app=app, root_url=root_url, base_url=f"{root_url}/v1")
    finally:
        shutdown()


@dataclass
class AnthropicEmulatorHandle(HeldBatches):
    app: anthropic_emulator_module.AnthropicBatchEmulator
    root_url: str  # http://127.0.0.1:P, also the SDK's base_url

    @property
    def base_url(self) -> str:
        return self.root_url

    def admin(self, config: dict[str, Any]) -> dict[str, Any]:
        """Merge `config` into the emulator's config (POST /_emulator/config)."""
        result: dict[str, Any] = _http_json("POST", f"{self.root_url}/_emulator/config", config)
        return result

    def reset(self) -> None:
        _http_json("POST", f"{self.root_url}/_emulator/reset", {})

    def batches(self) -> list[dict[str, Any]]:
        """Every batch ever created (deleted ones too), newest first."""
        result: list[dict[str, Any]] = _http_json("GET", f"{self.root_url}/_emulator/batches")[
            "data"
        ]
        return result

    def requests(self, batch_id: str) -> list[dict[str, Any]]:
        """The requests of a batch as the emulator received them."""
        url = f"{self.root_url}/_emulator/batches/{batch_id}/requests"
        result: list[dict[str, Any]] = _http_json("GET", url)["data"]
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = _http_json("GET", f"{self.root_url}/_emulator/stats")
        return result

    def client(self, **kwargs: Any) -> anthropic.Anthropic:
        kwargs.setdefault("max_retries", 2)
        kwargs.setdefault("timeout", 10.0)
        return anthropic.Anthropic(api_key="sk-ant-emulator", base_url=self.root_url, **kwargs)


@pytest.fixture(scope="session")
def anthropic_emulator() -> Iterator[AnthropicEmulatorHandle]:
    """The Anthropic Message Batches emulator on a free loopback port, for the session."""
    config = anthropic_emulator_module.EmulatorConfig().merged(FAST_ANTHROPIC_CONFIG)
    app = anthropic_emulator_module.make_app(config)
    root_url, shutdown = start_in_thread(app)
    try:
        yield AnthropicEmulatorHandle(app=app, root_url=root_url)
    finally:
        shutdown()


@dataclass
class VertexEmulatorHandle(HeldBatches):
    app: vertex_emulator_module.VertexBatchEmulator
    root_url: str  # http://127.0.0.1:P, also the client's api_endpoint
    gcs_url: str  # the fake-gcs-server it reads and writes
    blobs: GcsBlobStore  # on that server
    project: str = VERTEX_PROJECT
    location: str = VERTEX_LOCATION
    work_bucket: str = VERTEX_WORK_BUCKET

    @property
    def api_endpoint(self) -> str:
        return self.root_url

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def admin(self, config: dict[str, Any]) -> dict[str, Any]:
        """Merge `config` into the emulator's config (POST /_emulator/config)."""
        result: dict[str, Any] = _http_json("POST", f"{self.root_url}/_emulator/config", config)
        return result

    def reset(self) -> None:
        _http_json("POST", f"{self.root_url}/_emulator/reset", {})

    def batches(self) -> list[dict[str, Any]]:
        """Every job ever created (deleted ones too), newest first; `id` is its name."""
        result: list[dict[str, Any]] = _http_json("GET", f"{self.root_url}/_emulator/batches")[
            "data"
        ]
        return result

    def requests(self, job_name: str) -> list[dict[str, Any]]:
        """The requests of a job's input, as the emulator read them."""
        job_id = job_name.rsplit("/", 1)[-1]
        url = f"{self.root_url}/_emulator/batches/{job_id}/requests"
        result: list[dict[str, Any]] = _http_json("GET", url)["data"]
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = _http_json("GET", f"{self.root_url}/_emulator/stats")
        return result

    def stage(self, data: bytes, name: str | None = None) -> StagedPayload:
        """`data` written to the work bucket as a chunk's payload, where Vertex reads it."""
        uri = f"gs://{self.work_bucket}/{name or f'jobs/t-{uuid.uuid4().hex[:12]}/chunks/00000'}"
        uri += "/input.jsonl"
        assert self.blobs.write_bytes(uri, data, "application/jsonl")
        return StagedPayload(uri, len(data), lambda: self.blobs.open_read(uri))

    def client(self) -> JobServiceClient:
        """The SDK's own JobServiceClient (REST transport, no credentials)."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.aiplatform_v1.services.job_service import JobServiceClient

        return JobServiceClient(
            transport="rest",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.root_url),
        )


def gcs_blobs(gcs_url: str, project: str = VERTEX_PROJECT) -> GcsBlobStore:
    """A GcsBlobStore on the fake-gcs-server at `gcs_url` (no environment needed)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs_url},
    )
    return GcsBlobStore(client)


@pytest.fixture(scope="session")
def vertex_emulator(gcs_server: str) -> Iterator[VertexEmulatorHandle]:
    """The Vertex AI batch prediction emulator on a free loopback port, over the session's
    fake-gcs-server (with a work bucket), for the whole session."""
    create_bucket(gcs_server, VERTEX_PROJECT, VERTEX_WORK_BUCKET)
    config = vertex_emulator_module.EmulatorConfig().merged(FAST_VERTEX_CONFIG)
    app = vertex_emulator_module.make_app(config, storage_url=gcs_server)
    root_url, shutdown = start_in_thread(app)
    try:
        yield VertexEmulatorHandle(app, root_url, gcs_server, gcs_blobs(gcs_server))
    finally:
        shutdown()
