"""Wires settings to adapters in one place. Functions call `deps()` once per instance."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchline.config import ChunkLimits, Settings
from batchline.domain.planning import Encoder
from batchline.domain.pricing import BATCH_PRICES, Price
from batchline.errors import ConfigError
from batchline.ports import BlobStore, Clock, JobStore, ProviderClient, Publisher


class SystemClock:
    def now(self) -> float:
        return time.time()


class Providers:
    """Provider clients by name, each built (and its SDK imported) on first use."""

    def __init__(self, factories: dict[str, Callable[[], ProviderClient]]) -> None:
        self._factories = factories
        self._clients: dict[str, ProviderClient] = {}

    def get(self, name: str) -> ProviderClient:
        if name not in self._clients:
            if name not in self._factories:
                raise ConfigError(f"provider {name!r} is not configured")
            self._clients[name] = self._factories[name]()
        return self._clients[name]


def encoder(provider: str) -> Encoder:
    if provider == "openai":
        from batchline.domain.providers import openai

        return openai.encode
    raise ConfigError(f"provider {provider!r} has no encoder")


@dataclass
class Deps:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    publisher: Publisher
    providers: Providers
    clock: Clock = field(default_factory=SystemClock)
    prices: dict[str, Price] = field(default_factory=lambda: dict(BATCH_PRICES))

    def limits(self, provider: str) -> ChunkLimits:
        if provider == "openai":
            return self.settings.openai_limits
        raise ConfigError(f"provider {provider!r} has no limits configured")


def default_providers(settings: Settings) -> Providers:
    def openai_client() -> ProviderClient:
        from batchline.adapters.providers.openai import OpenAIProvider

        return OpenAIProvider(api_key=settings.openai_api_key, base_url=settings.openai_base_url)

    return Providers({"openai": openai_client})


def build(settings: Settings | None = None) -> Deps:
    from batchline.adapters import firestore, gcs
    from batchline.adapters.pubsub import PubSubPublisher

    settings = settings or Settings.from_env()
    return Deps(
        settings=settings,
        store=firestore.FirestoreJobStore(firestore.make_client(settings.project)),
        blobs=gcs.GcsBlobStore(gcs.make_client(settings.project)),
        publisher=PubSubPublisher(settings.project),
        providers=default_providers(settings),
    )


_deps: Deps | None = None


def deps() -> Deps:
    """The process-wide dependencies, built on first use (warm instances reuse them)."""
    global _deps
    if _deps is None:
        _deps = build()
    return _deps
