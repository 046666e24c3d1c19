"""`model: "auto"`: which candidate takes each line, and why (domain/selection.py), through
the parser, the job options and planning."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import orjson
import pytest

from batchline.config import Settings, check_auto_candidates, quota_policies
from batchline.domain.models import JobOptions
from batchline.domain.options import OptionError, from_api, from_metadata
from batchline.domain.pricing import PRICES
from batchline.domain.providers.base import ChunkLimits, InvalidField
from batchline.domain.providers.registry import PROVIDERS
from batchline.domain.quotas import parse_quotas
from batchline.domain.requests import AUTO, InvalidLine, Request, parse_line
from batchline.domain.selection import Selector, default_candidates
from batchline.domain.workfiles.requests import iter_stored
from batchline.errors import ConfigError
from batchline.services.line_work import selector_for

from .fakes import make_deps
from .plan_helpers import plan_file

MINI, HAIKU, FLASH = "openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", "vertex/gemini-2.5-flash"
#: A schema with `not`, which Gemini's responseJsonSchema cannot express.
NOT_FOR_GEMINI = {
    "name": "answer",
    "schema": {
        "type": "object",
        "properties": {"a": {"type": "string", "not": {"const": "x"}}},
        "required": ["a"],
        "additionalProperties": False,
    },
}


@cache
def document() -> str:
    """~589k characters: ~147k tokens for Gemini (4 characters a token), ~168k for Claude
    (3.5), ~299k for gpt-4o-mini (tiktoken: digits tokenize densely) - over its 128k."""
    return " ".join(str(i * 7919 % 100_000) for i in range(100_000))


def line(content: str = "Say hi.", **fields: Any) -> dict[str, Any]:
    return {"model": AUTO, "messages": [{"role": "user", "content": content}], **fields}


def parsed(obj: dict[str, Any], number: int = 1) -> Request:
    request = parse_line(number, orjson.dumps(obj), default_model=None, max_line_bytes=1 << 25)
    assert isinstance(request, Request), request
    return request


def selector(options: JobOptions | None = None, **deps_changes: Any) -> Selector:
    deps = make_deps()[0]
    for name, value in deps_changes.items():
        setattr(deps, name, value)
    return selector_for(deps, options or JobOptions(candidates=[MINI, HAIKU, FLASH]))


def chosen(request: Request) -> tuple[str, tuple[str, ...]]:
    assert request.selected_by == AUTO
    return f"{request.provider}/{request.model}", request.fallback


# ----------------------------------------------------------------------------- the parser


def test_an_auto_line_is_parsed_unbound_and_checked_for_what_every_provider_checks() -> None:
    request = parsed(line(max_tokens=5, temperature=0.5, stop=["x"]))
    assert (request.provider, request.model, request.selected_by) == (AUTO, AUTO, AUTO)
    assert request.params == {
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 5,
        "temperature": 0.5,
        "stop": ["x"],
    }
    bad = parse_line(1, orjson.dumps(line(temperature=3)), default_model=None, max_line_bytes=99)
    assert isinstance(bad, InvalidLine) and bad.field == "temperature"


def test_the_job_default_may_be_auto_but_not_for_a_native_line() -> None:
    obj = {"messages": [{"role": "user", "content": "hi"}]}
    request = parse_line(1, orjson.dumps(obj), default_model=AUTO, max_line_bytes=1 << 20)
    assert isinstance(request, Request) and request.provider == AUTO
    native = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": obj}
    refused = parse_line(1, orjson.dumps(native), default_model=AUTO, max_line_bytes=1 << 20)
    assert isinstance(refused, InvalidLine)
    assert "'auto' chooses the model of batchline lines only" in refused.reason


# -------------------------------------------------------------------------- the selection


def test_a_short_line_goes_to_the_cheapest_worst_case_and_the_rest_follow_by_cost() -> None:
    # With max_tokens 200 the input and output rates decide: gpt-4o-mini, then Gemini
    # Flash ($1.25/M output) before Claude Haiku ($2.50/M).
    assert chosen(selector().select(parsed(line(max_tokens=200)))) == (MINI, (FLASH, HAIKU))


def test_worst_case_output_counts_what_each_provider_would_be_asked_for() -> None:
    # No max_tokens: gpt-4o-mini may write 16,384 tokens ($0.0049), Gemini 65,536
    # ($0.082), while Anthropic's encoder asks for its default 1,024 ($0.0026).
    assert chosen(selector().select(parsed(line()))) == (HAIKU, (MINI, FLASH))


def test_a_long_document_goes_where_it_fits_its_context_window() -> None:
    pick = selector()
    request = pick.select(parsed(line(document(), max_tokens=1000)))
    # Over gpt-4o-mini's 128k; Claude Haiku fits (168k of 200k) but costs more than Flash.
    assert chosen(request) == (FLASH, (HAIKU,))
    verdict = pick.verdict(parsed(line(document(), max_tokens=1000)), MINI)
    assert verdict.kind == "context window"
    assert "over its context window of 128000" in verdict.reason


def test_a_line_over_a_model_s_whole_quota_goes_to_a_model_that_can_take_it() -> None:
    # No chunk of gpt-4o-mini could hold it under a 1,000-token quota: sent there, its
    # batch would fail for the quota every time.
    deps = make_deps()[0]
    quotas = parse_quotas(
        orjson.dumps({MINI: {"enqueued_tokens": 1000}}).decode(), quota_policies()
    )
    pick = selector(settings=replace(deps.settings, quotas=quotas))
    long = parsed(line("many words " * 1000, max_tokens=200))
    assert chosen(pick.select(long)) == (FLASH, (HAIKU,))
    verdict = pick.verdict(long, MINI)
    assert verdict.kind == "quota" and verdict.reason.endswith(
        "input tokens over its quota of 1000"
    )
    assert chosen(pick.select(parsed(line(max_tokens=200))))[0] == MINI  # a short one fits


def test_a_schema_gemini_refuses_leaves_gemini_out_of_the_chain() -> None:
    request = selector().select(parsed(line(max_tokens=200, response_schema=NOT_FOR_GEMINI)))
    assert chosen(request) == (MINI, (HAIKU,))
    assert request.schema is not None


def test_a_long_document_with_such_a_schema_has_one_model_left() -> None:
    request = parsed(line(document(), max_tokens=1000, response_schema=NOT_FOR_GEMINI))
    pick = selector()
    assert chosen(pick.select(request)) == (HAIKU, ())
    assert pick.chosen[HAIKU] == {
        f"cheapest of 1; ruled out: {MINI} (context window), {FLASH} (schema)": 1
    }


def test_prefer_speed_ranks_by_output_speed() -> None:
    pick = selector(JobOptions(candidates=[MINI, HAIKU, FLASH], prefer="speed"))
    # Flash ~221 tokens/s, gpt-4o-mini ~115, Haiku ~90 (pricing.py's sources).
    assert chosen(pick.select(parsed(line(max_tokens=200)))) == (FLASH, (MINI, HAIKU))
    assert list(pick.chosen[FLASH]) == ["fastest of 3"]


def test_a_line_no_candidate_can_take_is_invalid_naming_each_reason() -> None:
    request = parsed(line(temperature=0.2, response_schema=NOT_FOR_GEMINI))
    with pytest.raises(InvalidField) as caught:
        selector(JobOptions(candidates=[HAIKU, FLASH])).select(request)
    assert caught.value.field == "model"
    reason = caught.value.reason
    assert reason.startswith("'auto': no candidate can take this line (")
    assert f"{HAIKU}: temperature: Anthropic's Messages API takes no temperature" in reason
    assert f"{FLASH}: schema: " in reason and "'not'" in reason


def test_modalities_structured_output_and_batch_bytes_rule_a_candidate_out() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    request = parsed({"model": AUTO, "messages": [{"role": "user", "content": [image]}]})
    prices = dict(PRICES)
    prices[MINI] = replace(PRICES[MINI], input_modalities=frozenset({"text"}))
    verdict = selector(prices=prices).verdict(request, MINI)
    assert (verdict.kind, verdict.reason) == ("modality", "it takes no image input")
    prices[MINI] = replace(PRICES[MINI], structured_output=False)
    with_schema = parsed(line(response_schema=NOT_FOR_GEMINI))
    assert selector(prices=prices).verdict(with_schema, MINI).kind == "structured output"
    small = selector(limits=lambda _name: ChunkLimits(10, 100))
    assert small.verdict(parsed(line()), MINI).kind == "size"


def test_each_provider_reads_the_modalities_its_own_parts_ask_for() -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}},
        {"type": "image", "source": {}},
        {"type": "document", "source": {}},
        {"inlineData": {"mimeType": "image/png", "data": ""}},
        {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/o"}},
        {"type": "text", "text": "hi"},
    ]
    messages = [{"role": "user", "content": parts}, {"role": "user", "content": "text"}]
    found = {name: PROVIDERS[name].input_modalities(messages) for name in PROVIDERS}
    assert found == {name: frozenset({"image", "pdf"}) for name in PROVIDERS}
    assert PROVIDERS["openai"].input_modalities([{"content": parts[2:4]}]) == frozenset()
    assert PROVIDERS["anthropic"].input_modalities([{"content": parts[:1]}]) == frozenset()
    assert PROVIDERS["vertex"].input_modalities([{"content": parts[4:5]}]) == {"image"}
    assert PROVIDERS["vertex"].input_modalities([{"content": "text"}]) == frozenset()


def test_default_candidates_are_each_enabled_providers_cheapest_model() -> None:
    assert default_candidates(PRICES, {"openai", "anthropic", "vertex"}) == (MINI, HAIKU, FLASH)
    assert default_candidates(PRICES, {"vertex"}) == (FLASH,)
    deps = make_deps()[0]
    deps.settings = replace(deps.settings, auto_candidates=(FLASH,))
    assert selector_for(deps, JobOptions()).candidates == (FLASH,)
    assert selector_for(deps, JobOptions(candidates=[MINI])).candidates == (MINI,)


# ------------------------------------------------------------------------------ options


def test_the_deployments_candidates_come_from_the_environment_and_are_checked() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "p",
        "BATCHLINE_INPUT_BUCKET": "i",
        "BATCHLINE_OUTPUT_BUCKET": "o",
        "BATCHLINE_WORK_BUCKET": "w",
        "BATCHLINE_AUTO_CANDIDATES": f" {FLASH}, {HAIKU} ",
    }
    settings = Settings.from_env(env)
    assert settings.auto_candidates == (FLASH, HAIKU)
    check_auto_candidates(settings.auto_candidates)
    with pytest.raises(ConfigError, match=r"BATCHLINE_AUTO_CANDIDATES: 'gpt-4\.1': expected"):
        check_auto_candidates(("gpt-4.1",))
    with pytest.raises(ConfigError, match="'auto': not a model to choose"):
        check_auto_candidates((AUTO,))


def test_candidates_and_prefer_come_from_metadata_and_the_api() -> None:
    options = from_metadata({"model": "auto", "candidates": f"{MINI}, {FLASH}", "prefer": "speed"})
    assert (options.model, options.candidates, options.prefer) == (AUTO, [MINI, FLASH], "speed")
    options = from_api({"model": "auto", "candidates": [HAIKU], "prefer": "cost"})
    assert (options.model, options.candidates, options.prefer) == (AUTO, [HAIKU], "cost")


@pytest.mark.parametrize(
    ("options", "option", "message"),
    [
        ({"candidates": ["openai/gpt-9"]}, "candidates", "unknown model 'openai/gpt-9'"),
        ({"candidates": ["azure/gpt-4.1"]}, "candidates", "unknown provider 'azure'"),
        ({"candidates": [AUTO]}, "candidates", "'auto' is not a model to choose"),
        ({"candidates": MINI}, "candidates", "expected a non-empty list"),
        ({"candidates": [MINI, MINI]}, "candidates", "listed twice"),
        ({"prefer": "fast"}, "prefer", "expected one of 'cost', 'speed', got 'fast'"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], option: str, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        from_api(options)
    assert caught.value.option == option
    assert message in caught.value.reason


def test_a_candidate_added_by_the_price_override_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCHLINE_PRICES", '{"openai/gpt-9": [1, 2]}')
    assert from_metadata({"candidates": "openai/gpt-9"}).candidates == ["openai/gpt-9"]


# ----------------------------------------------------------------------------- planning


def auto_file() -> bytes:
    lines = [
        line(max_tokens=200, custom_id="short"),
        line(document(), max_tokens=1000, custom_id="document"),
        line(max_tokens=200, response_schema=NOT_FOR_GEMINI, custom_id="schema"),
        line(document(), max_tokens=1000, response_schema=NOT_FOR_GEMINI, custom_id="both"),
        # Anthropic takes no temperature, OpenAI at most 4 stops, Gemini no `not`.
        line(
            temperature=0.2,
            stop=["a", "b", "c", "d", "e"],
            response_schema=NOT_FOR_GEMINI,
            custom_id="none",
        ),
    ]
    return b"".join(orjson.dumps(obj) + b"\n" for obj in lines)


#: What the rules say of `auto_file`'s lines: (model, fallback) by line number.
EXPECTED = {1: (MINI, (FLASH, HAIKU)), 2: (FLASH, (HAIKU,)), 3: (MINI, (HAIKU,)), 4: (HAIKU, ())}


def test_planning_binds_each_auto_line_to_its_model_and_stores_its_chain() -> None:
    deps = make_deps()[0]
    planned = plan_file(deps, auto_file(), JobOptions(candidates=[HAIKU, FLASH, MINI]))
    by_line = {}
    for chunk in planned.plan.chunks:
        assert chunk.requests_uri is not None
        rows = deps.blobs.read_bytes(chunk.requests_uri).splitlines()
        for stored in iter_stored(rows, chunk.requests_uri):
            assert stored.selected_by == AUTO
            by_line[stored.line] = (f"{chunk.provider}/{chunk.model}", stored.fallback)
        manifest = deps.blobs.read_bytes(chunk.manifest_uri).splitlines()
        assert {orjson.loads(row).get("selected_by") for row in manifest} == {AUTO}
    assert by_line == EXPECTED
    # plan.json's estimate (summary.json's) counts the choices per model, and why.
    auto = {c["model"]: c for c in planned.plan.record().estimate["auto"]}  # type: ignore[index]
    assert {model: c["requests"] for model, c in auto.items()} == {MINI: 2, FLASH: 1, HAIKU: 1}
    assert auto[FLASH]["reasons"] == {f"cheapest of 2; ruled out: {MINI} (context window)": 1}
    assert list(planned.invalid) == [5]
    error = planned.invalid[5]["error"]
    assert isinstance(error, dict)
    assert error["field"] == "model"
    assert f"{MINI}: stop: OpenAI takes at most 4 stop sequences" in error["message"]
