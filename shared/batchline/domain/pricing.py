"""Batch prices per 1M tokens, dated. Real-time prices are twice these for every provider.

Source: PROVIDERS.md (published 2026 prices). Override per deployment with
BATCHLINE_PRICES (JSON: {"provider/model": [input, output]}).
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2026-06-01"
REALTIME_FACTOR = 2.0


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float


BATCH_PRICES: dict[str, Price] = {
    "openai/gpt-4.1": Price(1.00, 4.00),
    "openai/gpt-4.1-mini": Price(0.20, 0.80),
    "openai/gpt-4o-mini": Price(0.075, 0.30),
    "anthropic/claude-sonnet-4-5": Price(1.50, 7.50),
    "anthropic/claude-haiku-4-5": Price(0.50, 2.50),
    "vertex/gemini-2.5-flash": Price(0.15, 1.25),
    "vertex/gemini-2.5-pro": Price(0.625, 5.00),
}


def batch_cost(
    prices: dict[str, Price], provider: str, model: str, input_tokens: int, output_tokens: int
) -> float | None:
    """Cost in USD at the batch price, or None when the model has no known price."""
    price = prices.get(f"{provider}/{model}")
    if price is None:
        return None
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
