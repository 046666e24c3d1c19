"""The price table, what a line's usage costs, model ids with dates, and BATCHLINE_PRICES."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batchline.config import Settings
from batchline.domain.pricing import (
    MODALITIES,
    PRICES,
    PRICES_AS_OF,
    LineCost,
    Price,
    cost,
    load_prices,
    price_for,
)
from batchline.errors import ConfigError

from .fakes import make_deps

# PROVIDERS.md: batch input/output per 1M tokens.
PUBLISHED = {
    "openai/gpt-4.1": (1.00, 4.00),
    "openai/gpt-4.1-mini": (0.20, 0.80),
    "openai/gpt-4o-mini": (0.075, 0.30),
    "anthropic/claude-sonnet-4-5": (1.50, 7.50),
    "anthropic/claude-haiku-4-5": (0.50, 2.50),
    "vertex/gemini-2.5-flash": (0.15, 1.25),
    "vertex/gemini-2.5-pro": (0.625, 5.00),
}
M = 1_000_000


def test_the_table_holds_the_published_batch_prices_and_twice_them_in_real_time() -> None:
    assert PRICES_AS_OF == "2026-06-01"
    assert set(PRICES) == set(PUBLISHED)
    for key, (batch_in, batch_out) in PUBLISHED.items():
        price = PRICES[key]
        assert (price.input, price.output) == (batch_in, batch_out), key
        assert price.realtime_input == pytest.approx(2 * batch_in), key
        assert price.realtime_output == pytest.approx(2 * batch_out), key
        assert price.max_output_tokens and price.max_output_tokens >= 16_384, key


@pytest.mark.parametrize(
    ("key", "cached", "realtime_cached"),
    [
        ("openai/gpt-4.1", 0.25, 0.50),  # 25% of input, batch discount too
        ("openai/gpt-4.1-mini", 0.05, 0.10),
        ("openai/gpt-4o-mini", 0.0375, 0.075),  # 50% of input
        ("anthropic/claude-sonnet-4-5", 0.15, 0.30),  # cache reads: 10% of input
        ("anthropic/claude-haiku-4-5", 0.05, 0.10),
        ("vertex/gemini-2.5-flash", 0.03, 0.03),  # 10% of real-time input; no stacking
        ("vertex/gemini-2.5-pro", 0.125, 0.125),
    ],
)
def test_cached_input_prices(key: str, cached: float, realtime_cached: float) -> None:
    assert PRICES[key].cached_input == pytest.approx(cached)
    assert PRICES[key].realtime_cached_input == pytest.approx(realtime_cached)


def _cost(key: str, usage: dict[str, int]) -> LineCost:
    provider, _, model = key.partition("/")
    price = price_for(PRICES, provider, model)
    assert price is not None
    return cost(price, usage)


@pytest.mark.parametrize(
    ("key", "usage", "batch", "realtime"),
    [
        # 600k fresh x $1 + 400k cached x $0.25 + 100k out x $4
        (
            "openai/gpt-4.1",
            {"input_tokens": M, "cached_input_tokens": 400_000, "output_tokens": 100_000},
            0.6 + 0.1 + 0.4,
            1.2 + 0.2 + 0.8,
        ),
        (
            "openai/gpt-4o-mini",
            {"input_tokens": 2 * M, "cached_input_tokens": M, "output_tokens": M},
            0.075 + 0.0375 + 0.30,
            0.15 + 0.075 + 0.60,
        ),
        (
            "anthropic/claude-haiku-4-5",
            {"input_tokens": M, "cached_input_tokens": 500_000, "output_tokens": 200_000},
            0.25 + 0.025 + 0.5,
            0.5 + 0.05 + 1.0,
        ),
        # 200k fresh x $0.50 + 300k read x $0.05 + 500k written x $0.625 + 0 out
        (
            "anthropic/claude-haiku-4-5",
            {
                "input_tokens": M,
                "cached_input_tokens": 300_000,
                "cache_write_input_tokens": 500_000,
                "output_tokens": 0,
            },
            0.1 + 0.015 + 0.3125,
            0.2 + 0.03 + 0.625,
        ),
        # 500k written, 200k of them to the 1-hour cache: 300k x $0.625 + 200k x $1.00
        (
            "anthropic/claude-haiku-4-5",
            {
                "input_tokens": 500_000,
                "cache_write_input_tokens": 500_000,
                "cache_write_1h_input_tokens": 200_000,
                "output_tokens": 0,
            },
            0.1875 + 0.2,
            0.375 + 0.4,
        ),
        (
            "anthropic/claude-sonnet-4-5",
            {"input_tokens": 10_000, "output_tokens": 1_000},
            0.015 + 0.0075,
            0.03 + 0.015,
        ),
        (
            "vertex/gemini-2.5-flash",
            {"input_tokens": M, "cached_input_tokens": M, "output_tokens": 0},
            0.03,
            0.03,
        ),
        (
            "vertex/gemini-2.5-flash",
            {"input_tokens": M, "output_tokens": M},
            0.15 + 1.25,
            0.30 + 2.50,
        ),
        (
            "vertex/gemini-2.5-pro",
            {"input_tokens": 200_000, "cached_input_tokens": 100_000, "output_tokens": 100_000},
            0.0625 + 0.0125 + 0.5,
            0.125 + 0.0125 + 1.0,
        ),
        # Over 200k tokens of prompt: every token at the long-context tier, $2.50/$15 real
        # time, cached at 10% of that input rate with no batch discount.
        (
            "vertex/gemini-2.5-pro",
            {"input_tokens": M, "cached_input_tokens": 500_000, "output_tokens": 100_000},
            0.625 + 0.125 + 0.75,
            1.25 + 0.125 + 1.5,
        ),
    ],
)
def test_cost_by_hand(key: str, usage: dict[str, int], batch: float, realtime: float) -> None:
    line = _cost(key, usage)
    assert line.batch_usd == pytest.approx(batch)
    assert line.realtime_usd == pytest.approx(realtime)


def test_cached_tokens_beyond_the_input_count_as_input_and_no_usage_costs_nothing() -> None:
    price = PRICES["openai/gpt-4.1"]
    over = cost(price, {"input_tokens": 100, "cached_input_tokens": 500, "output_tokens": 0})
    assert over == cost(price, {"input_tokens": 100, "cached_input_tokens": 100})
    assert cost(price, {}) == LineCost(0.0, 0.0)


def test_a_model_without_cache_rates_prices_cached_and_written_tokens_as_input() -> None:
    price = Price.from_batch(1.0, 2.0)
    usage = {"input_tokens": M, "cached_input_tokens": M, "output_tokens": 0}
    assert cost(price, usage) == LineCost(1.0, 2.0)
    usage = {"input_tokens": M, "cache_write_input_tokens": M, "output_tokens": 0}
    assert cost(price, usage) == LineCost(1.0, 2.0)


def test_only_gemini_pro_has_a_long_context_tier_and_it_starts_above_200k() -> None:
    assert [k for k, p in PRICES.items() if p.long_context] == ["vertex/gemini-2.5-pro"]
    pro = PRICES["vertex/gemini-2.5-pro"]
    assert pro.long_context is not None
    assert pro.for_input(200_000) is pro
    assert pro.for_input(200_001) is pro.long_context.price
    # An override replaces the whole entry, long tier included.
    overridden = load_prices('{"vertex/gemini-2.5-pro": {"input": 0.5, "output": 4}}')
    assert overridden["vertex/gemini-2.5-pro"].long_context is None


def test_cache_writes_cost_125_or_200_percent_of_input_on_anthropic_only() -> None:
    for key, price in PRICES.items():
        if key.startswith("anthropic/"):
            assert price.cache_write_input == pytest.approx(1.25 * price.input), key
            assert price.realtime_cache_write_input == pytest.approx(2.5 * price.input), key
            assert price.cache_write_1h_input == pytest.approx(2 * price.input), key
            assert price.realtime_cache_write_1h_input == pytest.approx(4 * price.input), key
        else:
            assert price.cache_write_input is None, key
            assert price.cache_write_1h_input is None, key
    price = PRICES["anthropic/claude-haiku-4-5"]
    # Written tokens beyond what is left of the input after the cached ones count as input.
    over = {"input_tokens": 100, "cached_input_tokens": 60, "cache_write_input_tokens": 90}
    assert cost(price, over) == cost(price, {**over, "cache_write_input_tokens": 40})
    # And 1-hour writes beyond the writes count as 1-hour writes of what was written.
    hour = {"input_tokens": 100, "cache_write_input_tokens": 40}
    assert cost(price, {**hour, "cache_write_1h_input_tokens": 90}) == cost(
        price, {**hour, "cache_write_1h_input_tokens": 40}
    )


def test_without_a_1h_rate_1h_writes_cost_the_cache_write_rate() -> None:
    price = Price.from_batch(1.0, 2.0, cache_write_input=1.25)
    usage = {"input_tokens": M, "cache_write_input_tokens": M, "cache_write_1h_input_tokens": M}
    assert cost(price, usage) == LineCost(1.25, 2.5)


@pytest.mark.parametrize(
    ("provider", "model", "key"),
    [
        ("openai", "gpt-4.1", "openai/gpt-4.1"),
        ("openai", "gpt-4.1-2025-04-14", "openai/gpt-4.1"),
        ("openai", "gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"),
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("anthropic", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5"),
        ("anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
        ("anthropic", "claude-sonnet-4-5@20250929", "anthropic/claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5-latest", "anthropic/claude-haiku-4-5"),
        ("vertex", "gemini-2.5-flash-001", "vertex/gemini-2.5-flash"),
        ("vertex", "publishers/google/models/gemini-2.5-pro", "vertex/gemini-2.5-pro"),
    ],
)
def test_dated_model_ids_take_their_base_models_price(provider: str, model: str, key: str) -> None:
    assert price_for(PRICES, provider, model) is PRICES[key]


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4.1-nano"),  # not gpt-4.1
        ("openai", "gpt-4.1-nano-2025-04-14"),
        ("openai", "gpt-4o"),  # not gpt-4o-mini
        ("openai", "gpt-5"),
        ("openai", "gpt-4.1-mini-2025-04-14-preview"),
        ("vertex", "gemini-2.5-flash-lite"),  # not gemini-2.5-flash
        ("vertex", "gemini-2.5-flash-preview-09-2025"),
        ("anthropic", "gpt-4.1"),  # another provider's model
        ("openai", "claude-haiku-4-5"),
        ("anthropic", "claude-haiku-4"),
        ("openai", "-2025-04-14"),
    ],
)
def test_unknown_models_have_no_price(provider: str, model: str) -> None:
    assert price_for(PRICES, provider, model) is None


def test_an_exact_entry_for_a_dated_id_wins() -> None:
    dated = Price.from_batch(9.0, 9.0)
    prices = {**PRICES, "openai/gpt-4.1-2025-04-14": dated}
    assert price_for(prices, "openai", "gpt-4.1-2025-04-14") is dated
    assert price_for(prices, "openai", "gpt-4.1") is PRICES["openai/gpt-4.1"]


# --------------------------------------------------------------------------- overrides


def test_no_override_is_the_table() -> None:
    for raw in (None, "", "  "):
        prices = load_prices(raw)
        assert prices == PRICES and prices is not PRICES


def test_an_override_replaces_an_entry_and_fills_in_real_time_at_twice_batch() -> None:
    prices = load_prices(
        '{"openai/gpt-4.1": {"input": 0.9, "output": 3.6, "cached_input": 0.2},'
        ' "openai/gpt-5": {"input": 0.625, "output": 5, "realtime_output": 9.5,'
        ' "max_output_tokens": 128000}}'
    )
    assert prices["openai/gpt-4.1"] == Price(
        input=0.9,
        output=3.6,
        cached_input=0.2,
        realtime_input=1.8,
        realtime_output=7.2,
        realtime_cached_input=0.4,
        # the table's capabilities: model properties, not prices
        max_output_tokens=32_768,
        context_window=1_047_576,
        input_modalities=MODALITIES,
        structured_output=True,
    )
    gpt5 = prices["openai/gpt-5"]
    assert (gpt5.realtime_input, gpt5.realtime_output) == (1.25, 9.5)
    assert gpt5.cached_input is None and gpt5.realtime_cached_input is None
    assert gpt5.max_output_tokens == 128_000
    assert prices["anthropic/claude-haiku-4-5"] is PRICES["anthropic/claude-haiku-4-5"]


def test_an_override_sets_every_rate() -> None:
    prices = load_prices(
        '{"vertex/gemini-2.5-flash": {"input": 0.1, "output": 1, "cached_input": 0.02,'
        ' "realtime_input": 0.3, "realtime_output": 2.5, "realtime_cached_input": 0.03,'
        ' "max_output_tokens": null}}'
    )
    assert prices["vertex/gemini-2.5-flash"] == replace(
        Price(0.1, 1.0, 0.02, 0.3, 2.5, 0.03, None),
        context_window=1_048_576,
        input_modalities=MODALITIES,
        structured_output=True,
        tokens_per_second=221,
    )
    prices = load_prices(
        '{"anthropic/claude-opus-4-1": {"input": 7.5, "output": 37.5, "cache_write_input":'
        ' 9.375}, "anthropic/claude-haiku-4-5": {"input": 0.5, "output": 2.5,'
        ' "cache_write_input": 0.625, "realtime_cache_write_input": 1.3}}'
    )
    assert prices["anthropic/claude-opus-4-1"].cache_write_1h_input is None
    prices = load_prices(
        '{"anthropic/claude-opus-4-1": {"input": 7.5, "output": 37.5, "cache_write_input":'
        ' 9.375, "cache_write_1h_input": 15}, "anthropic/claude-haiku-4-5": {"input": 0.5,'
        ' "output": 2.5, "cache_write_input": 0.625, "realtime_cache_write_input": 1.3}}'
    )
    opus = prices["anthropic/claude-opus-4-1"]
    assert (opus.cache_write_1h_input, opus.realtime_cache_write_1h_input) == (15.0, 30.0)
    assert (opus.cache_write_input, opus.realtime_cache_write_input) == (9.375, 18.75)
    haiku = prices["anthropic/claude-haiku-4-5"]
    assert (haiku.cache_write_input, haiku.realtime_cache_write_input) == (0.625, 1.3)


def test_the_older_input_output_pair_still_works() -> None:
    prices = load_prices('{"anthropic/claude-haiku-4-5": [0.4, 2], "openai/gpt-x": [1, 2]}')
    assert prices["anthropic/claude-haiku-4-5"] == replace(
        Price(0.4, 2.0, None, 0.8, 4.0, None, 64_000),
        context_window=200_000,
        input_modalities=MODALITIES,
        structured_output=True,
        tokens_per_second=90,
    )
    assert prices["openai/gpt-x"] == Price(1.0, 2.0, None, 2.0, 4.0, None, None)


def test_every_model_in_the_table_has_its_capabilities() -> None:
    for key, price in PRICES.items():
        assert price.context_window and price.context_window > price.max_output_tokens, key
        assert price.input_modalities == MODALITIES, key
        assert price.structured_output is True, key
    assert PRICES["openai/gpt-4o-mini"].context_window == 128_000
    assert PRICES["anthropic/claude-haiku-4-5"].context_window == 200_000
    assert PRICES["vertex/gemini-2.5-flash"].context_window == 1_048_576


def test_an_override_sets_capabilities_and_keeps_the_ones_it_leaves_out() -> None:
    prices = load_prices(
        '{"openai/gpt-4o-mini": {"input": 0.1, "output": 0.4, "context_window": 64000,'
        ' "input_modalities": ["image"]},'
        ' "openai/gpt-5-nano": {"input": 0.025, "output": 0.2, "structured_output": false,'
        ' "tokens_per_second": 150}}'
    )
    mini = prices["openai/gpt-4o-mini"]
    assert (mini.input, mini.context_window) == (0.1, 64_000)
    assert mini.input_modalities == frozenset({"text", "image"})  # text always
    assert (mini.max_output_tokens, mini.structured_output) == (16_384, True)  # the table's
    nano = prices["openai/gpt-5-nano"]
    assert (nano.structured_output, nano.tokens_per_second) == (False, 150.0)
    assert nano.context_window is None and nano.input_modalities is None  # unknown


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "BATCHLINE_PRICES is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"gpt-4.1": [1, 2]}', "'gpt-4.1' is not provider/model"),
        ('{"azure/gpt-4.1": [1, 2]}', "'azure/gpt-4.1' is not provider/model"),
        ('{"openai/": [1, 2]}', "'openai/' is not provider/model"),
        ('{"openai/gpt-4.1": [1, 2, 3]}', "['openai/gpt-4.1']: expected [input, output], got 3"),
        ('{"openai/gpt-4.1": ["1", 2]}', "['openai/gpt-4.1'][0] (input): expected USD"),
        ('{"openai/gpt-4.1": 1.5}', "['openai/gpt-4.1']: expected an object"),
        ('{"openai/gpt-4.1": {"input": 1}}', "['openai/gpt-4.1']: output is required"),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "cache_input": 1}}',
            "['openai/gpt-4.1']: unknown field 'cache_input'",
        ),
        (
            '{"openai/gpt-4.1": {"input": -1, "output": 2}}',
            "['openai/gpt-4.1'].input: expected a finite number >= 0, got -1",
        ),
        (
            '{"anthropic/claude-haiku-4-5": {"input": 1, "output": true}}',
            "['anthropic/claude-haiku-4-5'].output: expected USD per 1M tokens",
        ),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "realtime_cached_input": "x"}}',
            "['openai/gpt-4.1'].realtime_cached_input: expected USD",
        ),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "max_output_tokens": 0}}',
            "['openai/gpt-4.1'].max_output_tokens: expected a whole number",
        ),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "max_output_tokens": 1.5}}',
            "['openai/gpt-4.1'].max_output_tokens: expected a whole number",
        ),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "context_window": "1M"}}',
            "['openai/gpt-4.1'].context_window: expected a whole number",
        ),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "input_modalities": ["audio"]}}',
            "['openai/gpt-4.1'].input_modalities: unknown modality 'audio'",
        ),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "structured_output": "yes"}}',
            "['openai/gpt-4.1'].structured_output: expected true or false",
        ),
        (
            '{"openai/gpt-4.1": {"input": 1, "output": 2, "tokens_per_second": 0}}',
            "['openai/gpt-4.1'].tokens_per_second: expected tokens per second",
        ),
    ],
)
def test_bad_overrides_name_the_model_and_the_field(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_prices(raw)
    assert message in str(caught.value)


def test_settings_carry_the_override_to_the_deps() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "p",
        "BATCHLINE_INPUT_BUCKET": "i",
        "BATCHLINE_OUTPUT_BUCKET": "o",
        "BATCHLINE_WORK_BUCKET": "w",
    }
    assert Settings.from_env(env).prices_json is None
    raw = '{"openai/gpt-4.1": [0.5, 2]}'
    settings = Settings.from_env({**env, "BATCHLINE_PRICES": raw})
    assert settings.prices_json == raw
    assert load_prices(settings.prices_json)["openai/gpt-4.1"].input == 0.5
    deps, _, _ = make_deps()
    assert deps.prices == PRICES and deps.prices is not PRICES
