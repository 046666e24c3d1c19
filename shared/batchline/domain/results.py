"""Result lines and the tallies that become summary.json. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from batchline.domain.models import ProviderResult, ResultStatus
from batchline.domain.pricing import Price
from batchline.domain.pricing import cost as line_cost
from batchline.domain.requests import InvalidLine
from batchline.domain.schemas import SchemaCheck


def provider_result_line(
    *,
    custom_id: str,
    line: int,
    provider: str,
    model: str,
    result: ProviderResult,
    price: Price | None,
    batch_id: str | None = None,
    check: SchemaCheck | None = None,
    earlier: list[dict[str, Any]] | None = None,
    previous: dict[str, Any] | None = None,
    reason: str = "first",
    selected_by: str | None = None,
) -> ResultLine:
    """One line of results.jsonl for a request that went to a provider, with what its
    usage would have cost in real time (for the tally; not part of the line).

    `check` is the answer's schema validation, when the request had a schema: a valid
    answer gives `output.parsed`; an invalid one makes the line `failed` with a
    `schema_validation` error naming the path, the raw text kept in `output.text`.
    `earlier` are the attempts before this one (follow-up rounds: `reason` says why this
    one was sent), `previous` the line they made (`superseded`): the line lists every
    attempt with its provider and model, and its usage and cost are the sums over them.
    `selected_by` says how the model was chosen when not by name (`auto`).
    """
    usage = result.usage
    cost = realtime = None
    if usage is not None and price is not None:
        both = line_cost(price, usage)
        cost, realtime = both.batch_usd, both.realtime_usd
    status, output, error = _outcome(result, check)
    attempt = _attempt(reason, provider, model, batch_id, str(status), usage, cost, error)
    if error is not None and output is not None:
        attempt["text"] = output["text"]  # what was wrong, kept once the line moves on
    attempts = [*(earlier or ()), attempt]
    if len(attempts) > 1:
        usage, cost = _summed(attempts)
        before = (previous or {}).get("realtime_usd")
        # Each attempt at its own model's price: what came before, then this one.
        realtime = None if cost is None else (before or 0.0) + (realtime or 0.0)
    record = {
        "custom_id": custom_id,
        "line": line,
        "status": str(status),
        "provider": provider,
        "model": model,
        "output": output,
        "usage": usage,
        "cost_usd": cost,
        "error": error,
        "response": result.response,
        "attempts": attempts,
    }
    if selected_by is not None:
        record["selected_by"] = selected_by
    return ResultLine(record, realtime if cost is not None else None)


def _attempt(
    reason: str,
    provider: str,
    model: str,
    batch_id: str | None,
    status: str,
    usage: dict[str, int] | None,
    cost: float | None,
    error: dict[str, Any] | None,
) -> dict[str, Any]:
    """One entry of a result line's `attempts`."""
    return {
        "reason": reason,
        "provider": provider,
        "model": model,
        "batch_id": batch_id,
        "status": status,
        "usage": usage,
        "cost_usd": cost,
        "error": error,
    }


def _outcome(
    result: ProviderResult, check: SchemaCheck | None
) -> tuple[ResultStatus, dict[str, Any] | None, dict[str, Any] | None]:
    """The line's status, output and error: the provider's, except that an answer that
    broke its schema makes the line `failed` (`schema_validation`), its text kept."""
    status = result.status
    error = result.error
    output: dict[str, Any] | None = None
    if status is ResultStatus.SUCCEEDED:
        output = {"text": result.text, "finish_reason": result.finish_reason}
        if check is not None:
            if check.violation is None:
                raw = check.verbatim
                # A line of results.jsonl holds no raw newline: JSON whitespace may.
                if raw is not None and "\n" not in raw and "\r" not in raw:
                    output["parsed"] = orjson.Fragment(raw)
                else:
                    output["parsed"] = check.parsed
            else:
                status = ResultStatus.FAILED
                output["parsed"] = None
                if output["text"] is None and result.structured is not None:
                    output["text"] = orjson.dumps(result.structured).decode()
                error = {
                    "type": SCHEMA_VALIDATION,
                    "message": check.violation.text,
                    "path": check.violation.path,
                    "retryable": False,
                }
    return status, output, error


class ResultLine(NamedTuple):
    """A line of results.jsonl (`record`) and what its usage would have cost in real time."""

    record: dict[str, Any]
    realtime_usd: float | None


SCHEMA_VALIDATION = "schema_validation"
#: The status of an attempt never sent: its model cannot take the line (a failover
#: passed it over, saying why; `follow_ups.skipped_attempt`).
SKIPPED = "skipped"


def _summed(attempts: list[dict[str, Any]]) -> tuple[dict[str, int] | None, float | None]:
    usages = [a["usage"] for a in attempts if a.get("usage")]
    if not usages:
        return None, None
    usage: dict[str, int] = {}
    for one in usages:
        for key, value in one.items():
            usage[key] = usage.get(key, 0) + int(value or 0)
    costs = [a.get("cost_usd") for a in attempts if a.get("usage")]
    cost = None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None))
    return usage, cost


def superseded(record: dict[str, Any], realtime_usd: float | None) -> dict[str, Any]:
    """What a tally needs to take a line back when a repair replaces it."""
    return {
        "realtime_usd": realtime_usd,
        "status": record["status"],
        "provider": record["provider"],
        "model": record["model"],
        "usage": record["usage"],
        "cost_usd": record["cost_usd"],
        "error": {"type": record["error"]["type"]} if record.get("error") else None,
        "attempts": len(record["attempts"]),
        "route": route(record["attempts"]),
    }


def route(attempts: list[dict[str, Any]]) -> list[list[Any]]:
    """Each attempt's (provider, status, reason), as a tally counts them per provider."""
    return [[a.get("provider"), a.get("status"), a.get("reason")] for a in attempts]


def invalid_result_line(invalid: InvalidLine, custom_id: str) -> dict[str, Any]:
    """The line of results.jsonl for an invalid input line: its error names the field."""
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
        "attempts": [],
    }


@dataclass
class Tally:
    """Counts, tokens and cost of a set of result lines; tallies add up.

    A repair replaces a line that an earlier tally counted: `remove` takes the superseded
    line back (its summary, see `superseded`) before `add` counts the new one, so that
    summing every chunk's tally counts each input line once, with every attempt's tokens.
    """

    counts: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    realtime_cost_usd: float = 0.0
    unpriced: dict[str, int] = field(default_factory=dict)  # model -> lines with usage, no price
    by_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # error type -> lines
    repaired: int = 0  # lines answered more than once
    #: provider -> attempts sent, succeeded, failed, failed over from and to it.
    providers: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, record: dict[str, Any], realtime_usd: float | None = None) -> None:
        """Count a line, and what it would have cost in real time when it has a price."""
        self._count(record, 1, realtime_usd)

    def remove(self, line: dict[str, Any]) -> None:
        """Take back a line (its `superseded` summary) that a repair replaces."""
        self._count(line, -1, line.get("realtime_usd"))

    def _count(self, record: dict[str, Any], sign: int, realtime: float | None) -> None:
        counts = self.counts
        status = record["status"]
        value = counts.get(status, 0) + sign
        if value:
            counts[status] = value
        else:
            del counts[status]
        error = record.get("error")
        if error:
            _bump(self.errors, str(error["type"]), sign)
        attempts = record.get("attempts")
        if type(attempts) is list and len(attempts) == 1:  # most lines: one attempt
            self._count_sent(record["provider"], status, sign)
        else:
            if (attempts if isinstance(attempts, int) else len(attempts or ())) > 1:
                self.repaired += sign
            steps = record.get("route") if isinstance(attempts, int) else route(attempts or [])
            self._count_route(steps or [], sign)
        usage = record.get("usage")
        if not usage:
            return
        key = f"{record['provider']}/{record['model']}"
        entry = self.by_model.get(key)
        if entry is None:
            entry = self.by_model[key] = _model_entry()
        input_tokens = sign * usage["input_tokens"]
        output_tokens = sign * usage["output_tokens"]
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        entry["lines"] += sign
        entry["input_tokens"] += input_tokens
        entry["output_tokens"] += output_tokens
        cost = record.get("cost_usd")
        if cost is None or realtime is None:
            _bump(self.unpriced, key, sign)
            return
        self.cost_usd += sign * cost
        self.realtime_cost_usd += sign * realtime
        entry["cost_usd"] += sign * cost
        entry["realtime_cost_usd"] += sign * realtime

    def _count_sent(self, provider: str | None, status: str | None, sign: int) -> dict[str, int]:
        """Count one attempt sent to `provider` that ended `status`."""
        mine = self.providers.get(provider or "")
        if mine is None:
            mine = self.providers[provider or ""] = _provider_entry()
        mine["sent"] += sign
        mine["succeeded" if status == ResultStatus.SUCCEEDED else "failed"] += sign
        return mine

    def _count_route(self, steps: list[list[Any]], sign: int) -> None:
        """Count a line's attempts per provider (`route`)."""
        before: str | None = None
        for provider, status, reason in steps:
            if provider is None or status == SKIPPED:  # passed over, never sent
                continue
            mine = self._count_sent(provider, status, sign)
            if reason == "failover" and before is not None:
                self.providers.setdefault(before, _provider_entry())["failed_over_from"] += sign
                mine["failed_over_to"] += sign
            before = provider

    def merge(self, other: Tally) -> None:
        """Add `other`'s counts, tokens and costs to this tally."""
        for status, n in other.counts.items():
            _bump(self.counts, status, n)
        for kind, n in other.errors.items():
            _bump(self.errors, kind, n)
        self.repaired += other.repaired
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.realtime_cost_usd += other.realtime_cost_usd
        for key, n in other.unpriced.items():
            _bump(self.unpriced, key, n)
        for key, entry in other.by_model.items():
            mine = self.by_model.setdefault(key, _model_entry())
            for name, value in entry.items():
                mine[name] = mine.get(name, 0) + value
        for provider, counts in other.providers.items():
            theirs = self.providers.setdefault(provider, _provider_entry())
            for name, n in counts.items():
                theirs[name] = theirs.get(name, 0) + n

    @property
    def total(self) -> int:
        """How many lines the tally counts."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """The tally as JSON (summary.json, and the work files that keep one)."""
        return {
            "counts": dict(sorted(self.counts.items())),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 10),
            "realtime_cost_usd": round(self.realtime_cost_usd, 10),
            "unpriced": self.unpriced,
            "by_model": self.by_model,
            "errors": dict(sorted(self.errors.items())),
            "repaired": self.repaired,
            "providers": dict(sorted(self.providers.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        """The tally `to_dict` wrote (raises KeyError or TypeError on anything else)."""
        return cls(
            counts=dict(data["counts"]),
            input_tokens=data["input_tokens"],
            output_tokens=data["output_tokens"],
            cost_usd=data["cost_usd"],
            realtime_cost_usd=data["realtime_cost_usd"],
            unpriced=dict(data.get("unpriced", {})),
            by_model={k: {**_model_entry(), **v} for k, v in data.get("by_model", {}).items()},
            errors=dict(data.get("errors", {})),
            # "reasked": the name records written before repair had one name.
            repaired=int(data.get("repaired", data.get("reasked", 0))),
            providers={k: {**_provider_entry(), **v} for k, v in data.get("providers", {}).items()},
        )


def _model_entry() -> dict[str, Any]:
    return {
        "lines": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.0,
        "realtime_cost_usd": 0.0,
    }


def _bump(counter: dict[str, int], key: str, by: int) -> None:
    value = counter.get(key, 0) + by
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)


def _provider_entry() -> dict[str, int]:
    return {"sent": 0, "succeeded": 0, "failed": 0, "failed_over_from": 0, "failed_over_to": 0}
