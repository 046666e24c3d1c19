"""The provider registry and the Anthropic settings."""

from __future__ import annotations

import orjson
import pytest

from batchline.bootstrap import default_providers
from batchline.config import Settings
from batchline.domain.providers import anthropic
from batchline.domain.providers.registry import KNOWN_PROVIDERS
from batchline.domain.requests import Request, parse_line
from batchline.errors import ConfigError

from .fakes import make_deps

MESSAGE = {"role": "user", "content": "x"}


def test_the_registry_runs_every_enabled_provider() -> None:
    settings = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": "p",
            "BATCHLINE_INPUT_BUCKET": "i",
            "BATCHLINE_OUTPUT_BUCKET": "o",
            "BATCHLINE_WORK_BUCKET": "w",
            "ANTHROPIC_API_KEY": "k",
            "BATCHLINE_ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
            "BATCHLINE_ANTHROPIC_MAX_REQUESTS": "10",
            "BATCHLINE_ANTHROPIC_MAX_BYTES": "5000",
            "BATCHLINE_ANTHROPIC_MAX_TOKENS": "64",
        }
    )
    deps, _, _ = make_deps()
    deps.settings = settings
    limits = deps.limits("anthropic")
    assert (limits.max_requests, limits.max_bytes) == (10, 5000)
    assert limits.envelope_bytes == anthropic.ENVELOPE_BYTES
    assert deps.limits("openai").envelope_bytes == 0
    request = parse_line(
        1,
        orjson.dumps({"model": "anthropic/claude-haiku-4-5", "messages": [MESSAGE]}),
        default_model=None,
        max_line_bytes=1000,
    )
    assert isinstance(request, Request)
    encoded = deps.encoder("anthropic")(request)
    assert encoded["params"]["max_tokens"] == 64
    assert settings.enabled_providers == KNOWN_PROVIDERS  # unset: every known provider
    clients = default_providers(settings, deps.blobs)
    client = clients.get("anthropic")
    assert client.name == "anthropic" and clients.get("anthropic") is client


def test_default_settings_stay_under_anthropic_limits() -> None:
    settings = Settings(project="p", input_bucket="i", output_bucket="o", work_bucket="w")
    block = settings.provider("anthropic")
    assert block.limits.max_requests == 95_000
    assert block.limits.max_bytes == 243_200_000
    assert block.max_tokens == 1024


def test_a_max_tokens_default_below_one_is_a_config_error() -> None:
    env = {
        "GOOGLE_CLOUD_PROJECT": "p",
        "BATCHLINE_INPUT_BUCKET": "i",
        "BATCHLINE_OUTPUT_BUCKET": "o",
        "BATCHLINE_WORK_BUCKET": "w",
        "BATCHLINE_ANTHROPIC_MAX_TOKENS": "0",
    }
    with pytest.raises(ConfigError, match="BATCHLINE_ANTHROPIC_MAX_TOKENS"):
        Settings.from_env(env)
