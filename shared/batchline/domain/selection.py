"""The model of a line whose model is "auto": the cheapest (or fastest) candidate that can
take it, the other suitable ones its failover chain. Pure.

A line's candidates are `provider/model` names: the job's `candidates` option, else the
deployment's BATCHLINE_AUTO_CANDIDATES, else `default_candidates` (the model of each
enabled provider with the lowest batch input plus output rate in the price table). Each
candidate, in turn, is one the line must fit:

- its parser's checks: `requests.retarget` (messages and content blocks, temperature,
  stop, whether the provider can express the line's schema: Gemini refuses `not`,
  `propertyNames`, ...);
- its capabilities in the price table (`pricing.Price`): the line's images and PDFs
  (as the provider reads its content parts: `Provider.input_modalities`) among the
  model's `input_modalities`, `structured_output` for a line with a schema, and its
  `context_window` at least the line's input tokens plus its worst-case output (the
  line's `max_tokens` capped at the model's maximum, else what the provider's encoder
  asks for: the model's maximum, or Anthropic's default `max_tokens`), both counted by
  `estimate.estimate_line` on the request as encoded for that provider;
- the provider's per-request limit: the encoded request within one batch's bytes;
- the model's quota: the line's estimated input tokens within what one chunk of that
  model may hold (`narrow`, from `Quotas.narrow`), else no batch could ever take it.

The suitable candidates are ranked: `prefer: cost` by worst-case cost at the model's
batch price (`pricing.cost` of those input and output tokens), `speed` by the model's
`tokens_per_second` (faster first, unknown last), ties by cost, then by the order given.
The first is the line's model (`selected_by="auto"`); the rest, in that order, its
`fallback`. A line no candidate can take is invalid, naming each candidate's reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from batchline.domain.estimate import estimate_line
from batchline.domain.models import PREFERENCES
from batchline.domain.planning import Narrow
from batchline.domain.pricing import Price, cost, price_for
from batchline.domain.providers.base import ChunkLimits, Encoder, InvalidField, Request
from batchline.domain.providers.registry import PROVIDERS
from batchline.domain.requests import AUTO, retarget


@dataclass(frozen=True, slots=True)
class Verdict:
    """One candidate for one line: the request bound to it and its worst-case cost, or
    why it cannot take the line (`kind`, a few words; `reason`, the details)."""

    target: str
    request: Request | None = None
    cost_usd: float = 0.0
    tokens_per_second: float | None = None
    kind: str = ""
    reason: str = ""


def default_candidates(prices: Mapping[str, Price], enabled: Iterable[str]) -> tuple[str, ...]:
    """One model per enabled provider, in the registry's order: its model with the lowest
    batch input plus output rate among those whose context window the table knows."""
    found = []
    for name in PROVIDERS:
        if name not in enabled:
            continue
        priced = [
            (price.input + price.output, key)
            for key, price in prices.items()
            if key.partition("/")[0] == name and price.context_window is not None
        ]
        if priced:
            found.append(min(priced)[1])
    return tuple(found)


class Selector:
    """Binds each "auto" request to its model (`select`) and counts the choices (`chosen`:
    model -> reason -> lines)."""

    def __init__(
        self,
        candidates: Sequence[str],
        *,
        prefer: str,
        prices: Mapping[str, Price],
        encoders: Callable[[str], Encoder],
        limits: Callable[[str], ChunkLimits],
        enabled: frozenset[str],
        narrow: Narrow | None = None,
    ) -> None:
        """`narrow` cuts a provider's limits for one model (its quota: a line estimated
        over it could never be sent to that model)."""
        if prefer not in PREFERENCES:
            raise ValueError(f"prefer must be one of {PREFERENCES}, not {prefer!r}")
        self.candidates = tuple(candidates)
        self.prefer = prefer
        self._prices = prices
        self._encoders = encoders
        self._limits = limits
        self._narrow = narrow
        self._enabled = enabled
        self.chosen: dict[str, Counter[str]] = {}

    def select(self, request: Request) -> Request:
        """`request` (model "auto") bound to its model, the other suitable candidates its
        `fallback`; raises `InvalidField` on `model` naming each candidate's reason."""
        verdicts = [self.verdict(request, target) for target in self.candidates]
        suitable = [v for v in verdicts if v.request is not None]
        if not suitable:
            why = "; ".join(f"{v.target}: {v.reason}" for v in verdicts) or "none are configured"
            raise InvalidField("model", f"'auto': no candidate can take this line ({why})")
        ranked = sorted(suitable, key=self._rank)
        best = ranked[0]
        assert best.request is not None
        reason = f"{'cheapest' if self.prefer == 'cost' else 'fastest'} of {len(suitable)}"
        refused = [f"{v.target} ({v.kind})" for v in verdicts if v.request is None]
        if refused:
            reason += f"; ruled out: {', '.join(refused)}"
        self.chosen.setdefault(best.target, Counter())[reason] += 1
        fallback = tuple(v.target for v in ranked[1:])
        return replace(best.request, fallback=fallback, selected_by=AUTO)

    def choices(self) -> list[dict[str, Any]]:
        """The choices so far, per model: `{"model", "requests", "reasons": {why: lines}}`
        (the estimate view's and summary.json's `auto`)."""
        return [
            {"model": model, "requests": sum(why.values()), "reasons": dict(why)}
            for model, why in sorted(self.chosen.items())
        ]

    def _rank(self, verdict: Verdict) -> tuple[float, float, int]:
        order = self.candidates.index(verdict.target)
        if self.prefer == "speed":
            speed = verdict.tokens_per_second
            return (-speed if speed is not None else 0.0, verdict.cost_usd, order)
        return (verdict.cost_usd, 0.0, order)

    def verdict(self, request: Request, target: str) -> Verdict:
        """Whether `target` can take `request`, and at what worst-case cost."""
        try:
            bound = retarget(request, target, self._enabled)
        except InvalidField as exc:
            field = exc.field.split(".")[0].split("[")[0]
            if field == "fallback":  # the target itself: a disabled provider
                return Verdict(target, kind="model", reason=exc.reason)
            kind = "content" if field == "messages" else field
            return Verdict(target, kind=kind, reason=f"{exc.field}: {exc.reason}")
        price = price_for(self._prices, bound.provider, bound.model)
        if price is None:
            return Verdict(target, kind="no price", reason="not in the price table")
        refused = _capability_problem(bound, price)
        if refused is not None:
            return Verdict(target, kind=refused[0], reason=refused[1])
        return self._measured(bound, target, price)

    def _measured(self, bound: Request, target: str, price: Price) -> Verdict:
        """The encoded request's size, tokens and cost at `target`."""
        try:
            line = self._encoders(bound.provider)(bound)
            size = len(orjson.dumps(line)) + 1
        except Exception as exc:
            return Verdict(target, kind="encoding", reason=f"could not be encoded: {exc}")
        limits = self._limits(bound.provider)
        room = limits.max_bytes - limits.envelope_bytes
        if size > room:
            return Verdict(target, kind="size", reason=f"{size} bytes; one batch takes {room}")
        tokens = estimate_line(bound.provider, bound.model, line, self._prices)
        if self._narrow is not None:
            cap = self._narrow(bound.provider, bound.model, limits).max_input_tokens
            if cap is not None and tokens.input_tokens > cap:
                reason = f"{tokens.input_tokens} input tokens over its quota of {cap}"
                return Verdict(target, kind="quota", reason=reason)
        needed = tokens.input_tokens + tokens.max_output_tokens
        window = price.context_window
        if window is not None and needed > window:
            return Verdict(
                target,
                kind="context window",
                reason=f"{tokens.input_tokens} input + {tokens.max_output_tokens} output "
                f"tokens over its context window of {window}",
            )
        usage = {"input_tokens": tokens.input_tokens, "output_tokens": tokens.max_output_tokens}
        return Verdict(target, bound, cost(price, usage).batch_usd, price.tokens_per_second)


def _capability_problem(request: Request, price: Price) -> tuple[str, str] | None:
    """(kind, reason) when the model's capabilities refuse the request, else None."""
    if request.schema is not None and price.structured_output is False:
        return "structured output", "the model has no structured output for the line's schema"
    modalities = price.input_modalities
    if modalities is not None and request.params is not None:
        asked = PROVIDERS[request.provider].input_modalities(request.params.get("messages"))
        missing = sorted(asked - modalities)
        if missing:
            return "modality", f"it takes no {' or '.join(missing)} input"
    return None
