"""Settings, read once from the environment.

Every setting has one environment variable; Terraform sets the same names in production
and the local stack sets them for the functions it runs. The Google clients read their
own emulator variables (FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST,
STORAGE_EMULATOR_HOST) directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from batchline.domain.limits import ChunkLimits as ChunkLimits  # re-exported: settings build them
from batchline.errors import ConfigError

# OpenAI's own limits are 50,000 requests and 200 MB per input file; we stay under them
# with a margin so that an encoding detail never tips a chunk over.
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1000 * 1000
# Anthropic's are 100,000 requests and 256 MB of request body per Message Batch.
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1000 * 1000
# Anthropic requires max_tokens on every request: lines that give none get this.
ANTHROPIC_DEFAULT_MAX_TOKENS = 1024
# Vertex AI's are 200,000 requests and a 1 GB input file per batch prediction job.
VERTEX_MAX_REQUESTS = 200_000
VERTEX_MAX_BYTES = 1000 * 1000 * 1000
VERTEX_DEFAULT_LOCATION = "us-central1"
SAFETY_MARGIN = 0.95
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


@dataclass(frozen=True)
class Settings:
    project: str
    input_bucket: str
    output_bucket: str
    work_bucket: str
    poll_topic: str = "batchline-poll"
    collect_topic: str = "batchline-collect"
    events_topic: str = "batchline-events"
    default_model: str | None = None
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    openai_limits: ChunkLimits = ChunkLimits(
        int(OPENAI_MAX_REQUESTS * SAFETY_MARGIN), int(OPENAI_MAX_BYTES * SAFETY_MARGIN)
    )
    anthropic_base_url: str | None = None
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_limits: ChunkLimits = ChunkLimits(
        int(ANTHROPIC_MAX_REQUESTS * SAFETY_MARGIN), int(ANTHROPIC_MAX_BYTES * SAFETY_MARGIN)
    )
    anthropic_max_tokens: int = ANTHROPIC_DEFAULT_MAX_TOKENS
    # None: the deployment's own project.
    vertex_project: str | None = None
    vertex_location: str = VERTEX_DEFAULT_LOCATION
    # An http:// endpoint is an emulator (REST, no credentials); None is Google's regional
    # endpoint for `vertex_location`, with the default transport and credentials.
    vertex_api_endpoint: str | None = None
    vertex_limits: ChunkLimits = ChunkLimits(
        int(VERTEX_MAX_REQUESTS * SAFETY_MARGIN), int(VERTEX_MAX_BYTES * SAFETY_MARGIN)
    )
    max_input_bytes: int = 2 * 1024**3
    max_line_bytes: int = MAX_LINE_BYTES
    # Longer than the slowest provider call can take (SDK timeout times retries), so a live
    # submit is never taken over; planning renews its lease as it goes.
    lease_seconds: float = 900.0
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
    # Jobs' webhooks (services.notify): the topic the notify function takes them from, and
    # the Standard Webhooks secret (`whsec_...`) they are signed with (notify only).
    notify_topic: str = "batchline-notify"
    webhook_secret: str | None = field(default=None, repr=False)
    # Only the local stack and tests: a notify_url may be http:// on this machine.
    webhook_allow_insecure_local: bool = False
    # The secret OpenAI signs its webhooks with (`whsec_...`), for POST
    # /v1/webhooks/openai (api only). None: that route refuses every event.
    openai_webhook_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"environment variable {name} is required")
            return value

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return float(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not a number") from exc

        defaults = cls(project="", input_bucket="", output_bucket="", work_bucket="")
        anthropic_max_tokens = int(
            number("BATCHLINE_ANTHROPIC_MAX_TOKENS", defaults.anthropic_max_tokens)
        )
        if anthropic_max_tokens < 1:
            raise ConfigError("BATCHLINE_ANTHROPIC_MAX_TOKENS must be a positive integer")
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
            openai_base_url=env.get("BATCHLINE_OPENAI_BASE_URL") or None,
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_limits=ChunkLimits(
                int(number("BATCHLINE_OPENAI_MAX_REQUESTS", defaults.openai_limits.max_requests)),
                int(number("BATCHLINE_OPENAI_MAX_BYTES", defaults.openai_limits.max_bytes)),
            ),
            anthropic_base_url=env.get("BATCHLINE_ANTHROPIC_BASE_URL") or None,
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            anthropic_limits=ChunkLimits(
                int(
                    number(
                        "BATCHLINE_ANTHROPIC_MAX_REQUESTS", defaults.anthropic_limits.max_requests
                    )
                ),
                int(number("BATCHLINE_ANTHROPIC_MAX_BYTES", defaults.anthropic_limits.max_bytes)),
            ),
            anthropic_max_tokens=anthropic_max_tokens,
            vertex_project=env.get("BATCHLINE_VERTEX_PROJECT") or None,
            vertex_location=env.get("BATCHLINE_VERTEX_LOCATION") or defaults.vertex_location,
            vertex_api_endpoint=env.get("BATCHLINE_VERTEX_API_ENDPOINT") or None,
            vertex_limits=ChunkLimits(
                int(number("BATCHLINE_VERTEX_MAX_REQUESTS", defaults.vertex_limits.max_requests)),
                int(number("BATCHLINE_VERTEX_MAX_BYTES", defaults.vertex_limits.max_bytes)),
            ),
            max_input_bytes=int(number("BATCHLINE_MAX_INPUT_BYTES", defaults.max_input_bytes)),
            max_line_bytes=int(number("BATCHLINE_MAX_LINE_BYTES", defaults.max_line_bytes)),
            lease_seconds=number("BATCHLINE_LEASE_SECONDS", defaults.lease_seconds),
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
            prices_json=(env.get("BATCHLINE_PRICES") or "").strip() or None,
            notify_topic=env.get("BATCHLINE_NOTIFY_TOPIC") or defaults.notify_topic,
            webhook_secret=env.get("BATCHLINE_WEBHOOK_SECRET") or None,
            webhook_allow_insecure_local=webhook_allow_insecure_local(env),
            openai_webhook_secret=env.get("OPENAI_WEBHOOK_SECRET") or None,
        )


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
