"""The OpenAI Batch API emulator, driven through the official `openai` SDK over HTTP."""

from __future__ import annotations

import base64
import copy
import json
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai import OpenAI
from openai.types.chat import ChatCompletion
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from batchline_emulators import openai as emulator_module
from batchline_emulators._wsgi import start_in_thread
from batchline_emulators.openai import CONTENT_PREFIX, EmulatorConfig, make_app

from .conftest import WAIT_SECONDS, ManualClock
from .emulator_answers import RECIPE_SCHEMA, Recipe, answer_kind, assert_kinds

pytestmark = pytest.mark.integration

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "openai" / "openapi.yaml"
CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


# --------------------------------------------------------------------------- helpers


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def upload(client: OpenAI, lines: list[Any], name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, jsonl(lines)), purpose="batch").id


def create(client: OpenAI, file_id: str, **kwargs: Any) -> Any:
    kwargs.setdefault("endpoint", CHAT)
    return client.batches.create(input_file_id=file_id, completion_window="24h", **kwargs)


def wait(
    client: OpenAI, batch_id: str, until: set[str] = TERMINAL, timeout: float = WAIT_SECONDS
) -> tuple[Any, list[Any]]:
    """Poll until the batch reaches a status in `until`; (batch, every batch seen)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        seen.append(batch)
        if batch.status in until:
            return batch, seen
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.02)


def read_jsonl(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    text = client.files.content(file_id).text
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def run(client: OpenAI, lines: list[Any], **kwargs: Any) -> tuple[Any, list[dict], list[dict]]:
    batch, _ = wait(client, create(client, upload(client, lines), **kwargs).id)
    return batch, read_jsonl(client, batch.output_file_id), read_jsonl(client, batch.error_file_id)


def raw_request(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture(autouse=True)
def _clean(openai_emulator: Any) -> Iterator[None]:
    openai_emulator.reset()
    yield


@pytest.fixture
def client(openai_emulator: Any) -> OpenAI:
    c: OpenAI = openai_emulator.client()
    return c


@pytest.fixture
def manual() -> Iterator[Callable[..., tuple[OpenAI, ManualClock]]]:
    """Start an emulator whose clock only moves when the test moves it."""
    stops = []

    def start(**config: Any) -> tuple[OpenAI, ManualClock]:
        clock = ManualClock()
        app = make_app(EmulatorConfig(**config), clock=clock)
        root, stop = start_in_thread(app)
        stops.append(stop)
        return OpenAI(api_key="k", base_url=f"{root}/v1", max_retries=0, timeout=10.0), clock

    yield start
    for stop in stops:
        stop()


# --------------------------------------------------------------------------- happy path


def test_happy_path(client: OpenAI) -> None:
    lines = [
        chat_line(f"req-{i:03d}", f"Question number {i}: what is {i} + {i}?") for i in range(30)
    ]
    lines[7]["body"]["max_tokens"] = 3
    file_id = upload(client, lines)
    stored = client.files.retrieve(file_id)
    assert (stored.purpose, stored.status, stored.filename) == ("batch", "processed", "input.jsonl")
    assert stored.bytes == len(jsonl(lines))

    created = create(client, file_id, metadata={"job": "happy", "chunk": "3"})
    assert created.status == "validating"
    assert created.request_counts.total == 0
    assert created.metadata == {"job": "happy", "chunk": "3"}
    batch, seen = wait(client, created.id)

    assert batch.status == "completed"
    assert batch.model == "gpt-4o-mini"
    assert (batch.request_counts.total, batch.request_counts.completed) == (30, 30)
    assert batch.request_counts.failed == 0
    assert batch.error_file_id is None and batch.output_file_id
    assert batch.errors is None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.failed_at is batch.expired_at is batch.cancelled_at is None
    assert batch.metadata == {"job": "happy", "chunk": "3"}
    done = [b.request_counts.completed for b in seen]
    assert done == sorted(done), "completed count went backwards"

    out_file = client.files.retrieve(batch.output_file_id)
    assert out_file.purpose == "batch_output"
    content = client.files.content(batch.output_file_id).content
    assert out_file.bytes == len(content)

    results = read_jsonl(client, batch.output_file_id)
    ids = [r["custom_id"] for r in results]
    assert Counter(ids) == Counter(line["custom_id"] for line in lines)
    assert ids != [line["custom_id"] for line in lines], "results must not be in input order"
    by_id = {r["custom_id"]: r for r in results}
    for line in lines:
        result = by_id[line["custom_id"]]
        assert result["id"].startswith("batch_req_") and result["error"] is None
        assert result["response"]["status_code"] == 200
        assert result["response"]["request_id"]
        body = result["response"]["body"]
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["model"] == "gpt-4o-mini"
        message = body["choices"][0]["message"]
        assert message["role"] == "assistant" and message["refusal"] is None
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        if line["custom_id"] == "req-007":
            assert body["choices"][0]["finish_reason"] == "length"
            assert usage["completion_tokens"] == 3 and len(message["content"]) <= 12
        else:
            assert body["choices"][0]["finish_reason"] == "stop"
            assert message["content"].startswith(f"{CONTENT_PREFIX} answer to: Question number")
            assert line["body"]["messages"][0]["content"][:30] in message["content"]
    assert batch.usage.input_tokens == sum(
        r["response"]["body"]["usage"]["prompt_tokens"] for r in results
    )
    assert batch.usage.output_tokens == sum(
        r["response"]["body"]["usage"]["completion_tokens"] for r in results
    )

    # Same input, same answers in the same (shuffled) order.
    again, _ = wait(client, create(client, file_id).id)
    results_again = read_jsonl(client, again.output_file_id)
    assert [r["custom_id"] for r in results_again] == ids
    assert [r["response"]["body"]["choices"] for r in results_again] == [
        r["response"]["body"]["choices"] for r in results
    ]

    listed = {f.id for f in client.files.list()}
    assert {file_id, batch.output_file_id, again.output_file_id} <= listed
    assert client.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_live_counts_follow_the_clock(manual: Callable[..., tuple[OpenAI, ManualClock]]) -> None:
    client, clock = manual(validating_seconds=1.0, lines_per_second=10.0, finalizing_seconds=1.0)
    lines = [chat_line(f"c{i}", f"line {i}") for i in range(20)]
    lines[5]["body"]["messages"][0]["content"] += " [emulator:fail=500]"
    t0 = clock.now
    batch = create(client, upload(client, lines))

    def at(offset: float) -> Any:
        clock.now = t0 + offset
        return client.batches.retrieve(batch.id)

    b = at(0.5)
    assert b.status == "validating" and b.request_counts.total == 0 and b.in_progress_at is None
    b = at(1.55)
    assert b.status == "in_progress" and b.in_progress_at == int(t0 + 1)
    assert b.request_counts.total == 20
    assert b.request_counts.completed + b.request_counts.failed == 5
    b = at(2.25)
    assert b.request_counts.completed + b.request_counts.failed == 12
    assert b.output_file_id is None
    b = at(3.0)
    assert b.status == "finalizing" and b.finalizing_at == int(t0 + 3)
    assert (b.request_counts.completed, b.request_counts.failed) == (19, 1)
    b = at(3.9)
    assert b.status == "finalizing" and b.output_file_id is None
    b = at(4.0)
    assert b.status == "completed" and b.completed_at == int(t0 + 4)
    outputs = read_jsonl(client, b.output_file_id)
    errors = read_jsonl(client, b.error_file_id)
    assert len(outputs) == 19 and [e["custom_id"] for e in errors] == ["c5"]
    for r in outputs:
        assert t0 + 1 <= r["response"]["body"]["created"] <= t0 + 3


# --------------------------------------------------------------------------- validation


def _bad_json(lines: list[Any]) -> None:
    lines[1] = b'{"custom_id": "x", "method": "POST",'


def _drop(key: str, index: int) -> Callable[[list[Any]], None]:
    return lambda lines: lines[index].pop(key)


def _set(path: tuple[str, ...], value: Any, index: int) -> Callable[[list[Any]], None]:
    def mutate(lines: list[Any]) -> None:
        target = lines[index]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop_body(key: str, index: int) -> Callable[[list[Any]], None]:
    return lambda lines: lines[index]["body"].pop(key)


VALIDATION_CASES: dict[str, tuple[Callable[[list[Any]], None], dict, str, int | None]] = {
    # name: (mutation of 5 good lines, admin config, expected code, expected line)
    "bad_json": (_bad_json, {}, "invalid_json_line", 2),
    "missing_custom_id": (_drop("custom_id", 0), {}, "missing_required_parameter", 1),
    "missing_method": (_drop("method", 2), {}, "missing_required_parameter", 3),
    "missing_url": (_drop("url", 3), {}, "missing_required_parameter", 4),
    "missing_body": (_drop("body", 4), {}, "missing_required_parameter", 5),
    "url_not_endpoint": (_set(("url",), "/v1/embeddings", 2), {}, "invalid_url", 3),
    "duplicate_custom_id": (_set(("custom_id",), "v0", 3), {}, "duplicate_custom_id", 4),
    "two_models": (_set(("body", "model"), "gpt-4o", 1), {}, "mismatched_model", 2),
    "missing_model": (_drop_body("model", 0), {}, "missing_required_parameter", 1),
    "missing_messages": (_drop_body("messages", 4), {}, "missing_required_parameter", 5),
    "too_many_requests": (lambda lines: None, {"max_requests": 4}, "request_limit_exceeded", None),
    "too_many_bytes": (lambda lines: None, {"max_bytes": 300}, "file_too_large", None),
    "empty_file": (lambda lines: lines.clear(), {}, "empty_file", None),
}


@pytest.mark.parametrize("case", sorted(VALIDATION_CASES))
def test_validation_failure(case: str, client: OpenAI, openai_emulator: Any) -> None:
    mutate, config, code, line = VALIDATION_CASES[case]
    if config:
        openai_emulator.admin(config)
    lines: list[Any] = [chat_line(f"v{i}", f"valid line {i}") for i in range(5)]
    mutate(lines)
    batch, _ = wait(client, create(client, upload(client, lines)).id)
    assert batch.status == "failed"
    assert batch.failed_at is not None and batch.completed_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts.total == 0
    assert batch.errors is not None and batch.errors.object == "list"
    assert [(e.code, e.line) for e in batch.errors.data] == [(code, line)]
    assert batch.errors.data[0].message


def test_validation_reports_every_bad_line(client: OpenAI) -> None:
    lines: list[Any] = [chat_line(f"v{i}", f"line {i}") for i in range(6)]
    lines[1] = b"not json"
    lines[3]["custom_id"] = "v0"
    lines[5]["body"].pop("messages")
    batch, _ = wait(client, create(client, upload(client, lines)).id)
    assert batch.status == "failed"
    got = [(e.code, e.line, e.param) for e in batch.errors.data]
    assert got == [
        ("invalid_json_line", 2, None),
        ("duplicate_custom_id", 4, "custom_id"),
        ("missing_required_parameter", 6, "body.messages"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"completion_window": "48h"}, "completion_window"),
        ({"endpoint": "/v1/responses"}, "endpoint"),
        ({"endpoint": "/v1/nope"}, "endpoint"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ],
)
def test_create_rejects_bad_arguments(client: OpenAI, kwargs: dict, param: str) -> None:
    file_id = upload(client, [chat_line("a", "hi")])
    args = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(**args)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param  # type: ignore[index]
    assert client.batches.list().data == []


def test_create_accepts_limits_of_metadata(client: OpenAI) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = create(client, upload(client, [chat_line("a", "hi")]), metadata=metadata)
    assert batch.metadata == metadata


def test_create_checks_the_input_file(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        create(client, "file-doesnotexist")
    other = client.files.create(file=("notes.jsonl", b"{}\n"), purpose="user_data").id
    with pytest.raises(openai.BadRequestError) as info:
        create(client, other)
    assert info.value.body["param"] == "input_file_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("input.csv", b"a,b\n"), purpose="batch")


# --------------------------------------------------------------------------- line faults


def test_line_faults_go_to_the_error_file(client: OpenAI, openai_emulator: Any) -> None:
    openai_emulator.admin({"line_fail_rate": 0.25, "seed": 7})
    lines = [chat_line(f"f{i:02d}", f"line {i}") for i in range(60)]
    markers = {"f00": 500, "f01": 400, "f02": 404, "f03": 429}
    for custom_id, status in markers.items():
        lines[int(custom_id[1:])]["body"]["messages"][0]["content"] += f" [emulator:fail={status}]"
    lines[4]["body"]["messages"][0]["content"] += " [emulator:fail=200]"  # not an error code
    file_id = upload(client, lines)
    batch, outputs, errors = run(client, lines)

    assert batch.status == "completed"
    assert batch.request_counts.completed == len(outputs)
    assert batch.request_counts.failed == len(errors)
    assert len(outputs) + len(errors) == 60
    assert {r["custom_id"] for r in outputs}.isdisjoint(r["custom_id"] for r in errors)
    by_id = {e["custom_id"]: e for e in errors}
    for custom_id, status in markers.items():
        assert by_id[custom_id]["response"]["status_code"] == status
    assert "f04" not in by_id
    for entry in errors:
        assert set(entry) == {"id", "custom_id", "response", "error"}
        assert entry["id"].startswith("batch_req_") and entry["error"] is None
        response = entry["response"]
        assert set(response) == {"status_code", "request_id", "body"}
        error = response["body"]["error"]
        assert set(error) == {"message", "type", "param", "code"}
        status = response["status_code"]
        expected_type = {429: "requests"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        assert error["type"] == expected_type
    rate_failed = {cid for cid in by_id if cid not in markers}
    assert all(by_id[cid]["response"]["status_code"] == 500 for cid in rate_failed)
    assert 4 <= len(rate_failed) <= 26, len(rate_failed)  # 25% of 56 lines, seeded

    # The fail-rate picks depend only on the seed and the custom_ids.
    again, _ = wait(client, create(client, file_id).id)
    assert {e["custom_id"] for e in read_jsonl(client, again.error_file_id)} == set(by_id)
    openai_emulator.admin({"seed": 8})
    other_seed, _ = wait(client, create(client, file_id).id)
    assert {e["custom_id"] for e in read_jsonl(client, other_seed.error_file_id)} != set(by_id)


def line_answers(client: OpenAI, batch: Any) -> dict[str, tuple[int, dict[str, Any]]]:
    """Each line's status and body, but for when it was answered (`created`)."""
    found = {}
    for entry in read_jsonl(client, batch.output_file_id) + read_jsonl(client, batch.error_file_id):
        body = dict(entry["response"]["body"])
        body.pop("created", None)
        found[entry["custom_id"]] = (entry["response"]["status_code"], body)
    return found


def test_a_batch_file_is_planned_at_upload_and_its_creates_reuse_the_plan(
    client: OpenAI, openai_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create answers at once: the file was planned when it was uploaded. A config
    changed since (a fault configured after the upload) is planned again, and applies."""
    plans: list[str] = []
    real_plan = emulator_module.plan_batch

    def counted(content: bytes, endpoint: str, config: EmulatorConfig) -> Any:
        plans.append(endpoint)
        return real_plan(content, endpoint, config)

    monkeypatch.setattr(emulator_module, "plan_batch", counted)
    lines = [chat_line(f"p{i:02d}", f"line {i}") for i in range(40)]
    lines[3]["body"]["messages"][0]["content"] += " [emulator:fail=500]"
    file_id = upload(client, lines)
    assert plans == [CHAT]  # planned at upload
    first, _ = wait(client, create(client, file_id, metadata={"n": "1"}).id)
    second, _ = wait(client, create(client, file_id).id)
    assert plans == [CHAT]  # both creates reused it
    assert first.request_counts.model_dump() == second.request_counts.model_dump()
    assert (first.request_counts.completed, first.request_counts.failed) == (39, 1)
    assert len(line_answers(client, first)) == 40
    assert line_answers(client, first) == line_answers(client, second)

    openai_emulator.admin({"cancel_seconds": 0.25})  # a config that plans the same
    replanned, _ = wait(client, create(client, file_id).id)
    assert plans == [CHAT, CHAT]  # another config: planned again, the same batch
    assert line_answers(client, replanned) == line_answers(client, first)
    assert replanned.request_counts.model_dump() == first.request_counts.model_dump()

    openai_emulator.admin({"line_fail_rate": 0.5, "seed": 7})  # a fault after the upload
    faulty, _ = wait(client, create(client, file_id).id)
    assert len(plans) == 3
    assert faulty.request_counts.failed > 1  # it applies
    assert faulty.request_counts.completed + faulty.request_counts.failed == 40


def test_a_file_of_another_endpoint_is_planned_again_at_create(client: OpenAI) -> None:
    """Planned at upload for its first line's url (chat); a create for embeddings plans
    it again, and every line is wrong for that endpoint."""
    file_id = upload(client, [chat_line("e0", "hi"), chat_line("e1", "there")])
    batch, _ = wait(client, create(client, file_id, endpoint="/v1/embeddings").id)
    assert batch.status == "failed"
    assert {e.code for e in batch.errors.data} >= {"invalid_url"}


def test_all_lines_failed_means_no_output_file(client: OpenAI) -> None:
    lines = [chat_line(f"x{i}", f"doomed {i} [emulator:fail=503]") for i in range(8)]
    batch, outputs, errors = run(client, lines)
    assert batch.status == "completed"
    assert batch.output_file_id is None and batch.error_file_id
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 8)
    assert batch.usage.total_tokens == 0
    assert outputs == [] and sorted(e["custom_id"] for e in errors) == [f"x{i}" for i in range(8)]
    assert {e["response"]["status_code"] for e in errors} == {503}


# --------------------------------------------------------------------------- expiry, cancel


def test_expiry_keeps_partial_results(manual: Callable[..., tuple[OpenAI, ManualClock]]) -> None:
    client, clock = manual(validating_seconds=1.0, lines_per_second=10.0, expire_after_seconds=2.0)
    lines = [chat_line(f"e{i:02d}", f"line {i}") for i in range(20)]
    t0 = clock.now
    batch = create(client, upload(client, lines))
    assert batch.expires_at == int(t0 + 2)
    clock.now = t0 + 1.5
    assert client.batches.retrieve(batch.id).status == "in_progress"
    clock.now = t0 + 60
    b = client.batches.retrieve(batch.id)
    assert b.status == "expired" and b.expired_at == int(t0 + 2)
    assert b.completed_at is None and b.finalizing_at is None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
        20,
        10,
        10,
    )
    outputs = read_jsonl(client, b.output_file_id)
    errors = read_jsonl(client, b.error_file_id)
    assert len(outputs) == 10 and len(errors) == 10
    assert Counter(r["custom_id"] for r in outputs + errors) == Counter(
        line["custom_id"] for line in lines
    )
    for entry in errors:
        assert entry["response"] is None
        assert entry["error"] == {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    # Cancelling an expired batch is a conflict, which the SDK must not retry.
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_expiry_on_the_shared_emulator(client: OpenAI, openai_emulator: Any) -> None:
    openai_emulator.admin({"lines_per_second": 40.0, "expire_after_seconds": 0.3})
    lines = [chat_line(f"s{i:02d}", f"line {i}") for i in range(40)]
    batch, outputs, errors = run(client, lines)
    assert batch.status == "expired"
    assert 0 < len(outputs) < 40
    assert len(outputs) + len(errors) == 40
    assert batch.request_counts.completed == len(outputs)


def test_cancel_keeps_lines_finished_before(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(validating_seconds=1.0, lines_per_second=10.0, cancel_seconds=1.0)
    lines = [chat_line(f"k{i:02d}", f"line {i}") for i in range(20)]
    t0 = clock.now
    batch = create(client, upload(client, lines))
    clock.now = t0 + 1.75
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at == int(t0 + 1.75)
    assert cancelling.request_counts.completed == 7
    clock.now = t0 + 2.5
    b = client.batches.retrieve(batch.id)
    assert b.status == "cancelling" and b.request_counts.completed == 7
    assert client.batches.cancel(batch.id).status == "cancelling"  # idempotent
    clock.now = t0 + 2.75
    b = client.batches.retrieve(batch.id)
    assert b.status == "cancelled" and b.cancelled_at == int(t0 + 2.75)
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
        20,
        7,
        0,
    )
    assert b.completed_at is None and b.error_file_id is None
    assert len(read_jsonl(client, b.output_file_id)) == 7
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(batch.id)
    assert info.value.response.headers["x-should-retry"] == "false"

    early = create(client, upload(client, lines))
    clock.now += 0.5
    client.batches.cancel(early.id)
    clock.now += 5
    b = client.batches.retrieve(early.id)
    assert b.status == "cancelled" and b.in_progress_at is None
    assert b.request_counts.total == 0 and b.output_file_id is None


# --------------------------------------------------------------------------- hold


def admin_post(client: OpenAI, path: str, body: Any) -> tuple[int, Any]:
    root = str(client.base_url).removesuffix("/").removesuffix("/v1")
    request = urllib.request.Request(
        f"{root}/_emulator/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def admin_held(client: OpenAI, batch_id: str) -> bool:
    root = str(client.base_url).removesuffix("/").removesuffix("/v1")
    _, _, body = raw_request(f"{root}/_emulator/batches")
    [entry] = [b for b in body["data"] if b["id"] == batch_id]
    held: bool = entry["emulator"]["held"]
    return held


def test_a_held_batch_answers_its_first_lines_and_waits_for_release(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(
        validating_seconds=1.0, lines_per_second=10.0, finalizing_seconds=1.0, hold_after_lines=3
    )
    lines = [chat_line(f"h{i:02d}", f"line {i}") for i in range(10)]
    t0 = clock.now
    batch = create(client, upload(client, lines))
    clock.now = t0 + 1.25
    early = client.batches.retrieve(batch.id)
    assert early.status == "in_progress" and early.request_counts.completed == 2
    assert not admin_held(client, batch.id)  # not at its hold point yet
    for hours in (1, 5, 23):  # however late the test reads, the batch waits
        clock.now = t0 + hours * 3600
        held = client.batches.retrieve(batch.id)
        assert held.status == "in_progress" and held.request_counts.completed == 3
        assert held.output_file_id is None and admin_held(client, batch.id)

    released_at = clock.now
    assert admin_post(client, "release", {}) == (200, {"released": [batch.id]})
    assert admin_post(client, "release", {}) == (200, {"released": []})  # nothing left held
    clock.now = released_at + 0.45  # the held lines follow at the same pace: 4 more
    going = client.batches.retrieve(batch.id)
    assert going.status == "in_progress" and going.request_counts.completed == 7
    assert not admin_held(client, batch.id)
    clock.now = released_at + 0.75
    assert client.batches.retrieve(batch.id).status == "finalizing"
    clock.now = released_at + 1.75
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 10
    assert done.completed_at == int(released_at + 1.7)
    answers = read_jsonl(client, done.output_file_id)
    assert sorted(a["custom_id"] for a in answers) == [f"h{i:02d}" for i in range(10)]
    assert all(a["response"]["body"]["created"] <= int(released_at + 0.7) for a in answers)


def test_a_held_batch_cancels_with_the_answers_it_had(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(validating_seconds=0, lines_per_second=10.0, hold_after_lines=4)
    lines = [chat_line(f"c{i:02d}", f"line {i}") for i in range(10)]
    held = create(client, upload(client, lines))
    other = create(client, upload(client, lines))
    clock.now += 3600
    client.batches.cancel(held.id)
    clock.now += 60
    cancelled = client.batches.retrieve(held.id)
    assert cancelled.status == "cancelled" and cancelled.request_counts.completed == 4
    assert len(read_jsonl(client, cancelled.output_file_id)) == 4
    # Release may name one batch; the cancelled one keeps what it had.
    assert admin_post(client, "release", {"batch": held.id}) == (200, {"released": [held.id]})
    assert admin_post(client, "release", {"batch": other.id}) == (200, {"released": [other.id]})
    clock.now += 1
    assert client.batches.retrieve(other.id).status == "completed"
    assert client.batches.retrieve(held.id).request_counts.completed == 4
    status, body = admin_post(client, "release", {"batch": 7})
    assert status == 400 and "batch" in body["error"]["message"]
    # A batch created once the hold is off runs straight through.
    client_config = admin_post(client, "config", {"hold_after_lines": None})
    assert client_config[0] == 200 and client_config[1]["hold_after_lines"] is None
    free = create(client, upload(client, lines))
    clock.now += 2
    assert client.batches.retrieve(free.id).status == "completed"


# --------------------------------------------------------------------------- expire, fail on demand


BATCH_EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def assert_expired_after(client: OpenAI, batch: Any, answered: int, total: int) -> None:
    """`batch` expired with `answered` of its `total` lines in the output file and the
    rest in the error file as `batch_expired`, as the completion window ends a batch."""
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.completed_at is batch.finalizing_at is batch.failed_at is None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (total, answered, total - answered)
    outputs = read_jsonl(client, batch.output_file_id)
    errors = read_jsonl(client, batch.error_file_id)
    assert len(outputs) == answered and all(o["response"]["status_code"] == 200 for o in outputs)
    assert len(errors) == total - answered
    assert all(e["response"] is None and e["error"] == BATCH_EXPIRED for e in errors)
    assert len({r["custom_id"] for r in outputs + errors}) == total


def test_expire_on_demand_ends_a_held_batch_with_what_it_answered(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(validating_seconds=0, lines_per_second=10.0, hold_after_lines=3)
    lines = [chat_line(f"x{i:02d}", f"line {i}") for i in range(10)]
    t0 = clock.now
    batch = create(client, upload(client, lines))
    other = create(client, upload(client, lines))
    clock.now = t0 + 3600
    assert client.batches.retrieve(batch.id).request_counts.completed == 3

    assert admin_post(client, "expire", {"batch": batch.id}) == (200, {"expired": [batch.id]})
    expired = client.batches.retrieve(batch.id)
    assert_expired_after(client, expired, 3, 10)
    assert expired.expired_at == int(t0 + 3600)
    assert expired.expires_at == int(t0 + 24 * 3600)  # still the window's end
    assert not admin_held(client, batch.id)
    assert client.batches.retrieve(other.id).status == "in_progress"  # only the one named

    # An ended batch cannot expire (409, not retried); an unknown one is not found (404).
    status, body = admin_post(client, "expire", {"batch": batch.id})
    assert status == 409
    assert body["error"]["message"] == "Cannot expire a batch with status 'expired'."
    status, body = admin_post(client, "expire", {"batch": "batch_nope"})
    assert status == 404
    assert body["error"]["message"] == "No batch found with id 'batch_nope'."
    assert body["error"]["type"] == "invalid_request_error"
    status, body = admin_post(client, "expire", {"batch": 7})
    assert status == 400 and "batch" in body["error"]["message"]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)

    # {} expires every batch still running, one still validating among them.
    client.batches.cancel(other.id)
    slow = admin_post(client, "config", {"validating_seconds": 5.0})
    assert slow[0] == 200
    running = create(client, upload(client, lines))
    clock.now += 1
    assert admin_post(client, "expire", {}) == (200, {"expired": [running.id]})
    never_ran = client.batches.retrieve(running.id)
    assert never_ran.status == "expired" and never_ran.in_progress_at is None
    assert never_ran.request_counts.total == 0
    assert never_ran.output_file_id is None and never_ran.error_file_id is None
    assert admin_post(client, "expire", {}) == (200, {"expired": []})
    assert client.batches.retrieve(other.id).status == "cancelled"  # cancelling: left alone


def test_expire_after_lines_expires_only_the_next_batches(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(validating_seconds=0, lines_per_second=10.0, finalizing_seconds=0)
    lines = [chat_line(f"n{i:02d}", f"line {i}") for i in range(10)]
    status, config = admin_post(
        client, "config", {"expire_after_lines": 4, "expire_next_batches": 1}
    )
    assert status == 200 and (config["expire_after_lines"], config["expire_next_batches"]) == (4, 1)
    t0 = clock.now
    invalid = create(client, upload(client, [b"not json"]))  # fails validation: not counted
    first = create(client, upload(client, lines))
    second = create(client, upload(client, lines))
    assert admin_post(client, "config", {})[1]["expire_next_batches"] == 0
    clock.now = t0 + 0.35
    assert client.batches.retrieve(first.id).status == "in_progress"
    clock.now = t0 + 3600
    assert client.batches.retrieve(invalid.id).status == "failed"
    expired = client.batches.retrieve(first.id)
    assert_expired_after(client, expired, 4, 10)
    assert expired.expired_at == int(t0 + 0.4)  # right after its fourth line
    assert client.batches.retrieve(second.id).request_counts.completed == 10

    # Null: every batch created from then on, but one of no more than N lines completes.
    admin_post(client, "config", {"expire_next_batches": None})
    t1 = clock.now
    both = [create(client, upload(client, lines)) for _ in range(2)]
    short = create(client, upload(client, lines[:4]))
    clock.now = t1 + 3600
    for batch in both:
        assert_expired_after(client, client.batches.retrieve(batch.id), 4, 10)
    assert client.batches.retrieve(short.id).status == "completed"
    status, body = admin_post(client, "config", {"expire_after_lines": -1})
    assert status == 400 and "expire_after_lines" in body["error"]["message"]


def test_batch_fail_next_fails_the_next_batches_at_validation(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(validating_seconds=1.0, finalizing_seconds=0)
    lines = [chat_line(f"f{i:02d}", f"line {i}") for i in range(5)]
    admin_post(client, "config", {"batch_fail_next": 1})
    t0 = clock.now
    file_id = upload(client, lines)
    failing = create(client, file_id)
    normal = create(client, upload(client, lines))
    assert failing.status == "validating" and failing.errors is None
    assert admin_post(client, "config", {})[1]["batch_fail_next"] == 0
    clock.now = t0 + 2
    failed = client.batches.retrieve(failing.id)
    assert failed.status == "failed" and failed.failed_at == int(t0 + 1)
    assert failed.errors is not None and failed.errors.object == "list"
    [error] = failed.errors.data
    assert (error.code, error.param, error.line) == ("invalid_request", None, None)
    assert error.message is not None and file_id in error.message
    assert failed.request_counts.total == 0 and failed.in_progress_at is None
    assert failed.output_file_id is None and failed.error_file_id is None
    base = str(client.base_url).rstrip("/")
    status, _, raw = raw_request(f"{base}/batches/{failing.id}", {"Authorization": "Bearer k"})
    assert status == 200
    assert_valid("Batch", raw)
    assert client.batches.retrieve(normal.id).status == "completed"
    status, _ = admin_post(client, "expire", {"batch": failing.id})
    assert status == 409


# --------------------------------------------------------------------------- listing


def test_list_batches_paginates_newest_first(client: OpenAI, openai_emulator: Any) -> None:
    file_id = upload(client, [chat_line("a", "hi")])
    ids = [create(client, file_id, metadata={"n": str(i)}).id for i in range(5)]
    newest_first = ids[::-1]

    assert [b.id for b in client.batches.list(limit=2)] == newest_first  # auto-pagination
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == newest_first[:2] and first.has_more is True
    page = client.batches.list(after=newest_first[1], limit=2)
    assert [b.id for b in page.data] == newest_first[2:4] and page.has_more is True
    last = client.batches.list(after=newest_first[3], limit=2)
    assert [b.id for b in last.data] == newest_first[4:] and last.has_more is False
    raw = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert (raw["object"], raw["first_id"], raw["last_id"]) == (
        "list",
        newest_first[0],
        newest_first[1],
    )
    for bad in (0, 101):
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=bad)

    admin = openai_emulator.batches()
    assert [(b["id"], b["metadata"]) for b in admin] == [
        (batch_id, {"n": str(4 - i)}) for i, batch_id in enumerate(newest_first)
    ]


# --------------------------------------------------------------------------- HTTP faults


def test_requests_without_a_key_get_401(client: OpenAI, openai_emulator: Any) -> None:
    url = f"{openai_emulator.base_url}/batches"
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        status, response_headers, body = raw_request(url, headers)
        assert status == 401
        assert response_headers["x-emulator"] == "batchline-openai"
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
    status, _, body = raw_request(url, {"Authorization": "Bearer sk-x"})
    assert status == 200 and body["object"] == "list"
    with pytest.raises(openai.AuthenticationError):
        client.batches.list(extra_headers={"Authorization": "Token sk-x"})


def test_429_is_retried_by_the_sdk(client: OpenAI, openai_emulator: Any) -> None:
    openai_emulator.admin({"api_error_next": 2, "api_error_status": 429})
    before = openai_emulator.stats()
    assert client.batches.list().data == []  # two 429s, then success, all inside the SDK
    after = openai_emulator.stats()
    assert after["injected_errors"] - before["injected_errors"] == 2
    assert after["api_requests"] - before["api_requests"] == 3

    openai_emulator.admin({"api_error_next": 1})
    with pytest.raises(openai.RateLimitError) as info:
        openai_emulator.client(max_retries=0).batches.list()
    assert info.value.response.headers["retry-after"] == "0"
    assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]

    openai_emulator.admin({"api_error_rate": 0.4, "api_error_status": 500})
    patient = openai_emulator.client(max_retries=12)
    file_id = upload(patient, [chat_line("a", "hi")])
    for _ in range(8):
        assert patient.files.retrieve(file_id).id == file_id
    assert openai_emulator.stats()["injected_errors"] > after["injected_errors"]


def test_admin_config_rejects_unknown_keys(openai_emulator: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        openai_emulator.admin({"no_such_knob": 1})
    assert info.value.code == 400
    with pytest.raises(urllib.error.HTTPError):
        openai_emulator.admin({"line_fail_rate": 2})
    assert openai_emulator.admin({"line_fail_rate": 0.5})["line_fail_rate"] == 0.5
    openai_emulator.reset()
    assert openai_emulator.admin({})["line_fail_rate"] == 0.0


# --------------------------------------------------------------------------- quotas

QUOTA_MODEL = "gpt-4.1-mini"
ORG = "org-batchlineEmulator0000000"


def token_lines(prefix: str, n: int, model: str = QUOTA_MODEL) -> list[dict[str, Any]]:
    """`n` lines of 2,000 characters each: 500 prompt tokens a line at ~4 characters a token."""
    return [chat_line(f"{prefix}{i}", "x" * 2000, model=model) for i in range(n)]


def admin_get(client: OpenAI, path: str) -> Any:
    root = str(client.base_url).removesuffix("/").removesuffix("/v1")
    status, _, body = raw_request(f"{root}/_emulator/{path}")
    assert status == 200, body
    return body


def enqueued(client: OpenAI, model: str = QUOTA_MODEL) -> tuple[int, int | None]:
    entry = admin_get(client, "quota")["openai"][model]
    return entry["enqueued_tokens"], entry["limit"]


def token_limit_message(model: str, limit: str) -> str:
    return (
        f"Enqueued token limit reached for {model} in organization {ORG}. Limit: {limit} "
        "enqueued tokens. Please try again once some in_progress batches have been completed."
    )


def assert_token_limit_failed(batch: Any, model: str, limit: str) -> None:
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors.object == "list"
    [error] = batch.errors.data
    assert (error.code, error.param, error.line) == ("token_limit_exceeded", None, None)
    assert error.message == token_limit_message(model, limit)
    assert batch.request_counts.total == 0 and batch.output_file_id is None


def test_a_batch_over_the_enqueued_token_limit_is_created_then_fails(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(
        validating_seconds=1.0,
        lines_per_second=10.0,
        finalizing_seconds=1.0,
        enqueued_token_limit=2500,
    )
    t0 = clock.now
    first = create(client, upload(client, token_lines("a", 3)))  # 1,500 tokens: fits
    assert enqueued(client) == (1500, 2500)  # held from validating on
    over = create(client, upload(client, token_lines("b", 3)))  # 1,500 more: 3,000 > 2,500
    assert over.status == "validating" and over.errors is None  # created, as OpenAI does
    assert enqueued(client) == (1500, 2500)  # a batch over the limit holds nothing
    clock.now = t0 + 1.1
    assert client.batches.retrieve(first.id).status == "in_progress"
    assert_token_limit_failed(client.batches.retrieve(over.id), QUOTA_MODEL, "2,500")
    assert enqueued(client) == (1500, 2500)

    clock.now = t0 + 2.2  # the first batch is finalizing: still enqueued
    assert client.batches.retrieve(first.id).status == "finalizing"
    assert enqueued(client) == (1500, 2500)
    clock.now = t0 + 2.5
    done = client.batches.retrieve(first.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    assert done.usage.input_tokens == 1500  # usage and the quota count alike
    assert enqueued(client) == (0, 2500)
    again = create(client, upload(client, token_lines("c", 3)))
    assert enqueued(client) == (1500, 2500)
    clock.now += 1.1
    assert client.batches.retrieve(again.id).status == "in_progress"
    quota = admin_get(client, "quota")
    assert quota["over_quota"] == 1


def test_enqueued_tokens_free_on_cancel_and_expiry(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(
        validating_seconds=1.0,
        lines_per_second=10.0,
        cancel_seconds=5.0,
        hold_after_lines=1,
        enqueued_token_limit=1500,
    )
    held = create(client, upload(client, token_lines("h", 3)))
    clock.now += 3600  # held in_progress however long: still enqueued
    assert client.batches.retrieve(held.id).status == "in_progress"
    assert enqueued(client) == (1500, 1500)
    blocked = create(client, upload(client, token_lines("x", 1)))
    client.batches.cancel(held.id)
    assert client.batches.retrieve(held.id).status == "cancelling"
    assert enqueued(client) == (0, 1500)  # OpenAI counts validating/in_progress/finalizing
    after_cancel = create(client, upload(client, token_lines("y", 3)))
    clock.now += 1.1
    assert_token_limit_failed(client.batches.retrieve(blocked.id), QUOTA_MODEL, "1,500")
    assert client.batches.retrieve(after_cancel.id).status == "in_progress"

    # A batch that expires gives its tokens back too.
    admin_post(client, "config", {"expire_after_seconds": 10.0})
    client.batches.cancel(after_cancel.id)
    clock.now += 5
    short = create(client, upload(client, token_lines("s", 3)))
    assert enqueued(client) == (1500, 1500)
    clock.now += 10
    assert client.batches.retrieve(short.id).status == "expired"
    assert enqueued(client) == (0, 1500)
    # A file that fails validation holds no tokens, even while validating.
    bad = create(client, upload(client, [*token_lines("v", 3), b"not json"]))
    assert enqueued(client) == (0, 1500)
    clock.now += 1.1
    assert client.batches.retrieve(bad.id).errors.data[0].code == "invalid_json_line"


def test_enqueued_token_limits_per_model(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(
        validating_seconds=1.0,
        hold_after_lines=0,  # every batch stays in_progress
        enqueued_token_limit={QUOTA_MODEL: 1500, "*": 600},
    )
    fits = create(client, upload(client, token_lines("m", 3)))
    other = create(client, upload(client, token_lines("o", 2, model="gpt-4o-mini")))  # 1,000
    small = create(client, upload(client, token_lines("p", 1, model="gpt-4o")))  # 500
    clock.now += 1.1
    assert client.batches.retrieve(fits.id).status == "in_progress"
    assert_token_limit_failed(client.batches.retrieve(other.id), "gpt-4o-mini", "600")
    assert client.batches.retrieve(small.id).status == "in_progress"
    assert admin_get(client, "quota")["openai"] == {
        "gpt-4.1-mini": {"enqueued_tokens": 1500, "limit": 1500},
        "gpt-4o": {"enqueued_tokens": 500, "limit": 600},
        "gpt-4o-mini": {"enqueued_tokens": 0, "limit": 600},
    }

    # Without "*", a model the object does not name has no limit.
    assert admin_post(client, "config", {"enqueued_token_limit": {"gpt-4o": 100}})[0] == 200
    big = create(client, upload(client, token_lines("q", 6, model="gpt-4o-mini")))
    capped = create(client, upload(client, token_lines("r", 1, model="gpt-4o")))
    clock.now += 1.1
    assert client.batches.retrieve(big.id).status == "in_progress"
    assert_token_limit_failed(client.batches.retrieve(capped.id), "gpt-4o", "100")
    assert enqueued(client, "gpt-4o-mini") == (3000, None)
    assert enqueued(client, "gpt-4.1-mini") == (1500, None)

    # One number limits every model alike.
    assert admin_post(client, "config", {"enqueued_token_limit": 2_000_000})[0] == 200
    assert enqueued(client, "gpt-4o") == (500, 2_000_000)


def test_quota_exceeded_next_fails_batches_under_the_limit(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(validating_seconds=1.0, hold_after_lines=0, quota_exceeded_next=1)
    forced = create(client, upload(client, token_lines("f", 2)))
    status, config = admin_post(client, "config", {"enqueued_token_limit": 10_000})
    assert status == 200 and config["quota_exceeded_next"] == 0
    ok = create(client, upload(client, token_lines("g", 2)))
    admin_post(client, "config", {"quota_exceeded_next": 1})
    forced_again = create(client, upload(client, token_lines("h", 2)))
    clock.now += 1.1
    # No limit set: the message names the tokens enqueued then, a limit it broke.
    assert_token_limit_failed(client.batches.retrieve(forced.id), QUOTA_MODEL, "0")
    assert client.batches.retrieve(ok.id).status == "in_progress"
    assert_token_limit_failed(client.batches.retrieve(forced_again.id), QUOTA_MODEL, "10,000")
    assert admin_get(client, "quota")["over_quota"] == 2
    assert enqueued(client) == (1000, 10_000)


def test_batch_creates_per_hour_answer_429_past_the_limit(
    manual: Callable[..., tuple[OpenAI, ManualClock]],
) -> None:
    client, clock = manual(batch_creates_per_hour=2)
    file_id = upload(client, [chat_line("a", "hi")])
    t0 = clock.now
    create(client, file_id)
    clock.now = t0 + 600
    create(client, file_id)
    clock.now = t0 + 1200
    with pytest.raises(openai.RateLimitError) as info:
        create(client, file_id)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "2400"  # when the first leaves
    assert info.value.body == {
        "message": f"Rate limit reached for batch creation in organization {ORG} on requests "
        "per hour: Limit 2, Used 2, Requested 1. Please try again in 2400s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert admin_get(client, "quota")["batch_creates"] == {
        "last_hour": 2,
        "limit": 2,
        "refused": 1,
    }
    clock.now = t0 + 3600  # the first create has left the hour
    create(client, file_id)
    assert len(client.batches.list().data) == 3
    with pytest.raises(openai.RateLimitError):
        create(client, file_id)
    admin_post(client, "config", {"batch_creates_per_hour": None})
    create(client, file_id)


@pytest.mark.parametrize(
    ("overrides", "wanted"),
    [
        ({"enqueued_token_limit": -1}, "config enqueued_token_limit must be >= 0"),
        ({"enqueued_token_limit": 1.5}, "config enqueued_token_limit must be an integer"),
        ({"enqueued_token_limit": "lots"}, "config enqueued_token_limit must be null, a number"),
        ({"enqueued_token_limit": True}, "config enqueued_token_limit must be null, a number"),
        ({"enqueued_token_limit": [5]}, "config enqueued_token_limit must be null, a number"),
        ({"enqueued_token_limit": {"gpt-4o": -5}}, "enqueued_token_limit.gpt-4o must be >= 0"),
        ({"enqueued_token_limit": {"gpt-4o": "5"}}, "enqueued_token_limit.gpt-4o must be a"),
        ({"enqueued_token_limit": {"": 5}}, "must name models by non-empty strings"),
        ({"batch_creates_per_hour": 0}, "config batch_creates_per_hour must be >= 1"),
        ({"quota_exceeded_next": -1}, "config quota_exceeded_next must be >= 0"),
        ({"quota_exceeded_next": None}, "config quota_exceeded_next must not be null"),
    ],
)
def test_quota_config_is_checked(
    openai_emulator: Any, client: OpenAI, overrides: dict[str, Any], wanted: str
) -> None:
    before = openai_emulator.admin({})
    status, body = admin_post(client, "config", overrides)
    assert status == 400
    assert wanted in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    assert openai_emulator.admin({}) == before  # nothing of a refused change applies


def test_quota_config_takes_numbers_and_objects(openai_emulator: Any) -> None:
    config = openai_emulator.admin({"enqueued_token_limit": {"gpt-4o": 9e4, "*": 2_000_000}})
    assert config["enqueued_token_limit"] == {"gpt-4o": 90_000, "*": 2_000_000}
    assert (
        openai_emulator.admin({"enqueued_token_limit": 40e6})["enqueued_token_limit"] == 40_000_000
    )
    assert openai_emulator.admin({"enqueued_token_limit": None})["enqueued_token_limit"] is None
    assert openai_emulator.admin({})["batch_creates_per_hour"] == 2000  # OpenAI's default


# --------------------------------------------------------------------------- schema


# Fields the spec lists as plain strings/integers but that the real API (and the spec's
# own `Batch` example, and the SDK's Optional[...] types) sends as null when unset.
NULLABLE = {
    "Batch": [
        "errors", "model", "output_file_id", "error_file_id", "in_progress_at",
        "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
        "cancelled_at",
    ],
    "OpenAIFile": ["expires_at", "status_details"],
    "ListBatchesResponse": ["first_id", "last_id"],
}  # fmt: skip
SPEC_URI = "urn:openai:openapi"


def _strict(node: Any) -> Any:
    """Objects with declared properties may carry no other keys."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and "unevaluatedProperties" not in node
        ):
            node["unevaluatedProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def _registry() -> Registry:
    with SPEC_PATH.open() as fh:
        spec = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert spec["openapi"].startswith("3.1")
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    for name, props in NULLABLE.items():
        for prop in props:
            original = schemas[name]["properties"][prop]
            schemas[name]["properties"][prop] = {"anyOf": [original, {"type": "null"}]}
    spec["components"]["schemas"] = _strict(schemas)
    return Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
    )


def validator(name: str) -> OAS31Validator:
    return OAS31Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=_registry())


def assert_valid(name: str, obj: Any) -> None:
    errors = sorted(validator(name).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]
    )


def assert_invalid(name: str, obj: Any) -> None:
    assert not validator(name).is_valid(obj), f"{name} accepted a mutated object"


def test_responses_match_the_openapi_spec(
    client: OpenAI, openai_emulator: Any, manual: Callable[..., tuple[OpenAI, ManualClock]]
) -> None:
    batches: list[dict] = []
    files: list[dict] = []
    lists: list[dict] = []
    bodies: dict[str, list[dict]] = {
        "CreateChatCompletionResponse": [],
        "CreateEmbeddingResponse": [],
        "ErrorResponse": [],
    }

    def raw(response: Any) -> dict:
        data: dict = response.http_response.json()
        return data

    # completed, with output and error files; chat answers with finish_reason stop/length
    lines = [chat_line(f"s{i}", f"schema {i}", max_completion_tokens=50 + i) for i in range(6)]
    lines[0]["body"]["max_completion_tokens"] = 2
    lines[1]["body"]["messages"][0]["content"] += " [emulator:fail=422]"
    upload_raw = client.files.with_raw_response.create(
        file=("s.jsonl", jsonl(lines)), purpose="batch"
    )
    files.append(raw(upload_raw))
    file_id = files[-1]["id"]
    created = raw(
        client.batches.with_raw_response.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h", metadata={"k": "v"}
        )
    )
    batches.append(created)
    done, _ = wait(client, created["id"])
    batches.append(raw(client.batches.with_raw_response.retrieve(done.id)))
    for fid in (done.output_file_id, done.error_file_id):
        files.append(raw(client.files.with_raw_response.retrieve(fid)))
    bodies["CreateChatCompletionResponse"] += [
        r["response"]["body"] for r in read_jsonl(client, done.output_file_id)
    ]
    bodies["ErrorResponse"] += [
        r["response"]["body"] for r in read_jsonl(client, done.error_file_id)
    ]
    assert {b["choices"][0]["finish_reason"] for b in bodies["CreateChatCompletionResponse"]} == {
        "stop",
        "length",
    }

    # failed validation
    bad = upload(client, [b"nope"])
    failed, _ = wait(client, create(client, bad).id)
    batches.append(raw(client.batches.with_raw_response.retrieve(failed.id)))
    assert batches[-1]["status"] == "failed"

    # embeddings, float and base64
    emb_lines = [
        {
            "custom_id": "e1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "hello", "dimensions": 4},
        },
        {
            "custom_id": "e2",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {
                "model": "text-embedding-3-small",
                "input": ["a", "b"],
                "encoding_format": "base64",
            },
        },
    ]
    emb, _ = wait(client, create(client, upload(client, emb_lines), endpoint="/v1/embeddings").id)
    assert emb.status == "completed" and emb.error_file_id is None
    emb_results = {r["custom_id"]: r for r in read_jsonl(client, emb.output_file_id)}
    assert len(emb_results["e1"]["response"]["body"]["data"][0]["embedding"]) == 4
    bodies["CreateEmbeddingResponse"].append(emb_results["e1"]["response"]["body"])
    # base64 vectors are strings, which the spec's `Embedding` (array of floats) does not
    # describe; check them by decoding instead.
    b64 = emb_results["e2"]["response"]["body"]["data"]
    assert [len(base64.b64decode(d["embedding"])) for d in b64] == [8 * 4, 8 * 4]

    # in_progress, cancelling, cancelled, expired (manual clock)
    mclient, clock = manual(
        validating_seconds=1.0, lines_per_second=2.0, cancel_seconds=1.0, expire_after_seconds=30.0
    )
    mfile = upload(mclient, [chat_line(f"m{i}", "x") for i in range(100)])
    t0 = clock.now
    to_cancel = create(mclient, mfile).id
    to_expire = create(mclient, mfile).id
    clock.now = t0 + 3
    batches.append(raw(mclient.batches.with_raw_response.retrieve(to_cancel)))
    batches.append(raw(mclient.batches.with_raw_response.cancel(to_cancel)))
    clock.now = t0 + 100
    batches.append(raw(mclient.batches.with_raw_response.retrieve(to_cancel)))
    batches.append(raw(mclient.batches.with_raw_response.retrieve(to_expire)))
    lists.append(raw(mclient.batches.with_raw_response.list(limit=1)))
    assert [b["status"] for b in batches[-4:]] == [
        "in_progress",
        "cancelling",
        "cancelled",
        "expired",
    ]
    lists.append(raw(client.batches.with_raw_response.list(limit=3)))
    lists.append(raw(client.batches.with_raw_response.list(after="batch_unknown")))
    statuses = {b["status"] for b in batches}
    assert {"validating", "completed", "failed", "in_progress", "expired", "cancelled"} <= statuses

    # API errors
    status, _, body = raw_request(f"{openai_emulator.base_url}/batches")
    assert status == 401
    bodies["ErrorResponse"].append(body)
    status, _, body = raw_request(
        f"{openai_emulator.base_url}/batches/batch_nope", {"Authorization": "Bearer k"}
    )
    assert status == 404
    bodies["ErrorResponse"].append(body)

    for b in batches:
        assert_valid("Batch", b)
    for f in files:
        assert_valid("OpenAIFile", f)
    for page in lists:
        assert_valid("ListBatchesResponse", page)
    for name, items in bodies.items():
        assert items, name
        for item in items:
            assert_valid(name, item)

    # The validator is not vacuous: mutated objects fail.
    good_batch, good_file = batches[1], files[0]
    good_chat = bodies["CreateChatCompletionResponse"][0]
    assert_invalid("Batch", {**good_batch, "status": "done"})
    assert_invalid("Batch", {**good_batch, "surprise": 1})
    assert_invalid("Batch", {k: v for k, v in good_batch.items() if k != "input_file_id"})
    assert_invalid("Batch", {**good_batch, "request_counts": {"total": 1, "completed": 1}})
    assert_invalid("Batch", {**good_batch, "created_at": "yesterday"})
    assert_invalid("OpenAIFile", {**good_file, "purpose": "batch-output"})
    assert_invalid("OpenAIFile", {k: v for k, v in good_file.items() if k != "bytes"})
    assert_invalid("ListBatchesResponse", {**lists[0], "data": [{**good_batch, "object": "x"}]})
    mutated_chat = copy.deepcopy(good_chat)
    mutated_chat["choices"][0]["message"]["role"] = "user"
    assert_invalid("CreateChatCompletionResponse", mutated_chat)
    mutated_chat = copy.deepcopy(good_chat)
    del mutated_chat["usage"]["total_tokens"]
    assert_invalid("CreateChatCompletionResponse", mutated_chat)
    assert_invalid("ErrorResponse", {"error": {"message": "m"}})


def test_every_response_is_marked(client: OpenAI, openai_emulator: Any) -> None:
    response = client.batches.with_raw_response.list()
    assert response.headers["x-emulator"] == "batchline-openai"
    status, headers, body = raw_request(
        f"{openai_emulator.root_url}/v1/unknown", {"Authorization": "Bearer k"}
    )
    assert status == 404 and headers["x-emulator"] == "batchline-openai"
    assert body["error"]["type"] == "invalid_request_error"
    status, headers, body = raw_request(f"{openai_emulator.root_url}/")  # health, no auth
    assert status == 200 and headers["x-emulator"] == "batchline-openai" and body["ok"] is True


# --------------------------------------------------------------------------- structured outputs


def schema_line(
    custom_id: str,
    text: str,
    schema: dict[str, Any] | None = RECIPE_SCHEMA,
    *,
    repair: bool = False,
) -> dict[str, Any]:
    """A chat line asking for JSON: `response_format` json_schema, or json_object when
    `schema` is None; a repair carries an earlier (wrong) answer and the feedback."""
    fmt: dict[str, Any] = {"type": "json_object"}
    if schema is not None:
        fmt = {"type": "json_schema", "json_schema": {"name": "recipe", "schema": schema}}
    line = chat_line(custom_id, text, response_format=fmt)
    if repair:
        line["body"]["messages"] += [
            {"role": "assistant", "content": '{"title": 7}'},
            {"role": "user", "content": "servings is required and title must be a string."},
        ]
    return line


def answers(outputs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r["response"]["body"] for r in outputs}


def content_of(body: dict[str, Any]) -> str:
    text: str = body["choices"][0]["message"]["content"]
    return text


def test_structured_outputs_answer_json_valid_for_the_schema(client: OpenAI) -> None:
    lines = [schema_line(f"s{i}", f"A recipe with {i} eggs") for i in range(6)]
    lines += [schema_line(f"j{i}", f"Reply in JSON, please ({i})", None) for i in range(2)]
    lines += [schema_line(f"r{i}", "A recipe again", repair=True) for i in range(2)]
    lines.append(chat_line("plain", "Just talk"))
    batch, outputs, errors = run(client, lines)
    assert batch.status == "completed" and errors == []
    bodies = answers(outputs)
    kinds = {}
    for line in lines:
        body = bodies[line["custom_id"]]
        assert_valid("CreateChatCompletionResponse", body)
        assert ChatCompletion.model_validate(body).choices[0].message.content == content_of(body)
        if line["custom_id"] == "plain":
            assert content_of(body).startswith(CONTENT_PREFIX)
            continue
        fmt = line["body"]["response_format"]
        kinds[line["custom_id"]] = answer_kind(
            content_of(body), fmt.get("json_schema", {}).get("schema")
        )
        assert body["choices"][0]["finish_reason"] == "stop"
        usage = body["usage"]
        assert usage["completion_tokens"] == math.ceil(len(content_of(body)) / 4)
        assert usage["prompt_tokens"] > bodies["plain"]["usage"]["prompt_tokens"]
    assert_kinds(kinds, "valid")
    recipes = [Recipe.model_validate_json(content_of(bodies[f"s{i}"])) for i in range(6)]
    assert len({r.model_dump_json() for r in recipes}) == 6  # each request its own value
    assert set(json.loads(content_of(bodies["j0"]))) == {"answer"}

    # Same requests, same answers.
    _, again, _ = run(client, lines)
    assert {k: content_of(v) for k, v in answers(again).items()} == {
        k: content_of(v) for k, v in bodies.items()
    }


def test_invalid_answer_rate_spoils_first_answers_only(
    client: OpenAI, openai_emulator: Any
) -> None:
    assert openai_emulator.admin({"invalid_answer_rate": 1.0})["invalid_answer_rate"] == 1.0
    lines = [schema_line(f"f{i}", f"Recipe {i}") for i in range(9)]
    lines += [schema_line(f"j{i}", f"JSON {i}", None) for i in range(3)]
    lines += [schema_line(f"r{i}", f"Recipe {i}", repair=True) for i in range(3)]
    lines.append(chat_line("plain", "Just talk"))
    batch, outputs, errors = run(client, lines)
    assert batch.status == "completed" and errors == []
    bodies = answers(outputs)
    first = {f"f{i}": answer_kind(content_of(bodies[f"f{i}"]), RECIPE_SCHEMA) for i in range(9)}
    assert_kinds(first, "invalid")
    assert Counter(first.values()) == {"wrong_type": 3, "missing_field": 3, "not_json": 3}
    json_mode = {f"j{i}": answer_kind(content_of(bodies[f"j{i}"]), None) for i in range(3)}
    assert "valid" not in json_mode.values() and "not_json" in json_mode.values()
    repairs = {f"r{i}": answer_kind(content_of(bodies[f"r{i}"]), RECIPE_SCHEMA) for i in range(3)}
    assert_kinds(repairs, "valid")
    assert content_of(bodies["plain"]).startswith(CONTENT_PREFIX)
    for body in bodies.values():
        assert_valid("CreateChatCompletionResponse", body)
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == math.ceil(len(content_of(body)) / 4)


def test_invalid_answer_rate_picks_by_custom_id(
    client: OpenAI, openai_emulator: Any, manual: Callable[..., tuple[OpenAI, ManualClock]]
) -> None:
    lines = [schema_line(f"p{i:02d}", "Recipe") for i in range(40)]
    openai_emulator.admin({"invalid_answer_rate": 0.5})

    def invalid_ids(outputs: list[dict[str, Any]]) -> set[str]:
        return {
            cid
            for cid, body in answers(outputs).items()
            if answer_kind(content_of(body), RECIPE_SCHEMA) != "valid"
        }

    picked = invalid_ids(run(client, lines)[1])
    assert 8 < len(picked) < 32
    assert invalid_ids(run(client, lines[::-1])[1]) == picked  # by custom_id, not position

    # The constructor takes it too; the default is 0: every answer valid.
    mclient, clock = manual(invalid_answer_rate=0.5, validating_seconds=0, finalizing_seconds=0)
    batch = create(mclient, upload(mclient, lines))
    clock.now += 60
    done = mclient.batches.retrieve(batch.id)
    assert invalid_ids(read_jsonl(mclient, done.output_file_id)) == picked
    openai_emulator.reset()
    assert invalid_ids(run(client, lines)[1]) == set()
    with pytest.raises(urllib.error.HTTPError):
        openai_emulator.admin({"invalid_answer_rate": 1.5})


def test_malformed_response_format_fails_the_line(client: OpenAI) -> None:
    bad = {
        "no-name": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "bad-type": {"type": "xml"},
        "no-spec": {"type": "json_schema"},
        "schema-not-object": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}},
    }
    lines = [chat_line(cid, "x", response_format=fmt) for cid, fmt in bad.items()]
    lines.append(chat_line("text", "x", response_format={"type": "text"}))
    _, outputs, errors = run(client, lines)
    assert [r["custom_id"] for r in outputs] == ["text"]
    assert content_of(outputs[0]["response"]["body"]).startswith(CONTENT_PREFIX)
    params = {e["custom_id"]: e["response"]["body"]["error"]["param"] for e in errors}
    assert params == {
        "no-name": "response_format.json_schema.name",
        "bad-type": "response_format.type",
        "no-spec": "response_format.json_schema",
        "schema-not-object": "response_format.json_schema.schema",
    }
    assert {e["response"]["status_code"] for e in errors} == {400}
