"""The body `POST /v1/jobs:estimate` answers (`services.estimate.DryRun.view`), as
pydantic models: what a job would be, planned without uploading or calling a provider.
Apart from `models` so that each stays small; the same base (`_Out`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from batchline.services.api.models import _Out


class InvalidLineView(_Out):
    """A line that would be an `invalid` result, and why."""

    line: int
    custom_id: str | None
    field: str
    message: str


class ChunkPlanView(_Out):
    """The provider batches one provider/model would take."""

    provider: str
    model: str
    chunks: int
    requests: int
    bytes: int


class AutoChoiceView(_Out):
    """The lines `model: "auto"` gave one model, and why (reason -> lines)."""

    model: str = Field(description="`provider/model`.")
    requests: int
    reasons: dict[str, int] = Field(
        description="Why, e.g. `cheapest of 2; ruled out: vertex/gemini-2.5-flash (schema)`."
    )


class CostRange(_Out):
    """USD at batch prices: `low` pays for the input alone, `high` for every request
    writing its most output; null when a model has no price."""

    low: float | None
    high: float | None
    realtime_high: float | None


class EstimateView(_Out):
    """What a job would be, planned without uploading anything or calling a provider."""

    lines: int
    blank_lines: int
    requests: int
    invalid: int
    invalid_lines: list[InvalidLineView] = Field(description="The first 20.")
    chunks: list[ChunkPlanView]
    auto: list[AutoChoiceView] = Field(description='The models `model: "auto"` chose.')
    cost_usd: CostRange
    estimate: dict[str, Any] = Field(description="Tokens and costs per provider/model.")
    warnings: list[str]
