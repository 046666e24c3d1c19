"""The api function fuzzed over request shapes (hypothesis), on the emulators: whatever a
caller sends, the answer is JSON, never a 5xx, and every error has the one shape.

A heavy test: 300 examples per test in `make test` and CI, 3,000 under `make bench`
(BATCHLINE_TEST_BUDGET=bench); BATCHLINE_FUZZ_EXAMPLES sets any other number.
"""

# ruff: noqa: F811  (the fixtures of test_functions, imported, are parameters here)
from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchline.web import is_page

from .test_functions import (  # noqa: F401  (fixtures)
    Cloud,
    Functions,
    cloud,
    fresh,
    functions,
    request_line,
)

pytestmark = [pytest.mark.integration, pytest.mark.heavy]

_BENCH = os.environ.get("BATCHLINE_TEST_BUDGET", "").strip().lower() == "bench"
EXAMPLES = int(os.environ.get("BATCHLINE_FUZZ_EXAMPLES") or (3000 if _BENCH else 300))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["openai/gpt-4.1-mini", "vertex/../x", "__x__", "", "gs://x/y.jsonl"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
line_keys = st.sampled_from(
    [
        "custom_id",
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "stop",
        "response_schema",
        "schema",
        "method",
        "url",
        "body",
        "params",
        "request",
        "key",
        "extra",
    ]
)
lines = st.one_of(
    st.dictionaries(line_keys, values, max_size=6),
    st.builds(lambda i: request_line(i), st.integers(0, 5)),
    values,
)
option_keys = st.sampled_from(
    [
        "model",
        "labels",
        "schema",
        "response_schema",
        "max_repair_attempts",
        "max_cost_usd",
        "option",
    ]
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "requests": st.one_of(st.lists(lines, max_size=4), values),
            "input_uri": st.one_of(st.text(max_size=30), st.just("gs://in/x.jsonl"), values),
            "options": st.one_of(st.dictionaries(option_keys, values, max_size=4), values),
            "other": values,
        },
    ),
    values,
)
raw_bodies = st.one_of(
    bodies.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"", b"{", b'{"requests": [NaN]}', b'"\\ud800"', b"[" * 2000]),
)
headers = st.fixed_dictionaries(
    {
        "Content-Type": st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/plain", "", "x/+json"]
        )
    },
    optional={
        "Idempotency-Key": st.text(
            alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40
        )
    },
)
paths = st.one_of(
    st.sampled_from(
        [
            "/v1/jobs",
            "/v1/jobs/",
            "/v1/jobs/job-000000000000000000000000",
            "/v1/jobs/job-000000000000000000000000:cancel",
            "/v1/jobs/..",
            "/v1/jobs/__x__:cancel",
            "/",
            "/jobs/job-000000000000000000000000",
            "/jobs/..%2F..%2Fetc",
            "/assets/page.js",
            "/assets/../../pyproject.toml",
            "/assets/%2e%2e/edge.py",
        ]
    ),
    st.text(alphabet="abcdefjob-:/._%0123456789", max_size=30).map(lambda p: "/v1/jobs/" + p),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])


#: What the page's routes answer: pages, and its script, style sheet and icon.
PAGE_TYPES = {"text/html", "text/javascript", "application/javascript", "text/css", "image/svg+xml"}


@pytest.mark.timeout(900)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(method=methods, path=paths, data=raw_bodies, sent=headers)
def test_no_request_gets_a_5xx_or_a_non_json_answer(
    functions: Functions,
    cloud: Cloud,
    method: str,
    path: str,
    data: bytes,
    sent: dict[str, str],
) -> None:
    reply = functions.api.open(path, method=method, data=data, headers=sent)
    assert reply.status_code < 500, (reply.status_code, reply.get_data()[:300])
    if is_page(path.split("?")[0]):
        # The jobs page's own routes answer HTML, their errors included (batchline.web).
        assert reply.mimetype in PAGE_TYPES, (path, reply.mimetype)
        return
    assert reply.mimetype == "application/json"
    body: Any = reply.get_json()
    if reply.status_code >= 400:
        assert set(body) == {"error"}
        assert {"type", "message"} <= set(body["error"]) <= {"type", "message", "field"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.timeout(900)
@settings(
    max_examples=max(EXAMPLES // 3, 20),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_no_json_body_to_post_jobs_gets_a_5xx(
    functions: Functions, cloud: Cloud, body: Any
) -> None:
    reply = functions.api.post("/v1/jobs", json=body)
    assert reply.status_code < 500, (reply.status_code, reply.get_data()[:300])
    assert reply.status_code in (200, 202, 400, 413, 415, 422), reply.get_json()
