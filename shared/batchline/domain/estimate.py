"""Before submitting: the tokens a job's requests hold and the most they may cost. Pure.

Everything is estimated from what batchline sends, the encoded provider request lines
(the bytes the encoders in `domain/providers` write). What a provider bills as input is
taken out of a line — message texts, roles and names, the system prompt, tool and
response-schema definitions — by its descriptor (`token_parts`), instead of tokenizing the
JSON around it; its `token_rule` says how those texts become tokens. The rules and their
sources:

Input tokens
- OpenAI: tiktoken, o200k_base for gpt-4o, gpt-4.1, gpt-4.5, gpt-5, the o-series and
  gpt-oss, cl100k_base for gpt-4, gpt-3.5 and the embedding models; plus the overhead
  OpenAI documents for chat models (cookbook "How to count tokens with tiktoken"): 3
  tokens per message, 1 more for a `name`, 3 to prime the reply. tiktoken and its BPE
  files (shipped in `_tokenizers`, never downloaded) load on the first OpenAI line only.
- Anthropic: 3.5 characters per token, Anthropic's rule of thumb for Claude; Vertex AI
  Gemini: 4 characters per token, Google's documented rule. Both get the same per-message
  overhead as OpenAI (neither documents one; a few tokens per turn is what they bill).
  Anthropic adds its tool-use system prompt when a request has tools: 346 tokens with
  tool_choice auto or none, 313 with any or tool (Claude 4.x models).
- Tool and schema definitions count as their compact JSON text: the providers render them
  in formats of their own, of about that size.
- Images count a flat amount each: OpenAI 85 tokens at `detail: low`, else 765 (a
  1024x1024 image at high detail: 85 + 4 tiles x 170); Anthropic 1,600 (width x height /
  750 for the largest image it takes without resizing, ~1.15 megapixels); Gemini 258 (one
  image up to 384x384, or one 768x768 tile). Audio, video and documents (PDF) are not
  counted: their size in tokens cannot be told from the request.

Worst-case output: the request's own limit (`max_completion_tokens`/`max_tokens`,
Anthropic's `max_tokens`, Gemini's `generationConfig.maxOutputTokens`), capped at the
model's maximum, times the choices asked for (`n`, `candidateCount`); with no limit in
the request, the model's maximum output from the price table; for a model the table does
not know, DEFAULT_MAX_OUTPUT_TOKENS. Worst-case cost prices every input token as
uncached.

Speed: tokenizing costs far more than the rest of planning (tiktoken does ~5M tokens/s,
~40 us per 1 KB message, on this project's 2-core machines), so `Estimate` tokenizes the
first `exact_requests` OpenAI requests of each model and then one in `sample_every`; the
others count their characters times the tokens per character measured on the tokenized
ones of the same model. `estimate_line` always tokenizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

import orjson

from batchline.domain.pricing import PRICES, PRICES_AS_OF, Price, price_for
from batchline.domain.providers.registry import provider as provider_of
from batchline.domain.providers.tokens import FALLBACK_CHARS_PER_TOKEN, RequestParts
from batchline.errors import ConfigError

#: Worst-case output of a request to a model with no limit in the request or the table.
DEFAULT_MAX_OUTPUT_TOKENS = 4096
#: The most choices (`n`, `candidateCount`) a provider answers (OpenAI's limit is 128).
MAX_CHOICES = 128
#: The most output tokens one request is estimated at (far past any model, within int64).
MAX_ESTIMATED_TOKENS = 2**40

#: Longer texts are tokenized a slice at a time, so that memory stays near one slice's
#: tokens (a line may be 32 MiB); a cut adds at most a token or two per slice.
TOKENIZE_SLICE = 1 << 20

#: `Estimate` tokenizes this many OpenAI requests of each model, then one in SAMPLE_EVERY.
EXACT_REQUESTS = 256
SAMPLE_EVERY = 64


@dataclass(frozen=True, slots=True)
class LineEstimate:
    """One request's input tokens and the most output tokens it allows."""

    input_tokens: int
    max_output_tokens: int


Line: TypeAlias = bytes | bytearray | memoryview | str | Mapping[str, Any]


def estimate_line(
    provider: str, model: str, line: Line, prices: Mapping[str, Price] | None = None
) -> LineEstimate:
    """Input tokens and worst-case output tokens of one encoded request line.

    `line` is the encoded line (bytes or str) or the decoded JSON object; for OpenAI the
    count is exact (tiktoken), for the others the characters-per-token rule.
    """
    parts = _extract(provider, _decoded(line))
    table = PRICES if prices is None else prices
    price = price_for(table, provider, model)
    counter = _Counter(provider, model)
    tokens = counter.count(parts.texts) if counter.encoding else counter.by_chars(parts.texts)
    output = _max_output(parts, price.max_output_tokens if price else None)
    return LineEstimate(tokens + parts.fixed_tokens, output)


def estimate_input_tokens(provider: str, model: str, line: Line) -> int:
    """Input tokens of one encoded request line (see `estimate_line`)."""
    return estimate_line(provider, model, line).input_tokens


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    """One provider/model's share of an `Estimate`; costs are None for an unpriced model."""

    requests: int
    input_tokens: int
    max_output_tokens: int
    batch_usd: float | None
    realtime_usd: float | None


@dataclass(slots=True)
class _Tally:
    """One model's running counts. Requests are either counted (tokenized, or by the
    characters-per-token rule) or scaled: their characters times the counted ones'
    tokens per character."""

    requests: int = 0
    max_output_tokens: int = 0
    fixed_tokens: int = 0
    counted_requests: int = 0
    counted_tokens: int = 0
    counted_chars: int = 0
    scaled_chars: int = 0
    #: The part of the input and of the worst-case output from requests whose counted
    #: prompt is over the model's long-context threshold (priced at that tier).
    long_input_tokens: int = 0
    long_max_output_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        scaled = 0
        if self.scaled_chars:
            if self.counted_chars:
                scaled = round(self.scaled_chars * self.counted_tokens / self.counted_chars)
            else:
                scaled = math.ceil(self.scaled_chars / FALLBACK_CHARS_PER_TOKEN)
        return self.fixed_tokens + self.counted_tokens + scaled

    def add(self, other: _Tally) -> None:
        for name in _TALLY_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_TALLY_FIELDS = tuple(f.name for f in fields(_Tally))


class Estimate:
    """Tokens and worst-case cost of a job's requests, per provider/model, added line by line.

    `add` every encoded request line as planning writes it; `merge` estimates of parts of
    a file; `to_dict`/`from_dict` keep one across invocations. A model without a price is
    listed in `unpriced` and makes the totals None.
    """

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        *,
        exact_requests: int = EXACT_REQUESTS,
        sample_every: int = SAMPLE_EVERY,
    ) -> None:
        if exact_requests < 0 or sample_every < 1:
            raise ValueError("exact_requests must be >= 0 and sample_every >= 1")
        self._prices = PRICES if prices is None else prices
        self._exact_requests = exact_requests
        self._sample_every = sample_every
        self._tallies: dict[str, _Tally] = {}
        self._counters: dict[str, _Counter] = {}
        self._model_max: dict[str, int | None] = {}
        self._long_above: dict[str, int | None] = {}

    def add(self, provider: str, model: str, encoded_line: Line) -> int:
        """Count one encoded request line (bytes as the encoder wrote it, or decoded);
        returns its input tokens (a sampled-out line's: its characters times the tokens
        per character of the model's counted lines so far)."""
        parts = _extract(provider, _decoded(encoded_line))
        key = f"{provider}/{model}"
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = _Counter(provider, model)
            price = price_for(self._prices, provider, model)
            self._model_max[key] = price.max_output_tokens if price else None
            long = price.long_context if price else None
            self._long_above[key] = long.above_tokens if long else None
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        n = tally.requests
        chars = sum(map(len, parts.texts))
        tokens: int | None = None
        if counter.encoding is None:
            tokens = counter.by_chars(parts.texts)
        elif n < self._exact_requests or n % self._sample_every == 0:
            tokens = counter.count(parts.texts)
        tally.requests = n + 1
        tally.fixed_tokens += parts.fixed_tokens
        max_output = _max_output(parts, self._model_max[key])
        tally.max_output_tokens += max_output
        long_above = self._long_above[key]
        # Only requests counted one by one can be told long (no long-tier model is sampled).
        if long_above is not None and tokens is not None:
            prompt = tokens + parts.fixed_tokens
            if prompt > long_above:
                tally.long_input_tokens += prompt
                tally.long_max_output_tokens += max_output
        if tokens is None:
            tally.scaled_chars += chars
            per_char = tally.counted_tokens / tally.counted_chars if tally.counted_chars else 0
            scaled = (
                round(chars * per_char) if per_char else math.ceil(chars / FALLBACK_CHARS_PER_TOKEN)
            )
            return scaled + parts.fixed_tokens
        tally.counted_requests += 1
        tally.counted_tokens += tokens
        tally.counted_chars += chars
        return tokens + parts.fixed_tokens

    def merge(self, other: Estimate) -> None:
        """Add another estimate's tallies to this one (e.g. a chunk's into the job's)."""
        for key, theirs in other._tallies.items():
            self._tallies.setdefault(key, _Tally()).add(theirs)

    def by_model(self) -> dict[str, ModelEstimate]:
        """Per provider/model: requests, tokens and worst-case batch and real-time cost (None where the model has no price)."""
        found = {}
        for key, tally in sorted(self._tallies.items()):
            provider, _, model = key.partition("/")
            price = price_for(self._prices, provider, model)
            input_tokens = tally.input_tokens
            batch = realtime = None
            if price is not None:
                batch, realtime = _worst_case(price, tally)
            found[key] = ModelEstimate(
                tally.requests, input_tokens, tally.max_output_tokens, batch, realtime
            )
        return found

    @property
    def unpriced(self) -> dict[str, int]:
        """provider/model -> requests, for every model the price table does not know."""
        return {k: m.requests for k, m in self.by_model().items() if m.batch_usd is None}

    @property
    def requests(self) -> int:
        """Requests estimated, over every model."""
        return sum(t.requests for t in self._tallies.values())

    @property
    def input_tokens(self) -> int:
        """Estimated input tokens, over every model."""
        return sum(t.input_tokens for t in self._tallies.values())

    @property
    def max_output_tokens(self) -> int:
        """The most output tokens the requests may bill, over every model."""
        return sum(t.max_output_tokens for t in self._tallies.values())

    @property
    def total_usd(self) -> float | None:
        """Worst-case cost at batch prices; None when any model has no price."""
        return _total([m.batch_usd for m in self.by_model().values()])

    def with_rounds(self, max_retries: int, fallback: tuple[str, ...]) -> float | None:
        """The worst case with every follow-up round the options allow: each request
        answered `1 + max_retries` times at its model and at every model of `fallback`
        (its tokens priced at that model's rates); None when a model has no price."""
        costs: list[float | None] = []
        for key, tally in self._tallies.items():
            for name in dict.fromkeys((key, *fallback)):
                provider, _, model = name.partition("/")
                price = price_for(self._prices, provider, model)
                costs.append(None if price is None else _worst_case(price, tally)[0])
        total = _total(costs)
        return None if total is None else total * (1 + max_retries)

    @property
    def total_realtime_usd(self) -> float | None:
        """What the same requests would cost at real-time prices, worst case."""
        return _total([m.realtime_usd for m in self.by_model().values()])

    def to_dict(self) -> dict[str, Any]:
        """The estimate as summary.json and the API show it: totals and per model."""
        models = self.by_model()
        by_model: dict[str, Any] = {}
        for key, m in models.items():
            tally = self._tallies[key]
            by_model[key] = {
                "requests": m.requests,
                "input_tokens": m.input_tokens,
                "max_output_tokens": m.max_output_tokens,
                "batch_usd": _rounded(m.batch_usd),
                "realtime_usd": _rounded(m.realtime_usd),
                "method": _Counter(*key.split("/", 1)).method,
                "counting": {
                    name: getattr(tally, name)
                    for name in _TALLY_FIELDS
                    if name not in ("requests", "max_output_tokens")
                },
            }
        return {
            "prices_as_of": PRICES_AS_OF,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "max_output_tokens": self.max_output_tokens,
            "batch_usd": _rounded(_total([m.batch_usd for m in models.values()])),
            "realtime_usd": _rounded(_total([m.realtime_usd for m in models.values()])),
            "unpriced": {k: m.requests for k, m in models.items() if m.batch_usd is None},
            "by_model": by_model,
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        prices: Mapping[str, Price] | None = None,
        *,
        exact_requests: int = EXACT_REQUESTS,
        sample_every: int = SAMPLE_EVERY,
    ) -> Estimate:
        """An estimate saved with `to_dict`; costs are recomputed from `prices`."""
        estimate = cls(prices, exact_requests=exact_requests, sample_every=sample_every)
        for key, entry in data.get("by_model", {}).items():
            counting = entry.get("counting", {})
            tally = _Tally(int(entry["requests"]), int(entry["max_output_tokens"]))
            for name in _TALLY_FIELDS:
                if name in counting:
                    setattr(tally, name, int(counting[name]))
            estimate._tallies[key] = tally
        return estimate


def _worst_case(price: Price, tally: _Tally) -> tuple[float, float]:
    """Batch and real-time cost of a model's tally, its long prompts at the long tier."""
    tiers = [
        (
            price,
            tally.input_tokens - tally.long_input_tokens,
            tally.max_output_tokens - tally.long_max_output_tokens,
        )
    ]
    if price.long_context is not None and tally.long_input_tokens:
        tiers.append(
            (price.long_context.price, tally.long_input_tokens, tally.long_max_output_tokens)
        )
    batch = sum(i * p.input + o * p.output for p, i, o in tiers) / 1e6
    realtime = sum(i * p.realtime_input + o * p.realtime_output for p, i, o in tiers) / 1e6
    return batch, realtime


def _total(costs: list[float | None]) -> float | None:
    if any(c is None for c in costs):
        return None
    return sum(c for c in costs if c is not None)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 10)


# ---------------------------------------------------------------------------- counting


class _Counter:
    """Turns a request's texts into tokens for one provider/model."""

    __slots__ = ("_encode", "_per_token", "encoding")

    def __init__(self, provider: str, model: str) -> None:
        rule = provider_of(provider).token_rule(model)
        self.encoding = rule.encoding
        self._per_token = rule.chars_per_token
        self._encode: Callable[[str], list[int]] | None = None

    @property
    def method(self) -> str:
        if self.encoding:
            return f"tiktoken {self.encoding}"
        return f"{self._per_token:g} characters per token"

    def count(self, texts: list[str]) -> int:
        encode = self._encode
        if encode is None:
            from batchline.domain._tokenizers import get_encoding

            assert self.encoding is not None
            encode = self._encode = get_encoding(self.encoding).encode_ordinary
        if sum(map(len, texts)) <= TOKENIZE_SLICE:
            return sum(map(len, map(encode, texts)))
        total = 0
        for text in texts:  # a long prompt: its token list alone would be ~10x its size
            for start in range(0, len(text), TOKENIZE_SLICE):
                total += len(encode(text[start : start + TOKENIZE_SLICE]))
        return total

    def by_chars(self, texts: list[str]) -> int:
        return math.ceil(sum(map(len, texts)) / self._per_token)


def _max_output(parts: RequestParts, model_max: int | None) -> int:
    limit = parts.max_output
    if limit is None:
        limit = model_max if model_max is not None else DEFAULT_MAX_OUTPUT_TOKENS
    elif model_max is not None:
        limit = min(limit, model_max)
    # A request may ask for absurd numbers (n: 2**64-1) that its provider refuses: the
    # estimate stays a number every JSON writer takes (plan.json holds it).
    return min(limit * min(parts.choices, MAX_CHOICES), MAX_ESTIMATED_TOKENS)


def _decoded(line: Line) -> Any:
    if isinstance(line, dict):
        return line
    if isinstance(line, Mapping):
        return dict(line)
    return orjson.loads(line)


def _extract(provider: str, obj: Any) -> RequestParts:
    try:
        descriptor = provider_of(provider)
    except ConfigError:
        raise ValueError(f"no token estimate for provider {provider!r}") from None
    return descriptor.token_parts(obj if isinstance(obj, dict) else {})
