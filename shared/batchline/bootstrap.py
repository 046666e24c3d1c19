"""Wires settings to adapters in one place. Functions call `deps()` once per instance.

Providers come from one registry (`domain/providers/registry.py`): a provider's limits,
encoder and repair turn from its descriptor and its settings block, its client from
`adapters/providers/<name>.py`'s `make_client`, imported (with its SDK) on first use.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchline.config import ChunkLimits, Settings, check_auto_candidates
from batchline.domain.pricing import PRICES, Price, load_prices
from batchline.domain.providers.base import Encoder, RepairTurn
from batchline.domain.providers.registry import KNOWN_PROVIDERS, provider
from batchline.errors import ConfigError
from batchline.ports import BlobStore, Clock, JobStore, ProviderClient, Publisher


class SystemClock:
    """The wall clock, in epoch seconds."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()


class Providers:
    """Provider clients by name, each built (and its SDK imported) on first use."""

    def __init__(self, factories: dict[str, Callable[[], ProviderClient]]) -> None:
        self._factories = factories
        self._clients: dict[str, ProviderClient] = {}
        self._lock = threading.Lock()  # poll's status calls ask from several threads

    def get(self, name: str) -> ProviderClient:
        """The client of provider `name`; ConfigError when none is configured."""
        with self._lock:
            if name not in self._clients:
                if name not in self._factories:
                    raise ConfigError(f"provider {name!r} is not configured")
                self._clients[name] = self._factories[name]()
            return self._clients[name]


def make_client(name: str, settings: Settings, blobs: BlobStore) -> ProviderClient:
    """Provider `name`'s client: `adapters/providers/<name>.py`'s `make_client`, given its
    settings block, the deployment's project and its BlobStore (Vertex reads GCS)."""
    provider(name)  # a known provider, or ConfigError
    adapter = importlib.import_module(f"batchline.adapters.providers.{name}")
    client: ProviderClient = adapter.make_client(
        settings.provider(name), project=settings.project, blobs=blobs
    )
    return client


@dataclass
class Deps:
    """What the services work with: settings, stores, publisher, provider clients, clock
    and prices."""

    settings: Settings
    store: JobStore
    blobs: BlobStore
    publisher: Publisher
    providers: Providers
    clock: Clock = field(default_factory=SystemClock)
    prices: dict[str, Price] = field(default_factory=lambda: dict(PRICES))

    def limits(self, name: str) -> ChunkLimits:
        """What one batch of provider `name` may hold, under these settings."""
        return provider(name).chunk_limits(self.settings.provider(name))

    def encoder(self, name: str) -> Encoder:
        """Provider `name`'s request encoder, under these settings."""
        return provider(name).encoder(self.settings.provider(name))

    def repair_turn(self, name: str) -> RepairTurn:
        """Provider `name`'s repair turn (appended to a staged request line)."""
        return provider(name).add_repair_turn


def default_providers(settings: Settings, blobs: BlobStore) -> Providers:
    """A client factory for every known provider (a job planned while a provider was
    enabled is still followed after it is not)."""
    return Providers(
        {name: functools.partial(make_client, name, settings, blobs) for name in KNOWN_PROVIDERS}
    )


def build(settings: Settings | None = None) -> Deps:
    """The production dependencies: Firestore, GCS, Pub/Sub and the providers' clients."""
    from batchline.adapters import firestore, gcs
    from batchline.adapters.pubsub import PubSubPublisher

    settings = settings or Settings.from_env()
    prices = load_prices(settings.prices_json)  # a bad override fails here, at start-up
    check_auto_candidates(settings.auto_candidates)
    blobs = gcs.GcsBlobStore(gcs.make_client(settings.project))
    return Deps(
        settings=settings,
        store=firestore.FirestoreJobStore(firestore.make_client(settings.project)),
        blobs=blobs,
        publisher=PubSubPublisher(settings.project),
        providers=default_providers(settings, blobs),
        prices=prices,
    )


_deps: Deps | None = None


def deps() -> Deps:
    """The process-wide dependencies, built on first use (warm instances reuse them)."""
    global _deps
    if _deps is None:
        _deps = build()
    return _deps
