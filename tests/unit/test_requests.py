import orjson
import pytest

from batchline.domain.lines import LineTooLong
from batchline.domain.pricing import PRICES
from batchline.domain.requests import InvalidLine, Request, model_problem, parse_line


def parse(obj: object, default_model: str | None = None) -> Request | InvalidLine:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return parse_line(7, raw, default_model=default_model, max_line_bytes=1000)


MSG = [{"role": "user", "content": "hi"}]


def test_batchline_line() -> None:
    got = parse(
        {
            "custom_id": "a",
            "model": "openai/gpt-4.1-mini",
            "messages": MSG,
            "system": "be brief",
            "max_tokens": 5,
            "temperature": 0.5,
        }
    )
    assert isinstance(got, Request)
    assert (got.line, got.custom_id, got.provider, got.model) == (7, "a", "openai", "gpt-4.1-mini")
    assert got.params == {
        "messages": MSG,
        "system": "be brief",
        "max_tokens": 5,
        "temperature": 0.5,
    }


def test_default_model_applies_when_line_has_none() -> None:
    got = parse({"messages": MSG}, default_model="openai/gpt-4o-mini")
    assert isinstance(got, Request) and got.model == "gpt-4o-mini" and got.custom_id is None


def test_openai_native_line_keeps_body_untouched() -> None:
    body = {"model": "gpt-4.1", "messages": MSG, "logprobs": True}
    got = parse({"custom_id": "n", "method": "POST", "url": "/v1/chat/completions", "body": body})
    assert isinstance(got, Request) and got.native == body and got.model == "gpt-4.1"


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (b"{not json", "line", "not valid JSON"),
        (b"[1,2]", "line", "expected a JSON object, got a list"),
        (b'{"model":"openai/x","messages":[{"role":"user","content":"\xff"}]}', "line", "UTF-8"),
        ({"custom_id": 5, "model": "openai/x", "messages": MSG}, "custom_id", "expected a string"),
        ({"model": "gpt-4", "messages": MSG}, "model", "expected 'provider/model'"),
        ({"model": "acme/x", "messages": MSG}, "model", "unknown provider 'acme'"),
        ({"messages": MSG}, "model", "missing, and the job has no default model"),
        ({"model": "openai/x"}, "messages", "missing"),
        ({"model": "openai/x", "messages": []}, "messages", "must not be empty"),
        (
            {"model": "openai/x", "messages": [{"role": "robot", "content": "a"}]},
            "messages[0].role",
            "expected one of",
        ),
        (
            {"model": "openai/x", "messages": [{"role": "user", "content": 3}]},
            "messages[0].content",
            "expected a string",
        ),
        ({"model": "openai/x", "messages": MSG, "max_tokens": 0}, "max_tokens", "positive integer"),
        (
            {"model": "openai/x", "messages": MSG, "max_tokens": True},
            "max_tokens",
            "positive integer",
        ),
        ({"model": "openai/x", "messages": MSG, "temperature": 3}, "temperature", "from 0 to 2"),
        ({"model": "openai/x", "messages": MSG, "max_token": 3}, "max_token", "unknown field"),
        (
            {"custom_id": "z", "method": "GET", "url": "/v1/chat/completions", "body": {}},
            "method",
            "expected 'POST'",
        ),
        (
            {"method": "POST", "url": "/v1/embeddings", "body": {}},
            "url",
            "expected '/v1/chat/completions'",
        ),
        (
            {"method": "POST", "url": "/v1/chat/completions", "body": {"messages": MSG}},
            "body.model",
            "missing",
        ),
        (
            {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}},
            "body.messages",
            "missing",
        ),
        ({"params": {}}, "params.model", "missing, and the job has no default model"),
        ({"custom_id": "x", "params": []}, "params", "expected an object"),
        (
            {"params": {"model": "claude-x", "messages": MSG}, "model": "anthropic/claude-x"},
            "model",
            "unknown field in an Anthropic batch line",
        ),
        (
            {"params": {"model": "claude-x", "messages": MSG, "stream": True}},
            "params.stream",
            "cannot stream",
        ),
        (
            {"params": {"model": "claude-x", "messages": [{"role": "tool", "content": "a"}]}},
            "params.messages[0].role",
            "Anthropic takes one of ['assistant', 'system', 'user']",
        ),
        ({"params": {"model": "claude-x"}}, "params.messages", "missing"),
        (
            {"model": "anthropic/claude-x", "messages": [{"role": "developer", "content": "a"}]},
            "messages[0].role",
            "Anthropic takes one of",
        ),
        (
            {
                "model": "anthropic/claude-x",
                "messages": [{"role": "user", "content": "a", "name": "bob"}],
            },
            "messages[0].name",
            "not a field of an Anthropic message",
        ),
        (
            {"model": "anthropic/claude-x", "messages": [{"role": "user", "content": ["a"]}]},
            "messages[0].content[0]",
            "expected a content block",
        ),
        (
            {"model": "anthropic/claude-x", "messages": [{"role": "user", "content": []}]},
            "messages[0].content",
            "must not be an empty list",
        ),
        (
            {"model": "anthropic/claude-x", "messages": MSG, "temperature": 0.5},
            "temperature",
            "Anthropic's Messages API takes no temperature",
        ),
        (
            {"model": "vertex/gemini-2.5-flash", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].role",
            "a Vertex line takes one of",
        ),
        (
            {"model": "vertex/gemini-2.5-flash", "messages": [{"role": "user", "content": [{}]}]},
            "messages[0].content[0]",
            "expected a part",
        ),
        (
            {
                "model": "vertex/gemini-2.5-flash",
                "messages": [{"role": "user", "content": [{"txt": "a"}]}],
            },
            "messages[0].content[0].txt",
            "not a field of a Gemini part",
        ),
        (
            {
                "model": "vertex/gemini-2.5-flash",
                "messages": [{"role": "user", "content": [{"type": "image_url", "x": 1}]}],
            },
            "messages[0].content[0]",
            "a typed part must be",
        ),
        (
            {"model": "vertex/gemini-2.5-flash", "messages": MSG, "stop": list("abcdef")},
            "stop",
            "at most 5",
        ),
        ({"request": {"contents": []}}, "request.contents", "must not be empty"),
        ({"request": "x"}, "request", "expected an object"),
        ({"request": {"contents": MSG}}, "request.contents[0].content", "not a field"),
        (
            {"request": {"contents": [{"role": "assistant", "parts": [{"text": "a"}]}]}},
            "request.contents[0].role",
            "expected one of ['model', 'user']",
        ),
        (
            {"request": {"contents": [{"parts": []}]}},
            "request.contents[0].parts",
            "non-empty list",
        ),
        (
            {"request": {"contents": [{"parts": [{"text": "a"}]}], "temprature": 1}},
            "request.temprature",
            "not a field of a Gemini GenerateContentRequest",
        ),
        ({"request": {"contents": [{"parts": [{"text": "a"}]}]}}, "request.model", "no default"),
        (
            {"request": {"model": "x/y", "contents": [{"parts": [{"text": "a"}]}]}},
            "request.model",
            "expected e.g.",
        ),
        (
            {"key": 5, "request": {"contents": [{"parts": [{"text": "a"}]}]}},
            "key",
            "expected a string",
        ),
        (
            {"key": "a", "custom_id": "b", "request": {"contents": [{"parts": [{"text": "a"}]}]}},
            "key",
            "one id",
        ),
        (
            {"extra": 1, "request": {"contents": [{"parts": [{"text": "a"}]}]}},
            "extra",
            "unknown field in a Vertex batch line",
        ),
    ],
)
def test_invalid_lines_name_field_and_reason(raw: object, field: str, reason: str) -> None:
    got = parse(raw)
    assert isinstance(got, InvalidLine), got
    assert got.field == field
    assert reason in got.reason
    assert got.message.startswith(f"line 7: {field}: ")


def test_anthropic_batchline_line() -> None:
    blocks = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
    ]
    got = parse(
        {
            "custom_id": "a/b ü",
            "model": "anthropic/claude-haiku-4-5",
            "system": "be brief",
            "messages": [
                {"role": "user", "content": blocks},
                {"role": "assistant", "content": "a picture"},
                {"role": "system", "content": "answer in French"},
            ],
            "stop": ["\n\n"],
            "metadata": {"team": "x"},
        }
    )
    assert isinstance(got, Request), got
    assert (got.provider, got.model, got.custom_id) == ("anthropic", "claude-haiku-4-5", "a/b ü")
    assert got.params is not None and got.params["messages"][0]["content"] == blocks


def test_anthropic_native_line_keeps_params_untouched() -> None:
    params = {"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": MSG, "top_k": 3}
    got = parse({"custom_id": "n", "params": params})
    assert isinstance(got, Request) and got.native == params
    assert (got.provider, got.model) == ("anthropic", "claude-sonnet-4-5")


def test_anthropic_native_line_takes_the_job_default_model() -> None:
    got = parse({"params": {"messages": MSG}}, default_model="anthropic/claude-haiku-4-5")
    assert isinstance(got, Request) and got.native == {
        "messages": MSG,
        "model": "claude-haiku-4-5",
    }
    got = parse({"params": {"messages": MSG}}, default_model="openai/gpt-4o-mini")
    assert isinstance(got, InvalidLine) and got.field == "params.model"
    assert "not an Anthropic model" in got.reason


def test_openai_lines_keep_openai_roles_and_temperature() -> None:
    got = parse(
        {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "developer", "content": "x"}, *MSG],
            "temperature": 1.5,
        }
    )
    assert isinstance(got, Request) and got.params is not None
    assert got.params["temperature"] == 1.5


def test_invalid_line_keeps_the_custom_id_it_had() -> None:
    got = parse({"custom_id": "keep-me", "model": "nope"})
    assert isinstance(got, InvalidLine) and got.custom_id == "keep-me"


def test_line_too_long() -> None:
    got = parse_line(3, LineTooLong(5000), default_model=None, max_line_bytes=1000)
    assert isinstance(got, InvalidLine) and "5000 bytes exceeds the limit of 1000" in got.reason


VERTEX_CONTENTS = [{"role": "user", "parts": [{"text": "hi"}]}]


def test_vertex_batchline_line() -> None:
    got = parse(
        {
            "custom_id": "v/1",
            "model": "vertex/gemini-2.5-flash",
            "system": "be brief",
            "messages": [
                {"role": "system", "content": "in French"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"fileData": {}}]},
                {"role": "assistant", "content": "b"},
                {"role": "model", "content": "c"},
            ],
            "max_tokens": 5,
            "temperature": 2,
            "stop": ["x"],
        }
    )
    assert isinstance(got, Request), got
    assert (got.provider, got.model, got.custom_id) == ("vertex", "gemini-2.5-flash", "v/1")


def test_vertex_native_line_takes_its_key_as_custom_id() -> None:
    got = parse({"key": "k-1", "request": {"contents": VERTEX_CONTENTS}}, "vertex/gemini-2.5-pro")
    assert isinstance(got, Request), got
    assert (got.custom_id, got.provider, got.model) == ("k-1", "vertex", "gemini-2.5-pro")
    assert got.native == {"contents": VERTEX_CONTENTS}
    same = parse(
        {"key": "k", "custom_id": "k", "request": {"contents": VERTEX_CONTENTS}}, "vertex/m"
    )
    assert isinstance(same, Request) and same.custom_id == "k"
    bad = parse({"key": "keep", "request": {"contents": []}})
    assert isinstance(bad, InvalidLine) and bad.custom_id == "keep"


def test_vertex_native_line_model_picks_its_batch_and_is_not_sent() -> None:
    for name in (
        "gemini-2.5-pro",
        "publishers/google/models/gemini-2.5-pro",
        "vertex/gemini-2.5-pro",
    ):
        got = parse({"request": {"model": name, "contents": VERTEX_CONTENTS}}, "openai/gpt-4o")
        assert isinstance(got, Request), got
        assert got.model == "gemini-2.5-pro" and got.native == {"contents": VERTEX_CONTENTS}


def test_vertex_native_line_needs_a_vertex_default_model() -> None:
    got = parse({"request": {"contents": VERTEX_CONTENTS}}, default_model="openai/gpt-4o-mini")
    assert isinstance(got, InvalidLine) and got.field == "request.model"
    assert "not a Vertex model" in got.reason


def test_line_too_long_keeps_the_custom_id_found_while_skipping_it() -> None:
    got = parse_line(3, LineTooLong(5000, "doc-9"), default_model=None, max_line_bytes=1000)
    assert isinstance(got, InvalidLine) and got.custom_id == "doc-9" and got.field == "line"


TRAVERSAL = "../../../projects/other-project/locations/us/publishers/google/models/x"
VERTEX_REQUEST = {"contents": VERTEX_CONTENTS}


@pytest.mark.parametrize(
    ("raw", "default_model", "field"),
    [
        ({"model": f"vertex/{TRAVERSAL}", "messages": MSG}, None, "model"),
        ({"model": "openai/gpt 4", "messages": MSG}, None, "model"),
        ({"model": "anthropic/claude?x=1", "messages": MSG}, None, "model"),
        ({"model": "openai/-leading-dash", "messages": MSG}, None, "model"),
        ({"model": "openai/" + "a" * 129, "messages": MSG}, None, "model"),
        ({"model": "openai/gpt\n4", "messages": MSG}, None, "model"),
        ({"messages": MSG}, f"vertex/{TRAVERSAL}", "model (job default)"),
        ({"messages": MSG}, "openai/a/b", "model (job default)"),
        (
            {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "../x"}},
            None,
            "body.model",
        ),
        ({"params": {"model": "claude x", "messages": MSG}}, None, "params.model"),
        ({"request": {"model": f"vertex/{TRAVERSAL}", **VERTEX_REQUEST}}, None, "request.model"),
        ({"request": {"model": "gemini%2F..", **VERTEX_REQUEST}}, None, "request.model"),
        ({"request": VERTEX_REQUEST}, f"vertex/{TRAVERSAL}", "model (job default)"),
        ({"params": {"messages": MSG}}, "anthropic/..", "model (job default)"),
    ],
)
def test_model_names_outside_the_strict_charset_are_invalid(
    raw: dict[str, object], default_model: str | None, field: str
) -> None:
    got = parse(raw, default_model=default_model)
    assert isinstance(got, InvalidLine), got
    assert got.field == field
    assert "is not a model id: allowed are [A-Za-z0-9][A-Za-z0-9._:@-]{0,127}" in got.reason


@pytest.mark.parametrize(
    "name",
    [
        "openai/gpt-4.1-mini-2025-04-14",
        "openai/ft:gpt-4o-mini-2024-07-18:my-org:custom_suffix:9abcXYZ",
        "anthropic/claude-sonnet-4-5@20250929",
        "anthropic/claude-haiku-4-5-20251001",
        "vertex/gemini-2.5-flash",
        "vertex/gemini-2.0-flash-001",
        "openai/" + "a" * 128,
        *PRICES,
    ],
)
def test_real_model_ids_pass_the_check(name: str) -> None:
    assert model_problem(name) is None
    assert isinstance(parse({"model": name, "messages": MSG}), Request)


def test_model_problem_is_the_check_of_a_default_model() -> None:
    assert model_problem("openai/gpt-4o-mini") is None
    assert "expected 'provider/model'" in (model_problem("gpt-4o-mini") or "")
    assert "unknown provider 'acme'" in (model_problem("acme/x") or "")
    assert "expected a string" in (model_problem(5) or "")
    problem = model_problem(f"vertex/{TRAVERSAL}") or ""
    assert "is not a model id" in problem and TRAVERSAL.removeprefix("vertex/") in problem


def test_a_vertex_model_may_be_given_as_google_publisher_path() -> None:
    got = parse({"model": "vertex/publishers/google/models/gemini-2.5-pro", "messages": MSG})
    assert isinstance(got, Request) and got.model == "gemini-2.5-pro"


def test_a_long_bad_model_is_cut_in_the_message() -> None:
    got = parse({"model": "openai/" + "x/" * 10_000, "messages": MSG})
    assert isinstance(got, InvalidLine) and len(got.reason) < 400


def test_max_tokens_beyond_64_bits_is_invalid_naming_max_tokens() -> None:
    raw = b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
    for big in (b"18446744073709551616", b"-9223372036854775809", b"1" * 300):
        got = parse(raw + b'"max_tokens": ' + big + b"}")
        assert isinstance(got, InvalidLine), got
        assert got.field == "max_tokens" and "beyond 64 bits" in got.reason


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (
            {"model": "openai/x", "messages": [{"role": {"k": 1}, "content": "a"}]},
            "messages[0].role",
        ),
        (
            {"model": "anthropic/x", "messages": [{"role": ["user"], "content": "a"}]},
            "messages[0].role",
        ),
        ({"model": "vertex/x", "messages": [{"role": {}, "content": "a"}]}, "messages[0].role"),
        (
            {"request": {"model": "m", "contents": [{"role": [], "parts": [{"text": "a"}]}]}},
            "request.contents[0].role",
        ),
    ],
)
def test_a_role_that_is_not_a_string_is_invalid_not_a_crash(raw: object, field: str) -> None:
    """Found by the fuzz test: `{...} in frozenset` raised TypeError (unhashable)."""
    got = parse(raw)
    assert isinstance(got, InvalidLine) and got.field == field
