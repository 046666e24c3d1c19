"""Settings, read once from the environment.

Every setting has one environment variable; Terraform sets the same names in production
and the local stack sets them for the functions it runs. The Google clients read their
own emulator variables (FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST,
STORAGE_EMULATOR_HOST) directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batchline.domain.providers.base import ChunkLimits as ChunkLimits
from batchline.domain.providers.base import ProviderSettings
from batchline.domain.providers.registry import KNOWN_PROVIDERS, descriptors
from batchline.domain.quotas import Quotas, parse_quotas
from batchline.errors import ConfigError

# The longest input line batchline reads, from the providers' own per-request limits, so
# that a request carrying a document (a PDF or image as base64, a long prompt) is not
# refused before a provider would take it:
# - Anthropic: 32 MB per Messages API request (413 request_too_large above it; docs,
#   "Request size limits"); a batch's requests take the same params.
# - OpenAI: up to 50 MB of image bytes per request, 20 MB per image (docs, "Images and
#   vision"); a request this large is rare, and BATCHLINE_MAX_LINE_BYTES raises the limit.
# - Vertex AI Gemini: 7 MB per inline image, larger files through Cloud Storage URIs
#   (docs, "Image understanding"), so its inline requests stay well under this.
# Memory: planning holds one line at a time (a longer one is skipped in 64 KiB pieces),
# so the limit bounds a line's share of the submit function's memory (1 GiB by default).
MAX_LINE_BYTES = 32 * 1024 * 1024
ENABLED_PROVIDERS_ENV = "BATCHLINE_ENABLED_PROVIDERS"
AUTO_CANDIDATES_ENV = "BATCHLINE_AUTO_CANDIDATES"


def default_provider_settings() -> dict[str, ProviderSettings]:
    """Every known provider's settings block with its defaults (no environment)."""
    return {p.name: p.settings_from_env({}) for p in descriptors()}


def provider_settings_from_env(env: Mapping[str, str]) -> dict[str, ProviderSettings]:
    """Every known provider's settings block, each parsed by its descriptor."""
    return {p.name: p.settings_from_env(env) for p in descriptors()}


def quota_policies() -> dict[str, Any]:
    """Every known provider's quota policy, by name (its descriptor states it)."""
    return {p.name: p.quota for p in descriptors()}


def default_quotas() -> Quotas:
    """The quotas with no BATCHLINE_QUOTAS: every provider's lowest paid tier."""
    return Quotas(quota_policies())


def enabled_providers(raw: str | None) -> frozenset[str]:
    """BATCHLINE_ENABLED_PROVIDERS's value: comma-separated provider names, every known
    provider when unset or blank; ConfigError naming an unknown one."""
    names = {name.strip() for name in (raw or "").split(",") if name.strip()}
    unknown = sorted(names - KNOWN_PROVIDERS)
    if unknown:
        raise ConfigError(
            f"{ENABLED_PROVIDERS_ENV}: unknown provider {unknown[0]!r} "
            f"(known: {', '.join(sorted(KNOWN_PROVIDERS))})"
        )
    return frozenset(names) if names else KNOWN_PROVIDERS


@dataclass(frozen=True)
class Settings:
    """The deployment's settings: buckets, topics, limits, and a settings block per
    provider (`providers`), all from environment variables (`from_env`)."""

    project: str
    input_bucket: str
    output_bucket: str
    work_bucket: str
    poll_topic: str = "batchline-poll"
    collect_topic: str = "batchline-collect"
    events_topic: str = "batchline-events"
    default_model: str | None = None
    #: The providers lines may use (BATCHLINE_ENABLED_PROVIDERS); default every known one.
    enabled_providers: frozenset[str] = KNOWN_PROVIDERS
    #: Each known provider's settings block, by name (its descriptor parses it).
    providers: Mapping[str, ProviderSettings] = field(default_factory=default_provider_settings)
    max_input_bytes: int = 2 * 1024**3
    max_line_bytes: int = MAX_LINE_BYTES
    # How soon a dead holder is noticed: a lease (planning, advancing a job, submitting a
    # chunk, a provider's create lock) not renewed for this long is taken over.
    lease_seconds: float = 60.0
    # How often a live holder renews its leases, from a background thread, while it works
    # (0: never; a lease then lasts lease_seconds from its take).
    heartbeat_seconds: float = 10.0
    # How long a call may take: the longest a holder keeps renewing one lease. Longer than
    # any invocation (function timeout), so a live one is never taken over.
    max_hold_seconds: float = 900.0
    # Time a submit or poll invocation allows itself before leaving work for the next tick.
    work_budget_seconds: float = 420.0
    # A job stuck in "collecting" for this long gets its collect message published again.
    collect_retry_seconds: float = 600.0
    # Finished jobs' Firestore records get `expire_at` this many days after they end, for
    # a TTL policy to delete them; None keeps them forever.
    retention_days: float | None = None
    # Times an answer that fails its schema is asked again (a job's option overrides it).
    max_repair_attempts: int = 1
    # BATCHLINE_PRICES: JSON overriding the price table (`domain.pricing.load_prices`).
    prices_json: str | None = None
    # BATCHLINE_AUTO_CANDIDATES: the models `model: "auto"` chooses from when a job names
    # none (comma-separated provider/model); empty: `domain.selection.default_candidates`.
    auto_candidates: tuple[str, ...] = ()
    # Jobs' webhooks (services.notify): the topic the notify function takes them from, and
    # the Standard Webhooks secret (`whsec_...`) they are signed with (notify only).
    notify_topic: str = "batchline-notify"
    webhook_secret: str | None = field(default=None, repr=False)
    # Only the local stack and tests: a notify_url may be http:// on this machine.
    webhook_allow_insecure_local: bool = False
    # The secret OpenAI signs its webhooks with (`whsec_...`), for POST
    # /v1/webhooks/openai (api only). None: that route refuses every event.
    openai_webhook_secret: str | None = field(default=None, repr=False)
    # BATCHLINE_QUOTAS: what each provider lets the account have in flight, over the
    # descriptors' defaults (`domain.quotas.parse_quotas`).
    quotas: Quotas = field(default_factory=default_quotas)
    # A chunk the provider's quota sent back waits this long before it is sent again,
    # doubled each time it is sent back, at most quota_backoff_max_seconds (not an
    # environment variable: tests shorten it).
    quota_backoff_seconds: float = 60.0
    quota_backoff_max_seconds: float = 1800.0
    # A job waiting for a quota pool keeps its place while it asks again within this long
    # (a poll tick reaches it every few minutes); after it, its place is given up.
    quota_wait_seconds: float = 600.0

    def provider(self, name: str) -> Any:
        """Provider `name`'s settings block (its descriptor's settings class)."""
        try:
            return self.providers[name]
        except KeyError:
            raise ConfigError(f"provider {name!r} is not configured") from None

    @property
    def heartbeat_every(self) -> float:
        """How often a live holder renews: `heartbeat_seconds`, but at least three times a
        lease (0: never)."""
        if self.heartbeat_seconds <= 0:
            return 0.0
        return min(self.heartbeat_seconds, self.lease_seconds / 3)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from the environment; ConfigError naming a missing or bad variable."""
        env = os.environ if env is None else env
        required, number = _required_reader(env), _number_reader(env)
        defaults = cls(project="", input_bucket="", output_bucket="", work_bucket="")
        project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT") or ""
        if not project:
            raise ConfigError("environment variable GOOGLE_CLOUD_PROJECT is required")
        return cls(
            project=project,
            input_bucket=required("BATCHLINE_INPUT_BUCKET"),
            output_bucket=required("BATCHLINE_OUTPUT_BUCKET"),
            work_bucket=required("BATCHLINE_WORK_BUCKET"),
            poll_topic=env.get("BATCHLINE_POLL_TOPIC") or defaults.poll_topic,
            collect_topic=env.get("BATCHLINE_COLLECT_TOPIC") or defaults.collect_topic,
            events_topic=env.get("BATCHLINE_EVENTS_TOPIC") or defaults.events_topic,
            default_model=env.get("BATCHLINE_DEFAULT_MODEL") or None,
            enabled_providers=enabled_providers(env.get("BATCHLINE_ENABLED_PROVIDERS")),
            providers=provider_settings_from_env(env),
            max_input_bytes=int(number("BATCHLINE_MAX_INPUT_BYTES", defaults.max_input_bytes)),
            max_line_bytes=int(number("BATCHLINE_MAX_LINE_BYTES", defaults.max_line_bytes)),
            lease_seconds=number("BATCHLINE_LEASE_SECONDS", defaults.lease_seconds),
            heartbeat_seconds=number("BATCHLINE_HEARTBEAT_SECONDS", defaults.heartbeat_seconds),
            max_hold_seconds=number("BATCHLINE_MAX_HOLD_SECONDS", defaults.max_hold_seconds),
            work_budget_seconds=number(
                "BATCHLINE_WORK_BUDGET_SECONDS", defaults.work_budget_seconds
            ),
            collect_retry_seconds=number(
                "BATCHLINE_COLLECT_RETRY_SECONDS", defaults.collect_retry_seconds
            ),
            retention_days=_optional_positive(env, "BATCHLINE_RETENTION_DAYS"),
            max_repair_attempts=_whole_number(
                env, "BATCHLINE_MAX_REPAIR_ATTEMPTS", defaults.max_repair_attempts
            ),
            prices_json=prices_override(env),
            auto_candidates=auto_candidates(env.get("BATCHLINE_AUTO_CANDIDATES")),
            notify_topic=env.get("BATCHLINE_NOTIFY_TOPIC") or defaults.notify_topic,
            webhook_secret=env.get("BATCHLINE_WEBHOOK_SECRET") or None,
            webhook_allow_insecure_local=webhook_allow_insecure_local(env),
            openai_webhook_secret=env.get("OPENAI_WEBHOOK_SECRET") or None,
            quotas=parse_quotas(env.get("BATCHLINE_QUOTAS"), quota_policies()),
            quota_backoff_seconds=number(
                "BATCHLINE_QUOTA_BACKOFF_SECONDS", defaults.quota_backoff_seconds
            ),
            quota_wait_seconds=number("BATCHLINE_QUOTA_WAIT_SECONDS", defaults.quota_wait_seconds),
        )


def _required_reader(env: Mapping[str, str]) -> Callable[[str], str]:
    def required(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise ConfigError(f"environment variable {name} is required")
        return value

    return required


def _number_reader(env: Mapping[str, str]) -> Callable[[str, float], float]:
    def number(name: str, default: float) -> float:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not a number") from exc

    return number


def prices_override(env: Mapping[str, str] | None = None) -> str | None:
    """BATCHLINE_PRICES's JSON, None when unset or blank (read where job options are
    checked, which has no Settings, too)."""
    env = os.environ if env is None else env
    return (env.get("BATCHLINE_PRICES") or "").strip() or None


def auto_candidates(raw: str | None) -> tuple[str, ...]:
    """BATCHLINE_AUTO_CANDIDATES's value: comma-separated `provider/model` names (none:
    the default). Checked at start-up (`check_auto_candidates`), as the prices are."""
    return tuple(name.strip() for name in (raw or "").split(",") if name.strip())


def check_auto_candidates(names: tuple[str, ...]) -> None:
    """ConfigError naming the first of BATCHLINE_AUTO_CANDIDATES's names that is not a
    `provider/model` of a known provider."""
    from batchline.domain.requests import AUTO, model_problem

    for name in names:
        problem = "not a model to choose" if name == AUTO else model_problem(name)
        if problem is not None:
            raise ConfigError(f"{AUTO_CANDIDATES_ENV}: {name!r}: {problem}")


def webhook_allow_insecure_local(env: Mapping[str, str] | None = None) -> bool:
    """BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL=1: a job's notify_url may be http:// on this
    machine (the local stack's receiver). Set by the local stack and tests only, never by
    infra (tests/infra checks it). Read where options are parsed, which has no Settings."""
    env = os.environ if env is None else env
    return (env.get("BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL") or "").strip() == "1"


def _whole_number(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ConfigError(f"{name}={raw!r} is not a whole number >= 0")
    return int(raw)


def _optional_positive(env: Mapping[str, str], name: str) -> float | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if value <= 0:
        raise ConfigError(f"{name} must be positive (unset it to keep records forever)")
    return value
