"""Provider quotas: what each provider lets an account have in flight, and how much of it a
chunk takes. Pure.

A provider's quota counts one unit (`QuotaUnit`), a property of its descriptor
(`QuotaPolicy`): OpenAI caps the input tokens a model may have enqueued, Anthropic the
requests in its processing queue (one queue for all its models), Vertex AI the batch
jobs running at once per model. `BATCHLINE_QUOTAS` sets a deployment's own numbers
(`parse_quotas`); anything it leaves out gets the descriptor's default, the lowest paid
tier's, so that a new deployment never overfills its queue.

The chunks in flight are held against one pool per quota (`pool_key`): the rules that
reserve and release their room are `domain/claims.py`'s (`reserve`, `release_hold`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from batchline.domain.models import BatchState, Chunk, ProviderBatch
from batchline.domain.providers.base import ChunkLimits
from batchline.errors import ConfigError

QUOTAS_ENV = "BATCHLINE_QUOTAS"
#: A chunk planned without a token count (a repair round's) is taken to hold a token per
#: this many payload bytes: more than its prompt, whose JSON envelope is counted too.
BYTES_PER_TOKEN_FALLBACK = 3


class QuotaUnit(StrEnum):
    """What a provider's quota counts."""

    ENQUEUED_TOKENS = "enqueued_tokens"
    QUEUED_REQUESTS = "queued_requests"
    CONCURRENT_JOBS = "concurrent_jobs"

    @property
    def noun(self) -> str:
        """The unit in words, as the reason a chunk waits says it."""
        return str(self).replace("_", " ")

    def cost(self, chunk: Chunk) -> int:
        """How much of the quota `chunk`'s batch holds while it runs."""
        if self is QuotaUnit.ENQUEUED_TOKENS:
            if chunk.input_tokens is not None:
                return chunk.input_tokens
            return math.ceil(chunk.payload_bytes / BYTES_PER_TOKEN_FALLBACK)
        if self is QuotaUnit.QUEUED_REQUESTS:
            return chunk.request_count
        return 1

    def narrow(self, limits: ChunkLimits, quota: int) -> ChunkLimits:
        """`limits` cut so that one chunk fits in `quota` on its own."""
        if self is QuotaUnit.ENQUEUED_TOKENS:
            cap = quota if limits.max_input_tokens is None else min(quota, limits.max_input_tokens)
            return ChunkLimits(limits.max_requests, limits.max_bytes, limits.envelope_bytes, cap)
        if self is QuotaUnit.QUEUED_REQUESTS:
            requests = min(limits.max_requests, quota)
            return ChunkLimits(
                requests, limits.max_bytes, limits.envelope_bytes, limits.max_input_tokens
            )
        return limits


@dataclass(frozen=True)
class QuotaPolicy:
    """A provider's quota as its descriptor states it: the unit, whether each model has
    a pool of its own, the lowest paid tier's numbers (`defaults` by model, `default`
    for the rest), and how the provider says "no room" (a create answered with one of
    `refusal_statuses`; a batch that fails with one of `failure_codes`)."""

    unit: QuotaUnit
    per_model: bool
    default: int
    defaults: Mapping[str, int] = field(default_factory=dict)
    refusal_statuses: frozenset[int] = frozenset({429})
    failure_codes: frozenset[str] = frozenset()

    def default_for(self, model: str) -> int:
        """The default quota of `model` (the lowest paid tier's)."""
        return self.defaults.get(model, self.default)

    def refused(self, status: int | None) -> bool:
        """Whether a create answered `status` means the quota is full for now."""
        return status is not None and status in self.refusal_statuses

    def failed_for_quota(self, batch: ProviderBatch) -> bool:
        """Whether `batch` failed because the quota was full (created, then refused)."""
        if batch.state is not BatchState.FAILED:
            return False
        return any(e.split(":", 1)[0] in self.failure_codes for e in batch.errors)


@dataclass(frozen=True)
class Quota:
    """One pool's quota: `limit` of `unit`, for `key` (`provider/model`, or `provider`
    where the provider's models share one)."""

    key: str
    unit: QuotaUnit
    limit: int

    def reason(self, in_use: int) -> str:
        """Why a chunk of this pool waits: the pool is full."""
        return f"queued: {amount(in_use)} of {amount(self.limit)} {self.unit.noun} in use for {self.key}"


def amount(n: int) -> str:
    """`n` in a few digits: 38.2M, 950k, 12."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + suffix
    return str(n)


def backoff(requeues: int, base_seconds: float, max_seconds: float) -> float:
    """How long a chunk the provider's quota sent back for the `requeues`-th time waits
    before it is sent again: `base_seconds`, doubled each time, at most `max_seconds`."""
    return float(min(max_seconds, base_seconds * 2 ** max(requeues - 1, 0)))


def pool_key(policy: QuotaPolicy, provider: str, model: str) -> str:
    """The pool a chunk of `provider`/`model` is held in."""
    return f"{provider}/{model}" if policy.per_model else provider


@dataclass(frozen=True)
class Quotas:
    """A deployment's quotas: `BATCHLINE_QUOTAS` over the descriptors' defaults."""

    policies: Mapping[str, QuotaPolicy]
    configured: Mapping[str, int] = field(default_factory=dict)

    def policy(self, provider: str) -> QuotaPolicy:
        """Provider `provider`'s quota policy; ConfigError when none is known."""
        try:
            return self.policies[provider]
        except KeyError:
            raise ConfigError(f"no quota policy for provider {provider!r}") from None

    def for_model(self, provider: str, model: str) -> Quota:
        """The quota a chunk of `provider`/`model` is held against: the model's own entry,
        else its provider's, else the default."""
        policy = self.policy(provider)
        key = pool_key(policy, provider, model)
        limit = self.configured.get(f"{provider}/{model}")
        if limit is None:
            limit = self.configured.get(provider)
        if limit is None:
            limit = policy.default_for(model) if policy.per_model else policy.default
        return Quota(key, policy.unit, limit)

    def narrow(self, provider: str, model: str, limits: ChunkLimits) -> ChunkLimits:
        """`limits` for one chunk of `provider`/`model`, cut to fit its quota alone."""
        quota = self.for_model(provider, model)
        return quota.unit.narrow(limits, quota.limit)


def parse_quotas(raw: str | None, policies: Mapping[str, QuotaPolicy]) -> Quotas:
    """`BATCHLINE_QUOTAS`: a JSON object of `"provider"` or `"provider/model"` to
    `{"<unit>": n}`, n a whole number >= 1 in the provider's unit. ConfigError naming
    the key for anything else. Unset or blank: the defaults."""
    text = (raw or "").strip()
    if not text:
        return Quotas(policies)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{QUOTAS_ENV} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{QUOTAS_ENV} must be a JSON object of provider or provider/model keys")
    return Quotas(policies, {key: _entry(key, value, policies) for key, value in data.items()})


def _entry(key: str, value: Any, policies: Mapping[str, QuotaPolicy]) -> int:
    where = f"{QUOTAS_ENV}[{key!r}]"
    provider, slash, model = key.partition("/")
    policy = policies.get(provider)
    if policy is None:
        known = ", ".join(sorted(policies))
        raise ConfigError(f"{where}: unknown provider {provider!r} (known: {known})")
    if slash and not model:
        raise ConfigError(f"{where}: no model after the '/'")
    if model and not policy.per_model:
        raise ConfigError(f"{where}: {provider}'s models share one quota; set it as {provider!r}")
    unit = str(policy.unit)
    if not isinstance(value, dict) or set(value) != {unit}:
        raise ConfigError(f"{where}: must be {{{unit!r}: n}} ({provider}'s quota counts {unit})")
    n = value[unit]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{where}: {unit} must be a whole number >= 1, not {n!r}")
    return int(n)
