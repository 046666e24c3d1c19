"""BATCHLINE_QUOTAS and the quota units (`domain/quotas.py`): parsing with errors that
name the key, each provider's defaults from its descriptor, what a chunk costs, and the
limits a quota cuts."""

from __future__ import annotations

import pytest

from batchline.config import Settings, quota_policies
from batchline.domain.models import Chunk
from batchline.domain.providers.base import ChunkLimits
from batchline.domain.quotas import QuotaUnit, amount, backoff, parse_quotas
from batchline.errors import ConfigError

EXAMPLE = (
    '{"openai/gpt-4.1-mini": {"enqueued_tokens": 2000000}, "anthropic": {"queued_requests":'
    ' 100000}, "vertex/gemini-2.5-flash": {"concurrent_jobs": 4}, "openai": {"enqueued_tokens": 5}}'
)


def test_a_model_entry_then_its_provider_s_then_the_default() -> None:
    quotas = parse_quotas(EXAMPLE, quota_policies())
    mini = quotas.for_model("openai", "gpt-4.1-mini")
    assert (mini.key, mini.unit, mini.limit) == (
        "openai/gpt-4.1-mini",
        "enqueued_tokens",
        2_000_000,
    )
    assert quotas.for_model("openai", "gpt-4o").limit == 5  # the provider's entry
    flash = quotas.for_model("vertex", "gemini-2.5-flash")
    assert (flash.key, flash.limit) == ("vertex/gemini-2.5-flash", 4)
    assert quotas.for_model("vertex", "gemini-2.5-pro").limit == 4  # the default
    # Anthropic's models share one queue: one pool for all of them.
    assert quotas.for_model("anthropic", "claude-a").key == "anthropic"
    assert quotas.for_model("anthropic", "claude-b").limit == 100_000


def test_unset_means_the_lowest_paid_tier() -> None:
    quotas = parse_quotas(None, quota_policies())
    assert quotas.for_model("openai", "gpt-4o-mini").limit == 2_000_000
    assert quotas.for_model("openai", "gpt-4.1").limit == 900_000
    assert quotas.for_model("openai", "some-new-model").limit == 90_000  # the lowest
    assert quotas.for_model("anthropic", "claude-sonnet-4-5").limit == 100_000
    assert quotas.for_model("vertex", "gemini-2.5-flash").limit == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "BATCHLINE_QUOTAS is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"cohere": {"queued_requests": 1}}', "BATCHLINE_QUOTAS['cohere']: unknown provider"),
        (
            '{"openai": {"queued_requests": 1}}',
            "BATCHLINE_QUOTAS['openai']: must be {'enqueued_tokens': n}",
        ),
        (
            '{"anthropic/claude-x": {"queued_requests": 1}}',
            "BATCHLINE_QUOTAS['anthropic/claude-x']: anthropic's models share one quota",
        ),
        ('{"openai/": {"enqueued_tokens": 1}}', "no model after the '/'"),
        ('{"vertex": {"concurrent_jobs": 0}}', "concurrent_jobs must be a whole number >= 1"),
        ('{"vertex": {"concurrent_jobs": 2.5}}', "must be a whole number >= 1, not 2.5"),
        ('{"vertex": {"concurrent_jobs": true}}', "must be a whole number >= 1, not True"),
        ('{"vertex": 4}', "BATCHLINE_QUOTAS['vertex']: must be {'concurrent_jobs': n}"),
    ],
)
def test_a_bad_quota_is_refused_naming_its_key(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_quotas(raw, quota_policies())
    assert message in str(error.value)


def test_settings_read_the_quotas_from_the_environment() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "p",
        "BATCHLINE_INPUT_BUCKET": "i",
        "BATCHLINE_OUTPUT_BUCKET": "o",
        "BATCHLINE_WORK_BUCKET": "w",
        "BATCHLINE_QUOTAS": EXAMPLE,
        "BATCHLINE_QUOTA_BACKOFF_SECONDS": "5",
        "BATCHLINE_QUOTA_WAIT_SECONDS": "90",
    }
    settings = Settings.from_env(env)
    assert settings.quotas.for_model("openai", "gpt-4.1-mini").limit == 2_000_000
    assert (settings.quota_backoff_seconds, settings.quota_wait_seconds) == (5, 90)
    with pytest.raises(ConfigError, match="BATCHLINE_QUOTAS"):
        Settings.from_env({**env, "BATCHLINE_QUOTAS": '{"x": {}}'})


def chunk(**changes: object) -> Chunk:
    base = Chunk("j", 0, "openai", "m", 7, 3000, "gs://w/p", "gs://w/m")
    return Chunk(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_what_a_chunk_costs_in_each_unit() -> None:
    assert QuotaUnit.ENQUEUED_TOKENS.cost(chunk(input_tokens=1234)) == 1234
    # Not counted (a repair round's): a token per 3 payload bytes, more than its prompt.
    assert QuotaUnit.ENQUEUED_TOKENS.cost(chunk()) == 1000
    assert QuotaUnit.QUEUED_REQUESTS.cost(chunk()) == 7
    assert QuotaUnit.CONCURRENT_JOBS.cost(chunk()) == 1


def test_a_quota_cuts_the_chunk_limits_in_its_unit() -> None:
    limits = ChunkLimits(50_000, 200_000_000, 10)
    assert QuotaUnit.ENQUEUED_TOKENS.narrow(limits, 2_000_000) == ChunkLimits(
        50_000, 200_000_000, 10, 2_000_000
    )
    assert QuotaUnit.QUEUED_REQUESTS.narrow(limits, 1000) == ChunkLimits(1000, 200_000_000, 10)
    assert QuotaUnit.QUEUED_REQUESTS.narrow(limits, 10**6) == limits
    assert QuotaUnit.CONCURRENT_JOBS.narrow(limits, 1) == limits


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, 60, 1800) for n in range(1, 8)] == [60, 120, 240, 480, 960, 1800, 1800]


@pytest.mark.parametrize(
    ("n", "shown"),
    [(12, "12"), (950_000, "950k"), (38_200_000, "38.2M"), (40_000_000, "40M"), (2 * 10**9, "2G")],
)
def test_amounts_read_short(n: int, shown: str) -> None:
    assert amount(n) == shown


def test_a_later_round_s_requests_are_counted_and_cut_to_the_quota_too() -> None:
    from batchline.domain.estimate import estimate_input_tokens
    from batchline.domain.planning import ChunkPlanner

    quotas = parse_quotas('{"openai/gpt-4o-mini": {"enqueued_tokens": 20}}', quota_policies())
    planner = ChunkPlanner(
        lambda _: ChunkLimits(1000, 10_000_000),
        lambda _: lambda r: {},
        narrow=quotas.narrow,
        count=estimate_input_tokens,
    )
    encoded = (
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":'
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}\n'
    )
    full = [
        planner.add_encoded("openai", "gpt-4o-mini", n, encoded, b"{}\n", b"") for n in range(5)
    ]
    cut = [c for c in full if c is not None] + planner.finish()
    assert [(c.request_count, c.input_tokens) for c in cut] == [(2, 16), (2, 16), (1, 8)]
