"""Result lines and the tallies that become summary.json. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batchline.domain.models import ProviderResult, ResultStatus
from batchline.domain.pricing import REALTIME_FACTOR, Price, batch_cost
from batchline.domain.requests import InvalidLine


def provider_result_line(
    *,
    custom_id: str,
    line: int,
    provider: str,
    model: str,
    result: ProviderResult,
    prices: dict[str, Price],
    attempts: int = 1,
) -> dict[str, Any]:
    usage = result.usage
    cost = None
    if usage is not None:
        cost = batch_cost(prices, provider, model, usage["input_tokens"], usage["output_tokens"])
    output = None
    if result.status is ResultStatus.SUCCEEDED:
        output = {"text": result.text, "finish_reason": result.finish_reason}
    return {
        "custom_id": custom_id,
        "line": line,
        "status": str(result.status),
        "provider": provider,
        "model": model,
        "output": output,
        "usage": usage,
        "cost_usd": cost,
        "error": result.error,
        "response": result.response,
        "attempts": attempts,
    }


def invalid_result_line(invalid: InvalidLine, custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "line": invalid.line,
        "status": str(ResultStatus.INVALID),
        "provider": None,
        "model": None,
        "output": None,
        "usage": None,
        "cost_usd": None,
        "error": {
            "type": "invalid_request",
            "message": invalid.message,
            "field": invalid.field,
            "retryable": False,
        },
        "response": None,
        "attempts": 0,
    }


@dataclass
class Tally:
    """Counts, tokens and cost of a set of result lines; tallies add up."""

    counts: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    realtime_cost_usd: float = 0.0
    unpriced: dict[str, int] = field(default_factory=dict)  # model -> lines with usage, no price
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, record: dict[str, Any]) -> None:
        status = record["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        usage = record.get("usage")
        if not usage:
            return
        key = f"{record['provider']}/{record['model']}"
        entry = self.by_model.setdefault(
            key, {"lines": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        )
        entry["lines"] += 1
        self.input_tokens += usage["input_tokens"]
        self.output_tokens += usage["output_tokens"]
        entry["input_tokens"] += usage["input_tokens"]
        entry["output_tokens"] += usage["output_tokens"]
        cost = record.get("cost_usd")
        if cost is None:
            self.unpriced[key] = self.unpriced.get(key, 0) + 1
            return
        self.cost_usd += cost
        self.realtime_cost_usd += cost * REALTIME_FACTOR
        entry["cost_usd"] += cost

    def merge(self, other: Tally) -> None:
        for status, n in other.counts.items():
            self.counts[status] = self.counts.get(status, 0) + n
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.realtime_cost_usd += other.realtime_cost_usd
        for key, n in other.unpriced.items():
            self.unpriced[key] = self.unpriced.get(key, 0) + n
        for key, entry in other.by_model.items():
            mine = self.by_model.setdefault(
                key, {"lines": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
            )
            for name, value in entry.items():
                mine[name] += value

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 10),
            "realtime_cost_usd": round(self.realtime_cost_usd, 10),
            "unpriced": self.unpriced,
            "by_model": self.by_model,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(
            counts=dict(data["counts"]),
            input_tokens=data["input_tokens"],
            output_tokens=data["output_tokens"],
            cost_usd=data["cost_usd"],
            realtime_cost_usd=data["realtime_cost_usd"],
            unpriced=dict(data.get("unpriced", {})),
            by_model={k: dict(v) for k, v in data.get("by_model", {}).items()},
        )
