"""The cost ledger and the budget guard through the whole local stack."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from batchline.domain.models import JobState

from .conftest import Pipeline

pytestmark = pytest.mark.e2e

#: Batch prices per 1M tokens (input, output) as PROVIDERS.md publishes them; real time is
#: twice. Written out here, not read from the code's table, so the test checks the table.
PUBLISHED = {
    "openai/gpt-4.1-mini": (0.20, 0.80),
    "anthropic/claude-haiku-4-5": (0.50, 2.50),
    "vertex/gemini-2.5-flash": (0.15, 1.25),
}


def line(i: int, model: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "custom_id": f"c-{i}",
            "model": model,
            "messages": [{"role": "user", "content": f"Price me, request {i}."}],
            **extra,
        }
    )


def by_hand(usage: dict[str, int], model: str) -> float:
    price_in, price_out = PUBLISHED[model]
    assert usage.get("cached_input_tokens", 0) == 0  # the emulators cache nothing
    return (usage["input_tokens"] * price_in + usage["output_tokens"] * price_out) / 1e6


def test_costs_per_line_provider_and_model_match_a_hand_computation(pipeline: Pipeline) -> None:
    models = list(PUBLISHED)
    data = b"\n".join(line(i, models[i % 3]) for i in range(9))
    data += b"\n" + line(9, "openai/gpt-9-preview") + b"\n"
    job_id, _ = pipeline.upload("e2e/costs/small.jsonl", data)
    job = pipeline.wait(job_id, timeout=120)
    results = pipeline.results(job)
    assert [r["status"] for r in results] == ["succeeded"] * 10
    expected: dict[str, float] = {}
    for r in results[:9]:
        model = f"{r['provider']}/{r['model']}"
        cost = by_hand(r["usage"], model)
        assert r["usage"]["input_tokens"] > 0 and r["usage"]["output_tokens"] > 0
        assert math.isclose(r["cost_usd"], cost, rel_tol=1e-9), (r["cost_usd"], cost)
        expected[model] = expected.get(model, 0.0) + cost
    unknown = results[9]
    assert unknown["cost_usd"] is None and unknown["usage"]["output_tokens"] > 0

    summary = pipeline.summary(job)
    cost = summary["cost"]
    total = sum(expected.values())
    assert math.isclose(cost["batch_usd"], total, rel_tol=1e-9)
    assert math.isclose(cost["realtime_usd"], 2 * total, rel_tol=1e-9)
    assert math.isclose(cost["saving_usd"], total, rel_tol=1e-9)
    for model, value in expected.items():
        entry = cost["by_model"][model]
        assert math.isclose(entry["batch_usd"], value, rel_tol=1e-9)
        assert math.isclose(entry["realtime_usd"], 2 * value, rel_tol=1e-9)
        provider = cost["by_provider"][model.split("/")[0]]
        assert math.isclose(provider["batch_usd"], value, rel_tol=1e-9)
    assert cost["unpriced_models"] == {"openai/gpt-9-preview": 1}
    assert any("gpt-9-preview" in w for w in summary["warnings"])
    # The estimate made before submitting is in the summary too, for comparison.
    assert summary["estimate"]["requests"] == 10
    assert summary["estimate"]["unpriced"] == {"openai/gpt-9-preview": 1}


def test_the_budget_guard_rejects_an_over_budget_job_before_any_provider_call(
    pipeline: Pipeline,
) -> None:
    before_anthropic = {b["id"] for b in pipeline.anthropic_batches()}
    models = list(PUBLISHED)
    data = b"\n".join(line(i, models[i % 3], max_tokens=4000) for i in range(30))
    job_id, _ = pipeline.upload(
        "e2e/costs/over-budget.jsonl", data, metadata={"max_cost_usd": "0.01"}
    )
    job = pipeline.wait(job_id, timeout=60)
    assert job.state is JobState.REJECTED
    assert "exceeds max_cost_usd" in (job.error or "")
    summary = pipeline.summary(job)
    estimate = summary["estimate"]
    assert estimate["requests"] == 30 and estimate["batch_usd"] > 0.01
    # Worst case: 10 requests of 4,000 output tokens per model at its output price.
    worst_output = sum(10 * 4000 * out / 1e6 for _, out in PUBLISHED.values())
    assert estimate["batch_usd"] >= worst_output
    assert estimate["max_output_tokens"] == 30 * 4000
    # Nothing reached a provider.
    assert pipeline.emulator_batches(job_id) == []
    assert {b["id"] for b in pipeline.anthropic_batches()} == before_anthropic
    assert pipeline.vertex_jobs(job_id) == []


def test_a_job_within_its_budget_runs(pipeline: Pipeline) -> None:
    data = b"\n".join(line(i, "openai/gpt-4.1-mini", max_tokens=50) for i in range(5))
    job_id, _ = pipeline.upload("e2e/costs/in-budget.jsonl", data, metadata={"max_cost_usd": "1"})
    job = pipeline.wait(job_id, timeout=60)
    assert job.state is JobState.SUCCEEDED
    estimate = pipeline.summary(job)["estimate"]
    assert 0 < estimate["batch_usd"] <= 1
    assert job.cost_usd is not None and job.cost_usd <= estimate["batch_usd"]
