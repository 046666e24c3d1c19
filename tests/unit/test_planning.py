import orjson
import pytest

from batchline.config import ChunkLimits
from batchline.domain.planning import ChunkPlanner, RequestTooLarge
from batchline.domain.providers import anthropic, openai
from batchline.domain.requests import Request


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
