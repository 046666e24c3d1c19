import io

import orjson
import pytest

from batchline.domain.planning import (
    ChunkPlanner,
    RequestTooLarge,
    SinkFailed,
    UnencodableRequest,
)
from batchline.domain.providers import anthropic, openai
from batchline.domain.providers.base import ChunkLimits
from batchline.domain.requests import Request, parse_line


def request(line: int, model: str = "gpt-4o-mini", text: str = "hello") -> Request:
    return Request(
        line, f"id{line}", "openai", model, params={"messages": [{"role": "user", "content": text}]}
    )


def planner(max_requests: int = 3, max_bytes: int = 10_000) -> ChunkPlanner:
    return ChunkPlanner(
        lambda _: ChunkLimits(max_requests, max_bytes), lambda _: openai.encode_line
    )


def test_chunks_cut_at_request_limit_per_model() -> None:
    p = planner(max_requests=2)
    full = [p.add(request(n, model="a" if n % 2 else "b")) for n in range(1, 8)]
    done = [c for c in full if c is not None] + p.finish()
    assert [(c.model, c.request_count) for c in done] == [("a", 2), ("b", 2), ("a", 2), ("b", 1)]
    manifest_lines = [
        orjson.loads(x)["line"] for c in done for x in c.manifest.getvalue().splitlines()
    ]
    assert sorted(manifest_lines) == list(range(1, 8))


def test_chunks_cut_at_byte_limit_and_never_exceed_it() -> None:
    size = len(openai.encode(request(1)))
    p = planner(max_requests=100, max_bytes=size * 3 + 1)
    done = [c for n in range(1, 11) if (c := p.add(request(n))) is not None] + p.finish()
    assert [c.request_count for c in done] == [3, 3, 3, 1]
    assert all(c.payload_bytes <= size * 3 + 1 for c in done)


def test_single_request_over_byte_limit_is_refused() -> None:
    with pytest.raises(RequestTooLarge):
        planner(max_bytes=50).add(request(1, text="x" * 100))


def test_encoded_line_uses_batchline_id_and_chat_endpoint() -> None:
    line = orjson.loads(
        openai.encode(
            Request(
                42,
                "user/id ü",
                "openai",
                "gpt-4.1",
                params={
                    "messages": [{"role": "user", "content": "q"}],
                    "system": "s",
                    "max_tokens": 9,
                    "temperature": 0,
                },
            )
        )
    )
    assert line == {
        "custom_id": "bl-42",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4.1",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
            "max_completion_tokens": 9,
            "temperature": 0,
        },
    }


def test_the_byte_limit_counts_the_provider_envelope() -> None:
    """Anthropic's limit is on the request body: the payload plus its {"requests":[...]}."""
    encode = anthropic.make_line_encoder(100)

    def anthropic_request(line: int) -> Request:
        messages = [{"role": "user", "content": "hello"}]
        return Request(line, None, "anthropic", "claude-haiku-4-5", params={"messages": messages})

    size = len(anthropic.encode(anthropic_request(1), 100))
    body_limit = 3 * size + anthropic.ENVELOPE_BYTES
    limits = ChunkLimits(100, body_limit, envelope_bytes=anthropic.ENVELOPE_BYTES)
    p = ChunkPlanner(lambda _: limits, lambda _: encode)
    done = [c for n in range(1, 8) if (c := p.add(anthropic_request(n))) is not None] + p.finish()
    assert [c.request_count for c in done] == [3, 3, 1]
    for chunk in done:
        body = b"".join(anthropic.request_body(chunk.payload.getvalue()))
        assert len(body) <= body_limit
    tight = ChunkLimits(100, body_limit - 1, envelope_bytes=anthropic.ENVELOPE_BYTES)
    p = ChunkPlanner(lambda _: tight, lambda _: encode)
    done = [c for n in range(1, 8) if (c := p.add(anthropic_request(n))) is not None] + p.finish()
    assert [c.request_count for c in done] == [2, 2, 2, 1]
    with pytest.raises(RequestTooLarge):
        ChunkPlanner(
            lambda _: ChunkLimits(
                100, size + anthropic.ENVELOPE_BYTES - 1, anthropic.ENVELOPE_BYTES
            ),
            lambda _: encode,
        ).add(anthropic_request(1))


def deep(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def native_line(body: dict[str, object]) -> bytes:
    line = {"custom_id": "n", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return orjson.dumps(line)


def parse_native(raw: bytes) -> Request:
    parsed = parse_line(1, raw, default_model=None, max_line_bytes=1 << 20)
    assert isinstance(parsed, Request), parsed
    return parsed


def test_a_request_nested_too_deep_to_encode_is_refused_and_leaves_the_planner_unchanged() -> None:
    seen: list[int] = []
    p = ChunkPlanner(
        lambda _: ChunkLimits(10, 10_000_000),
        lambda _: openai.encode_line,
        lambda request, _line: seen.append(request.line),
    )
    assert p.add(request(1)) is None
    too_deep = request(2, text="x")
    assert too_deep.params is not None
    too_deep.params["messages"][0]["content"] = [{"type": "text", "text": "a", "x": deep(300)}]
    with pytest.raises(UnencodableRequest) as refused:
        p.add(too_deep)
    assert refused.value.field == "line"
    assert "nested too deeply" in refused.value.reason
    assert p.add(request(3)) is None
    [chunk] = p.finish()
    assert chunk.request_count == 2 and seen == [1, 3]
    lines = [orjson.loads(x)["line"] for x in chunk.manifest.getvalue().splitlines()]
    assert lines == [1, 3] and len(chunk.payload.getvalue().splitlines()) == 2


def test_an_encoder_error_is_refused_as_the_line_s() -> None:
    def broken(_: Request) -> dict[str, object]:
        raise KeyError("content")

    with pytest.raises(UnencodableRequest, match="could not be encoded: KeyError: 'content'"):
        ChunkPlanner(lambda _: ChunkLimits(10, 10_000), lambda _: broken).add(request(1))


def test_an_integer_beyond_64_bits_in_a_native_body_is_refused_naming_its_path() -> None:
    raw = native_line(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    )
    raw = raw.replace(b'"seed":1', b'"seed":18446744073709551616')
    parsed = parse_native(raw)
    assert parsed.native is not None and isinstance(parsed.native["seed"], float)  # orjson
    with pytest.raises(UnencodableRequest) as refused:
        planner().add(parsed, source=raw)
    assert refused.value.field == "body.seed"
    assert "18446744073709551616 is beyond the 64-bit range" in refused.value.reason


def test_big_numbers_orjson_keeps_or_that_were_floats_are_sent_as_written() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "seed": 18446744073709551615,
        "logit_bias": {"50256": -9223372036854775808},
        "x": 1.5e30,
    }
    raw = native_line(body)
    p = planner()
    p.add(parse_native(raw), source=raw)
    [chunk] = p.finish()
    assert orjson.loads(chunk.payload.getvalue())["body"] == body


def test_lines_a_later_round_staged_are_cut_by_the_same_rules() -> None:
    """`add_encoded` (a repair's staged line) cuts where `add` cuts the same lines."""
    size = len(openai.encode(request(1)))
    first = planner(max_requests=3, max_bytes=size * 2 + 1)
    again = planner(max_requests=3, max_bytes=size * 2 + 1)
    cut_first, cut_again = [], []
    for n in range(1, 8):
        if (full := first.add(request(n))) is not None:
            cut_first.append(full)
        encoded = openai.encode(request(n))
        entry = b'{"line":%d}\n' % n
        if (full := again.add_encoded("openai", "gpt-4o-mini", n, encoded, entry, b"")) is not None:
            cut_again.append(full)
    cut_first += first.finish()
    cut_again += again.finish()
    assert (
        [c.request_count for c in cut_first]
        == [c.request_count for c in cut_again]
        == [
            2,
            2,
            2,
            1,
        ]
    )
    assert [c.payload.getvalue() for c in cut_first] == [c.payload.getvalue() for c in cut_again]
    assert [c.first_line for c in cut_again] == [1, 3, 5, 7]
    with pytest.raises(RequestTooLarge):
        planner(max_bytes=50).add_encoded("openai", "m", 1, b"x" * 51, b"{}\n", b"")


def test_a_failing_sink_is_not_the_request_s_fault_and_leaves_the_planner_unchanged() -> None:
    class Broken:
        def write(self, data: bytes, /) -> int:
            raise OSError("the work bucket is away")

    sinks = iter([io.BytesIO(), Broken()])
    p = ChunkPlanner(
        lambda _: ChunkLimits(10, 10_000),
        lambda _: openai.encode_line,
        open_sink=lambda *_: next(sinks),
    )
    assert p.add(request(1)) is None
    with pytest.raises(SinkFailed) as failed:
        p.add(request(2, model="other"))
    assert isinstance(failed.value.error, OSError)
    [chunk] = p.finish()
    assert chunk.request_count == 1 and chunk.model == "gpt-4o-mini"
