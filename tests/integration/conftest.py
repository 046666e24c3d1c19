"""Fixtures for the integration tests: the provider emulators, served on loopback."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
from openai import OpenAI

from batchline.local.emulators import anthropic as anthropic_emulator_module
from batchline.local.emulators._wsgi import start_in_thread
from batchline.local.emulators.openai import EmulatorConfig, OpenAIBatchEmulator, make_app

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


def _http_json(method: str, url: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@dataclass
class OpenAIEmulatorHandle:
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
class AnthropicEmulatorHandle:
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
