"""Enabled providers are configuration: BATCHLINE_ENABLED_PROVIDERS, passed to parsing as a
value. A line for a known provider that is not enabled is invalid and says so; an unknown
provider keeps its own error."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from batchline.config import Settings, enabled_providers
from batchline.domain.providers.registry import KNOWN_PROVIDERS
from batchline.domain.requests import InvalidLine, Request, model_problem, parse_line
from batchline.errors import ConfigError

from .fakes import make_deps
from .plan_helpers import plan_file

MSG = [{"role": "user", "content": "hi"}]
OPENAI_ONLY = frozenset({"openai"})
DISABLED = "provider 'anthropic' is not enabled in this deployment"


def parse(obj: Any, enabled: frozenset[str], default_model: str | None = None) -> Any:
    return parse_line(
        4, orjson.dumps(obj), default_model=default_model, max_line_bytes=10**6, enabled=enabled
    )


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"custom_id": "a", "model": "anthropic/claude-haiku-4-5", "messages": MSG}, "model"),
        (
            {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "messages": MSG}},
            "params.model",
        ),
        ({"custom_id": "a", "params": {"messages": MSG}}, "params.model"),
    ],
)
def test_a_line_for_a_provider_not_enabled_is_invalid_naming_the_line_and_model(
    line: dict[str, Any], field: str
) -> None:
    got = parse(line, OPENAI_ONLY)
    assert isinstance(got, InvalidLine)
    assert (got.line, got.custom_id, got.field, got.reason) == (4, "a", field, DISABLED)
    assert got.message == f"line 4: {field}: {DISABLED}"
    assert isinstance(parse(line, KNOWN_PROVIDERS, "anthropic/claude-haiku-4-5"), Request)


def test_native_lines_of_each_provider_not_enabled_name_their_model_field() -> None:
    vertex = {"key": "k", "request": {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}}
    got = parse(vertex, OPENAI_ONLY, "vertex/gemini-2.5-flash")
    assert isinstance(got, InvalidLine)
    assert (got.custom_id, got.field) == ("k", "request.model")
    assert "provider 'vertex' is not enabled" in got.reason
    body = {"model": "gpt-4o-mini", "messages": MSG}
    native = {"method": "POST", "url": "/v1/chat/completions", "body": body}
    got = parse(native, frozenset({"anthropic"}))
    assert isinstance(got, InvalidLine) and got.field == "body.model"
    assert "provider 'openai' is not enabled" in got.reason


def test_a_job_default_for_a_provider_not_enabled_makes_its_lines_invalid() -> None:
    got = parse({"messages": MSG}, OPENAI_ONLY, default_model="anthropic/claude-haiku-4-5")
    assert isinstance(got, InvalidLine)
    assert (got.field, got.reason) == ("model (job default)", DISABLED)


def test_an_unknown_provider_keeps_its_error() -> None:
    got = parse({"model": "acme/x", "messages": MSG}, OPENAI_ONLY)
    assert isinstance(got, InvalidLine) and got.field == "model"
    assert got.reason == "unknown provider 'acme' (known: anthropic, openai, vertex)"
    assert model_problem("acme/x", OPENAI_ONLY) == got.reason


def test_a_model_name_seen_while_enabled_is_still_refused_when_not() -> None:
    line = {"model": "anthropic/claude-sonnet-4-5", "messages": MSG}
    assert isinstance(parse(line, KNOWN_PROVIDERS), Request)  # remembered as a good name
    got = parse(line, OPENAI_ONLY)
    assert isinstance(got, InvalidLine) and got.reason == DISABLED
    assert model_problem("anthropic/claude-sonnet-4-5", OPENAI_ONLY) == DISABLED
    assert model_problem("anthropic/claude-sonnet-4-5") is None  # every known one by default


def test_the_setting_reads_a_comma_separated_list_defaulting_to_every_known_provider() -> None:
    assert enabled_providers(None) == KNOWN_PROVIDERS
    assert enabled_providers(" ") == KNOWN_PROVIDERS
    assert enabled_providers(" openai , vertex,") == {"openai", "vertex"}
    with pytest.raises(
        ConfigError, match="BATCHLINE_ENABLED_PROVIDERS: unknown provider 'mistral'"
    ):
        enabled_providers("openai,mistral")
    env = {
        "GOOGLE_CLOUD_PROJECT": "p",
        "BATCHLINE_INPUT_BUCKET": "i",
        "BATCHLINE_OUTPUT_BUCKET": "o",
        "BATCHLINE_WORK_BUCKET": "w",
    }
    assert Settings.from_env(env).enabled_providers == KNOWN_PROVIDERS
    only = Settings.from_env({**env, "BATCHLINE_ENABLED_PROVIDERS": "anthropic"})
    assert only.enabled_providers == {"anthropic"}
    with pytest.raises(ConfigError, match="'azure'"):
        Settings.from_env({**env, "BATCHLINE_ENABLED_PROVIDERS": "azure"})


def test_planning_takes_the_enabled_providers_from_the_settings() -> None:
    deps, _, _ = make_deps()
    deps.settings = replace(deps.settings, enabled_providers=OPENAI_ONLY)
    lines = [
        {"model": "openai/gpt-4o-mini", "messages": MSG},
        {"model": "anthropic/claude-haiku-4-5", "messages": MSG},
        {"model": "vertex/gemini-2.5-flash", "messages": MSG},
    ]
    planned = plan_file(deps, b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert [(provider, numbers) for provider, _, numbers in planned.chunks] == [("openai", [1])]
    assert sorted(planned.invalid) == [2, 3]
    errors = [planned.invalid[n]["error"] for n in (2, 3)]
    assert [e["field"] for e in errors] == ["model", "model"]  # type: ignore[index]
    assert "provider 'anthropic' is not enabled" in str(errors[0])
    assert "provider 'vertex' is not enabled" in str(errors[1])
