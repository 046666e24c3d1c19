"""The price table: USD per 1M tokens for each provider and model, dated. Pure.

Batch input and output prices are the ones PROVIDERS.md lists (published 2026); every
provider's real-time price is twice its batch price. `max_output_tokens` is the model's
own output limit, what a worst-case estimate assumes when a request sets none.

Cached input (the part of a request's input read from the provider's prompt cache) is not
in PROVIDERS.md: those prices are derived from the ratios each provider publishes on its
pricing and prompt-caching pages:

- OpenAI: a cached input token costs 25% of an input token for the gpt-4.1 family and 50%
  for gpt-4o-mini; the batch discount applies to it too.
- Anthropic: a cache read costs 10% of the base input price, a cache write 125% (the
  default 5-minute cache) or 200% (the 1-hour cache, which Anthropic suggests for batches,
  as they may take longer than 5 minutes); the batch discount stacks with all three.
- Vertex AI Gemini 2.5: implicit caching bills cached tokens at 10% of the real-time
  input price, and the cache discount takes precedence over the batch discount instead
  of stacking with it, so a cached token costs the same in a batch as in real time.

Gemini 2.5 Pro bills a request whose prompt is over 200k tokens at a higher rate, all of
its tokens (input, cached input and output): $2.50 and $15 real time instead of $1.25 and
$10, from Google's Vertex AI pricing page; PROVIDERS.md lists the lower tier. The table
carries it as the model's `long_context` price.

Model capabilities live in the same entries, dated with the prices (checked against the
providers' model pages, December 2026; the models here are the 2025 ones the price table
lists): `context_window` (input and output tokens of one request together: gpt-4.1 and
gpt-4.1-mini 1,047,576, gpt-4o-mini 128,000, Claude Haiku 4.5 and Sonnet 4.5 200,000,
Gemini 2.5 Flash and Pro 1,048,576), `max_output_tokens` (above), `input_modalities` (what
a request may carry: text, image, pdf; all of these models take images and PDFs: OpenAI's
`file` parts, Anthropic's `document` blocks, Gemini's `application/pdf` parts),
`structured_output` (answers to a JSON Schema: all of them) and `tokens_per_second` (the
median output speed public benchmarks report, April 2026: Gemini 2.5 Flash ~221 tokens/s
from Artificial Analysis via benchlm.ai, gpt-4o-mini ~115 and Gemini 2.5 Pro ~82 from
kickllm.com, Claude Haiku 4.5 ~90 and Sonnet ~65 from getapipulse.com; unknown for the
gpt-4.1 family), which ranks models for `prefer: speed` (`domain/selection.py`). A
capability that is None is unknown, and not checked.

Override per deployment with BATCHLINE_PRICES (see `load_prices`): one variable for a
model's prices and capabilities, as one table holds both (a model a deployment adds needs
both to be chosen by `model: "auto"`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson

from batchline.domain.providers.registry import KNOWN_PROVIDERS, PROVIDERS
from batchline.errors import ConfigError

PRICES_AS_OF = "2026-06-01"
#: Real-time price over batch price, the same for every provider (the batch APIs are 50% off).
REALTIME_FACTOR = 2.0
PER_TOKENS = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens for one model, at batch and at real-time rates.

    `cached_input`/`realtime_cached_input` are None where the model has no cached-input
    rate: cached tokens then cost what other input tokens cost. The same goes for
    `cache_write_input`/`realtime_cache_write_input`, the input written to the cache
    (only Anthropic bills those apart), and for `cache_write_1h_input`/
    `realtime_cache_write_1h_input`, the part written to the 1-hour cache (else at the
    cache-write rate).
    """

    input: float
    output: float
    cached_input: float | None
    realtime_input: float
    realtime_output: float
    realtime_cached_input: float | None
    #: The most output tokens the model writes for one request; None when unknown.
    max_output_tokens: int | None = None
    cache_write_input: float | None = None
    realtime_cache_write_input: float | None = None
    cache_write_1h_input: float | None = None
    realtime_cache_write_1h_input: float | None = None
    #: Where requests with a long prompt cost more (Gemini 2.5 Pro), that price.
    long_context: LongContext | None = None
    #: The most tokens one request may hold, input and output together; None when unknown.
    context_window: int | None = None
    #: What a request may carry (`MODALITIES`: text, image, pdf); None when unknown.
    input_modalities: frozenset[str] | None = None
    #: Whether it answers to a JSON Schema (structured output); None when unknown.
    structured_output: bool | None = None
    #: Median output tokens per second (public benchmarks), for `prefer: speed`.
    tokens_per_second: float | None = None

    def for_input(self, input_tokens: int) -> Price:
        """The price a request with `input_tokens` of prompt pays."""
        long = self.long_context
        return long.price if long is not None and input_tokens > long.above_tokens else self

    @classmethod
    def from_batch(
        cls,
        input: float,
        output: float,
        cached_input: float | None = None,
        *,
        max_output_tokens: int | None = None,
        cache_write_input: float | None = None,
        cache_write_1h_input: float | None = None,
    ) -> Price:
        """A price whose real-time rates are `REALTIME_FACTOR` times the batch rates."""

        def realtime(rate: float | None) -> float | None:
            return None if rate is None else rate * REALTIME_FACTOR

        return cls(
            input=input,
            output=output,
            cached_input=cached_input,
            realtime_input=input * REALTIME_FACTOR,
            realtime_output=output * REALTIME_FACTOR,
            realtime_cached_input=realtime(cached_input),
            max_output_tokens=max_output_tokens,
            cache_write_input=cache_write_input,
            realtime_cache_write_input=realtime(cache_write_input),
            cache_write_1h_input=cache_write_1h_input,
            realtime_cache_write_1h_input=realtime(cache_write_1h_input),
        )


@dataclass(frozen=True, slots=True)
class LongContext:
    """A model's price for requests whose prompt is over `above_tokens` tokens."""

    above_tokens: int
    price: Price


@dataclass(frozen=True, slots=True)
class LineCost:
    """What one request's usage cost at batch price, and would have cost in real time."""

    batch_usd: float
    realtime_usd: float


def _published(
    input: float,
    output: float,
    *,
    cached_share: float,
    max_output_tokens: int,
    batch_discounts_cache: bool = True,
    cache_write_shares: tuple[float, float] | None = None,
) -> Price:
    """A batch price from PROVIDERS.md plus the provider's prompt-cache ratios.

    `cached_share` is the cached-input price as a share of the real-time input price;
    `batch_discounts_cache` says whether the batch discount applies to cached tokens too.
    `cache_write_shares` are the cache-write prices (5-minute and 1-hour caches) as shares
    of the input price, where the provider bills writes apart (the batch discount stacks).
    """
    realtime_cached = input * REALTIME_FACTOR * cached_share
    batch_cached = realtime_cached / REALTIME_FACTOR if batch_discounts_cache else realtime_cached
    price = Price.from_batch(
        input,
        output,
        batch_cached,
        max_output_tokens=max_output_tokens,
        cache_write_input=input * cache_write_shares[0] if cache_write_shares else None,
        cache_write_1h_input=input * cache_write_shares[1] if cache_write_shares else None,
    )
    return replace(price, realtime_cached_input=realtime_cached)


#: What a request may carry, as `Price.input_modalities` names it.
MODALITIES = frozenset({"text", "image", "pdf"})


def _capable(price: Price, context_window: int, tokens_per_second: float | None) -> Price:
    """`price` with the capabilities every model in the table shares (text, images and
    PDFs in, structured output) and its own context window and speed."""
    return replace(
        price,
        context_window=context_window,
        input_modalities=MODALITIES,
        structured_output=True,
        tokens_per_second=tokens_per_second,
    )


#: Keyed "provider/model"; dated model ids (snapshots) find their base entry (`price_for`).
PRICES: dict[str, Price] = {
    "openai/gpt-4.1": _capable(
        _published(1.00, 4.00, cached_share=0.25, max_output_tokens=32_768), 1_047_576, None
    ),
    "openai/gpt-4.1-mini": _capable(
        _published(0.20, 0.80, cached_share=0.25, max_output_tokens=32_768), 1_047_576, None
    ),
    "openai/gpt-4o-mini": _capable(
        _published(0.075, 0.30, cached_share=0.50, max_output_tokens=16_384), 128_000, 115
    ),
    "anthropic/claude-sonnet-4-5": _capable(
        _published(
            1.50, 7.50, cached_share=0.10, cache_write_shares=(1.25, 2.0), max_output_tokens=64_000
        ),
        200_000,
        65,
    ),
    "anthropic/claude-haiku-4-5": _capable(
        _published(
            0.50, 2.50, cached_share=0.10, cache_write_shares=(1.25, 2.0), max_output_tokens=64_000
        ),
        200_000,
        90,
    ),
    "vertex/gemini-2.5-flash": _capable(
        _published(
            0.15, 1.25, cached_share=0.10, max_output_tokens=65_536, batch_discounts_cache=False
        ),
        1_048_576,
        221,
    ),
    "vertex/gemini-2.5-pro": _capable(
        replace(
            _published(
                0.625,
                5.00,
                cached_share=0.10,
                max_output_tokens=65_536,
                batch_discounts_cache=False,
            ),
            long_context=LongContext(
                200_000,
                _published(
                    1.25,
                    7.50,
                    cached_share=0.10,
                    max_output_tokens=65_536,
                    batch_discounts_cache=False,
                ),
            ),
        ),
        1_048_576,
        82,
    ),
}

# A snapshot's suffix on its base model id: OpenAI's -2025-04-14 (and the older -0613),
# Anthropic's -20251001 (@20251001 on Vertex AI), Gemini's -001, and -latest aliases.
_SNAPSHOT_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-\d{4}|-\d{3}|-latest)$")


def price_for(prices: Mapping[str, Price], provider: str, model: str) -> Price | None:
    """The price of `provider/model`, or None when the table does not know the model.

    An exact entry wins; otherwise a dated or versioned id (`gpt-4.1-mini-2025-04-14`,
    `claude-haiku-4-5-20251001`, `gemini-2.5-flash-001`) takes its base model's price.
    Only that one suffix is removed: `gpt-4.1-nano` is not `gpt-4.1`, nor is
    `gemini-2.5-flash-lite` `gemini-2.5-flash`.
    """
    found = prices.get(f"{provider}/{model}")
    if found is not None:
        return found
    descriptor = PROVIDERS.get(provider)
    base = descriptor.model_id(model) if descriptor is not None else model
    base = _SNAPSHOT_SUFFIX.sub("", base, count=1)
    if base == model or not base:
        return None
    return prices.get(f"{provider}/{base}")


def cost(price: Price, usage: Mapping[str, Any]) -> LineCost:
    """The cost of one request's `usage` at `price`.

    `usage` has `input_tokens` (all input, cached included), `output_tokens` and,
    optionally, `cached_input_tokens` (the part of the input read from the cache),
    `cache_write_input_tokens` (the part written to it) and `cache_write_1h_input_tokens`
    (the part of that written to a 1-hour cache), which cost their own rates where the
    model has them. A long prompt pays the model's long-context price, if it has one.
    """
    input_tokens = usage.get("input_tokens") or 0
    if price.long_context is not None:
        price = price.for_input(input_tokens)
    output_tokens = usage.get("output_tokens") or 0
    cached = usage.get("cached_input_tokens") or 0
    written = usage.get("cache_write_input_tokens") or 0
    batch = output_tokens * price.output
    realtime = output_tokens * price.realtime_output
    if cached or written:  # on the collect hot path: the common case (no cache) skips this
        cached = min(max(cached, 0), input_tokens)
        written = min(max(written, 0), input_tokens - cached)
        hour = min(max(usage.get("cache_write_1h_input_tokens") or 0, 0), written)
        for tokens, rate, realtime_rate in (
            (cached, price.cached_input, price.realtime_cached_input),
            (written - hour, price.cache_write_input, price.realtime_cache_write_input),
            (
                hour,
                _given(price.cache_write_1h_input, price.cache_write_input),
                _given(price.realtime_cache_write_1h_input, price.realtime_cache_write_input),
            ),
        ):
            batch += tokens * _given(rate, price.input)
            realtime += tokens * _given(realtime_rate, price.realtime_input)
    fresh = input_tokens - cached - written
    batch += fresh * price.input
    realtime += fresh * price.realtime_input
    return LineCost(batch_usd=batch / PER_TOKENS, realtime_usd=realtime / PER_TOKENS)


# ----------------------------------------------------------------------------- overrides

PRICES_ENV = "BATCHLINE_PRICES"
_RATE_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_write_input",
    "cache_write_1h_input",
    "realtime_input",
    "realtime_output",
    "realtime_cached_input",
    "realtime_cache_write_input",
    "realtime_cache_write_1h_input",
)
#: A model's properties, not prices: an override that leaves one out keeps the table's.
CAPABILITY_FIELDS = (
    "max_output_tokens",
    "context_window",
    "input_modalities",
    "structured_output",
    "tokens_per_second",
)
_FIELDS = (*_RATE_FIELDS, *CAPABILITY_FIELDS)


def load_prices(
    override_json: str | None, base: Mapping[str, Price] | None = None
) -> dict[str, Price]:
    """The price table (`base`, default `PRICES`) with a deployment's overrides applied.

    `override_json` is BATCHLINE_PRICES: a JSON object keyed "provider/model" whose
    values are either `{"input": .., "output": .., "cached_input": ..,
    "cache_write_input": .., "cache_write_1h_input": .., the "realtime_" rates of each, and
    the capabilities "max_output_tokens", "context_window" (tokens), "input_modalities"
    (a list of text, image, pdf), "structured_output" (true/false), "tokens_per_second"}`
    (USD per 1M tokens; `input` and `output` are the batch rates and required; a missing
    real-time rate is twice its batch rate; no `cached_input` (`cache_write_input`,
    `cache_write_1h_input`) means no rate of its own; a missing capability keeps the
    table's) or the older `[input, output]`. An override replaces the model's prices.
    Raises ConfigError naming the model and the field for anything else.
    """
    table = PRICES if base is None else base
    prices = dict(table)
    if override_json is None or not override_json.strip():
        return prices
    try:
        data = orjson.loads(override_json)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{PRICES_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f'{PRICES_ENV} must be a JSON object {{"provider/model": {{"input": .., '
            f'"output": ..}}}}, not {type(data).__name__}'
        )
    for key, value in data.items():
        provider, _, model = key.partition("/")
        if not model or provider not in KNOWN_PROVIDERS:
            raise ConfigError(
                f"{PRICES_ENV}: {key!r} is not provider/model with a provider among "
                f"{', '.join(sorted(KNOWN_PROVIDERS))}"
            )
        prices[key] = _override(key, value, table.get(key))
    return prices


def _override(key: str, value: Any, known: Price | None) -> Price:
    """One BATCHLINE_PRICES entry as a price; ConfigError naming the model and field."""
    where = f"{PRICES_ENV}[{key!r}]"
    if isinstance(value, list):
        if len(value) != 2:
            raise ConfigError(f"{where}: expected [input, output], got {len(value)} items")
        return _capabilities(
            where,
            {},
            Price.from_batch(
                _rate(f"{where}[0] (input)", value[0]), _rate(f"{where}[1] (output)", value[1])
            ),
            known,
        )
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: expected an object with input and output (or [input, output]), "
            f"got {type(value).__name__}"
        )
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_FIELDS)})")
    for required in ("input", "output"):
        if required not in value:
            raise ConfigError(f"{where}: {required} is required")
    return _capabilities(where, value, _price_of(where, value), known)


def _capabilities(where: str, value: dict[str, Any], price: Price, known: Price | None) -> Price:
    """`price` with the override's capabilities, each one it leaves out the table's."""
    kept: dict[str, Any] = {
        name: getattr(known, name) if known else None for name in CAPABILITY_FIELDS
    }
    checks = {
        "max_output_tokens": _max_tokens,
        "context_window": _max_tokens,
        "input_modalities": _modalities,
        "structured_output": _flag,
        "tokens_per_second": _speed,
    }
    for name, check in checks.items():
        if name in value:
            kept[name] = check(f"{where}.{name}", value[name])
    return replace(price, **kept)


def _price_of(where: str, value: dict[str, Any]) -> Price:
    """An override object's price: batch rates as given, a missing real-time rate twice
    its batch rate."""

    def rate(name: str) -> float | None:
        given = value.get(name)
        return None if given is None else _rate(f"{where}.{name}", given)

    batch = Price.from_batch(
        _rate(f"{where}.input", value["input"]),
        _rate(f"{where}.output", value["output"]),
        rate("cached_input"),
        cache_write_input=rate("cache_write_input"),
        cache_write_1h_input=rate("cache_write_1h_input"),
    )
    realtime_input, realtime_output = rate("realtime_input"), rate("realtime_output")
    realtime_cached = rate("realtime_cached_input")
    realtime_write = rate("realtime_cache_write_input")
    realtime_write_1h = rate("realtime_cache_write_1h_input")
    return replace(
        batch,
        realtime_input=_given(realtime_input, batch.realtime_input),
        realtime_output=_given(realtime_output, batch.realtime_output),
        realtime_cached_input=_given(realtime_cached, batch.realtime_cached_input),
        realtime_cache_write_input=_given(realtime_write, batch.realtime_cache_write_input),
        realtime_cache_write_1h_input=_given(
            realtime_write_1h, batch.realtime_cache_write_1h_input
        ),
    )


_Rate = TypeVar("_Rate", float, float | None)


def _given(value: float | None, default: _Rate) -> float | _Rate:
    """`value`, or `default` where there is none."""
    return default if value is None else value


def _rate(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected USD per 1M tokens (a number), got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _max_tokens(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a whole number of tokens >= 1, got {value!r}")
    return value


def _modalities(where: str, value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of {', '.join(sorted(MODALITIES))}")
    unknown = sorted(set(value) - MODALITIES)
    if unknown:
        raise ConfigError(
            f"{where}: unknown modality {unknown[0]!r} (known: {', '.join(sorted(MODALITIES))})"
        )
    return frozenset(value) | {"text"}


def _flag(where: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _speed(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{where}: expected tokens per second (a number > 0), got {value!r}")
    return float(value)
