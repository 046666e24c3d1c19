"""Wires settings to adapters in one place. Functions call `deps()` once per instance."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from batchline.config import ChunkLimits, Settings
from batchline.domain.pricing import PRICES, Price, load_prices
from batchline.errors import ConfigError
from batchline.ports import BlobStore, Clock, JobStore, ProviderClient, Publisher

if TYPE_CHECKING:  # the planner loads with the services that plan (not the api's cold start)
    from batchline.domain.planning import Encoder

#: (staged request line, previous answer, feedback) -> None, changing the line in place.
RepairTurn = Callable[[dict[str, Any], str, str], None]


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


@dataclass(frozen=True)
class ProviderSpec:
    """Everything batchline needs to run one provider, built from the settings.

    Each callable imports what it needs when called: the wire formats are cheap, the
    SDK behind `client` is not (cold start).
    """

    encoder: Callable[[Settings], Encoder]
    limits: Callable[[Settings], ChunkLimits]
    #: Built from the settings and the deployment's BlobStore (Vertex reads GCS through it).
    client: Callable[[Settings, BlobStore], ProviderClient]
    #: Appends a re-ask turn (previous answer, what was wrong) to a staged request line.
    repair_turn: Callable[[], RepairTurn]


def _openai_encoder(settings: Settings) -> Encoder:
    from batchline.domain.providers import openai

    return openai.encode_line


def _openai_client(settings: Settings, blobs: BlobStore) -> ProviderClient:
    from batchline.adapters.providers.openai import OpenAIProvider

    return OpenAIProvider(api_key=settings.openai_api_key, base_url=settings.openai_base_url)


def _anthropic_encoder(settings: Settings) -> Encoder:
    from batchline.domain.providers import anthropic

    return anthropic.make_line_encoder(settings.anthropic_max_tokens)


def _anthropic_limits(settings: Settings) -> ChunkLimits:
    from batchline.domain.providers import anthropic

    # The limit is on the request body, which wraps the payload in {"requests":[...]}.
    return replace(settings.anthropic_limits, envelope_bytes=anthropic.ENVELOPE_BYTES)


def _anthropic_client(settings: Settings, blobs: BlobStore) -> ProviderClient:
    from batchline.adapters.providers.anthropic import AnthropicProvider

    return AnthropicProvider(
        api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url
    )


def _vertex_encoder(settings: Settings) -> Encoder:
    from batchline.domain.providers import vertex

    return vertex.encode_line


def _vertex_client(settings: Settings, blobs: BlobStore) -> ProviderClient:
    from batchline.adapters.providers.vertex import VertexProvider

    return VertexProvider(
        project=settings.vertex_project or settings.project,
        location=settings.vertex_location,
        blobs=blobs,
        api_endpoint=settings.vertex_api_endpoint,
    )


def _openai_repair() -> RepairTurn:
    from batchline.domain.providers import openai

    return openai.add_repair_turn


def _anthropic_repair() -> RepairTurn:
    from batchline.domain.providers import anthropic

    return anthropic.add_repair_turn


def _vertex_repair() -> RepairTurn:
    from batchline.domain.providers import vertex

    return vertex.add_repair_turn


#: The providers this deployment runs (the same names as `domain.requests.ENABLED_PROVIDERS`).
PROVIDERS: dict[str, ProviderSpec] = {
    "openai": ProviderSpec(
        _openai_encoder, lambda s: s.openai_limits, _openai_client, _openai_repair
    ),
    "anthropic": ProviderSpec(
        _anthropic_encoder, _anthropic_limits, _anthropic_client, _anthropic_repair
    ),
    "vertex": ProviderSpec(
        _vertex_encoder, lambda s: s.vertex_limits, _vertex_client, _vertex_repair
    ),
}


def provider_spec(provider: str) -> ProviderSpec:
    try:
        return PROVIDERS[provider]
    except KeyError:
        raise ConfigError(f"provider {provider!r} is not configured") from None


@dataclass
class Deps:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    publisher: Publisher
    providers: Providers
    clock: Clock = field(default_factory=SystemClock)
    prices: dict[str, Price] = field(default_factory=lambda: dict(PRICES))

    def limits(self, provider: str) -> ChunkLimits:
        return provider_spec(provider).limits(self.settings)

    def encoder(self, provider: str) -> Encoder:
        return provider_spec(provider).encoder(self.settings)

    def repair_turn(self, provider: str) -> RepairTurn:
        return provider_spec(provider).repair_turn()


def default_providers(settings: Settings, blobs: BlobStore) -> Providers:
    return Providers(
        {name: functools.partial(spec.client, settings, blobs) for name, spec in PROVIDERS.items()}
    )


def build(settings: Settings | None = None) -> Deps:
    from batchline.adapters import firestore, gcs
    from batchline.adapters.pubsub import PubSubPublisher

    settings = settings or Settings.from_env()
    prices = load_prices(settings.prices_json)  # a bad override fails here, at start-up
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
