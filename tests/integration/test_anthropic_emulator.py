"""The Anthropic Message Batches emulator, driven through the official `anthropic` SDK.

Every object and result line the emulator serves here is also checked against the SDK's
own types, strictly (no unknown field, none missing): `served()` collects them.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import ToolUseBlock
from anthropic.types.messages import (
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchIndividualResponse,
)

from batchline_emulators._wsgi import start_in_thread
from batchline_emulators.anthropic import CONTENT_PREFIX, EmulatorConfig, make_app

from .anthropic_types import model_problems
from .conftest import WAIT_SECONDS, AnthropicEmulatorHandle, ManualClock, wait_held
from .emulator_answers import RECIPE_SCHEMA, Recipe, answer_kind, assert_kinds

pytestmark = pytest.mark.integration

MODEL = "claude-haiku-4-5"


# --------------------------------------------------------------------------- helpers


def request(custom_id: str, text: str, **params: Any) -> dict[str, Any]:
    params.setdefault("max_tokens", 256)
    return {
        "custom_id": custom_id,
        "params": {"model": MODEL, "messages": [{"role": "user", "content": text}], **params},
    }


class Served:
    """Raw JSON of everything the emulator answered, by SDK type, for the strict check."""

    def __init__(self) -> None:
        self.objects: list[tuple[type, Any]] = []

    def add(self, cls: type, data: Any) -> None:
        self.objects.append((cls, data))


def raw(client: anthropic.Anthropic, served: Served, cls: type, call: Callable[..., Any]) -> Any:
    """Call `call(client.with_raw_response...)`, record the raw JSON, return the parsed."""
    response = call(client.messages.batches.with_raw_response)
    served.add(cls, json.loads(response.text()))
    return response.parse()


def results(client: anthropic.Anthropic, served: Served, batch_id: str) -> list[dict[str, Any]]:
    """The raw result lines, checked for blank lines, each recorded for the SDK check."""
    with client.messages.batches.with_streaming_response.results(batch_id) as response:
        body = b"".join(response.iter_bytes())
    assert body.endswith(b"\n")
    lines = body.split(b"\n")[:-1]
    assert all(line.strip() for line in lines), "a blank line in the results"
    parsed = [json.loads(line) for line in lines]
    for line in parsed:
        served.add(MessageBatchIndividualResponse, line)
    # The SDK's own decoder reads the same stream.
    typed = list(client.messages.batches.results(batch_id))
    assert [t.custom_id for t in typed] == [p["custom_id"] for p in parsed]
    return parsed


def wait_ended(
    client: anthropic.Anthropic, served: Served, batch_id: str, timeout: float = WAIT_SECONDS
) -> tuple[Any, list[Any]]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        batch = raw(client, served, MessageBatch, lambda r: r.retrieve(batch_id))
        seen.append(batch)
        if batch.processing_status == "ended":
            return batch, seen
        assert time.monotonic() < deadline, f"batch still {batch.processing_status}"
        time.sleep(0.02)


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture(autouse=True)
def _clean(anthropic_emulator: AnthropicEmulatorHandle) -> Iterator[None]:
    anthropic_emulator.reset()
    yield


@pytest.fixture
def served() -> Iterator[Served]:
    """Everything served in the test; each object must be exactly its SDK type."""
    record = Served()
    yield record
    problems = [p for cls, data in record.objects for p in model_problems(cls, data)]
    assert problems == [], problems[:10]
    assert record.objects, "the test served nothing to check"


@pytest.fixture
def client(anthropic_emulator: AnthropicEmulatorHandle) -> anthropic.Anthropic:
    return anthropic_emulator.client()


@pytest.fixture
def manual() -> Iterator[Callable[..., tuple[anthropic.Anthropic, ManualClock, str]]]:
    """An emulator whose clock only moves when the test moves it."""
    stops = []

    def start(**config: Any) -> tuple[anthropic.Anthropic, ManualClock, str]:
        clock = ManualClock()
        root, stop = start_in_thread(make_app(EmulatorConfig(**config), clock=clock))
        stops.append(stop)
        return anthropic.Anthropic(api_key="k", base_url=root, max_retries=0), clock, root

    yield start
    for stop in stops:
        stop()


# --------------------------------------------------------------------------- lifecycle


def test_happy_path(client: anthropic.Anthropic, served: Served) -> None:
    reqs = [request(f"req-{i:03d}", f"Question {i}: what is {i} + {i}?") for i in range(30)]
    reqs[4]["params"]["max_tokens"] = 3
    reqs[5]["params"]["stop_sequences"] = ["answer"]
    reqs[6]["params"]["system"] = [{"type": "text", "text": "Be brief."}]
    created = raw(client, served, MessageBatch, lambda r: r.create(requests=reqs))
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 30
    assert (created.expires_at - created.created_at).total_seconds() == 24 * 3600
    batch, seen = wait_ended(client, served, created.id)

    for running in seen[:-1]:
        counts = running.request_counts
        assert (counts.processing, counts.succeeded, counts.errored) == (30, 0, 0)
    counts = batch.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 30, 0)
    assert (counts.canceled, counts.expired) == (0, 0)
    assert batch.ended_at is not None and batch.ended_at >= batch.created_at
    assert batch.cancel_initiated_at is None and batch.archived_at is None
    root = str(client.base_url).rstrip("/")
    assert batch.results_url == f"{root}/v1/messages/batches/{batch.id}/results"

    lines = results(client, served, batch.id)
    ids = [line["custom_id"] for line in lines]
    assert Counter(ids) == Counter(r["custom_id"] for r in reqs)
    assert ids != [r["custom_id"] for r in reqs], "results must not be in input order"
    by_id = {line["custom_id"]: line["result"] for line in lines}
    for r in reqs:
        result = by_id[r["custom_id"]]
        assert result["type"] == "succeeded"
        message = result["message"]
        assert message["model"] == MODEL and message["role"] == "assistant"
        assert message["usage"]["input_tokens"] > 0 and message["usage"]["service_tier"] == "batch"
    cut = by_id["req-004"]["message"]
    assert (cut["stop_reason"], cut["usage"]["output_tokens"]) == ("max_tokens", 3)
    stopped = by_id["req-005"]["message"]
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "answer")
    assert stopped["content"][0]["text"] == f"{CONTENT_PREFIX} "
    normal = by_id["req-010"]["message"]
    assert normal["stop_reason"] == "end_turn" and normal["stop_sequence"] is None
    assert normal["content"][0]["text"].startswith(f"{CONTENT_PREFIX} answer to: Question 10")

    # Same requests, same answers.
    again, _ = wait_ended(
        client, served, raw(client, served, MessageBatch, lambda r: r.create(requests=reqs)).id
    )
    answers = {line["custom_id"]: line["result"] for line in results(client, served, again.id)}
    assert {k: v["message"]["content"] for k, v in answers.items()} == {
        k: v["message"]["content"] for k, v in by_id.items()
    }


def test_counts_stay_at_processing_until_the_end(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, clock, root = manual(start_seconds=1.0, lines_per_second=10.0)
    reqs = [request(f"c{i}", f"line {i}") for i in range(20)]
    reqs[3]["params"]["messages"][0]["content"] += " [emulator:fail=500]"
    t0 = clock.now
    batch = client.messages.batches.create(requests=reqs)

    def at(offset: float) -> Any:
        clock.now = t0 + offset
        return client.messages.batches.retrieve(batch.id)

    for offset in (0.5, 1.5, 2.9):
        b = at(offset)
        assert b.processing_status == "in_progress" and b.ended_at is None
        assert b.request_counts.processing == 20 and b.request_counts.succeeded == 0
        assert b.results_url is None
        with pytest.raises(anthropic.AnthropicError):  # the SDK checks results_url first
            list(client.messages.batches.results(batch.id))
        status, _, body = http(
            "GET",
            f"{root}/v1/messages/batches/{batch.id}/results",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        )
        assert status == 404 and body["error"]["type"] == "not_found_error"
    b = at(3.0)
    assert b.processing_status == "ended"
    assert b.ended_at is not None and b.ended_at.timestamp() == t0 + 3.0
    assert (b.request_counts.succeeded, b.request_counts.errored) == (19, 1)


def test_params_are_checked_later_and_come_back_errored(
    client: anthropic.Anthropic, served: Served
) -> None:
    bad: dict[str, dict[str, Any]] = {
        "no-max-tokens": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        "temperature": {**request("t", "x")["params"], "temperature": 0.5},
        "unknown-key": {**request("u", "x")["params"], "frobnicate": 1},
        "bad-role": {**request("r", "x")["params"], "messages": [{"role": "tool", "content": "x"}]},
        "empty-messages": {**request("e", "x")["params"], "messages": []},
        "openai-block": {
            **request("o", "x")["params"],
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        "stream": {**request("s", "x")["params"], "stream": True},
        "metadata": {**request("m", "x")["params"], "metadata": {"team": "a"}},
    }
    reqs = [{"custom_id": name, "params": params} for name, params in bad.items()]
    reqs.append(request("fine", "all good"))
    created = raw(client, served, MessageBatch, lambda r: r.create(requests=reqs))  # no 400
    batch, _ = wait_ended(client, served, created.id)
    assert (batch.request_counts.errored, batch.request_counts.succeeded) == (len(bad), 1)
    by_id = {line["custom_id"]: line["result"] for line in results(client, served, batch.id)}
    expected_field = {
        "no-max-tokens": "max_tokens",
        "temperature": "temperature",
        "unknown-key": "frobnicate",
        "bad-role": "messages.0.role",
        "empty-messages": "messages",
        "openai-block": "messages.0.content.0.type",
        "stream": "stream",
        "metadata": "metadata.team",
    }
    for name, field in expected_field.items():
        result = by_id[name]
        assert result["type"] == "errored"
        error = result["error"]
        assert error["type"] == "error" and error["request_id"].startswith("req_")
        assert error["error"]["type"] == "invalid_request_error"
        assert field in error["error"]["message"], (name, error)
    assert by_id["fine"]["type"] == "succeeded"


def test_markers_and_rates_make_errored_and_expired_results(
    client: anthropic.Anthropic, served: Served, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    reqs = [
        request("m500", "boom [emulator:fail=500]"),
        request("m529", "busy [emulator:fail=529]"),
        request("m429", "slow down [emulator:fail=429]"),
        request("m400", "refused [emulator:fail=400]"),
        request("late", "too late [emulator:fail=expired]"),
        request("ok", "fine"),
    ]
    batch, _ = wait_ended(client, served, client.messages.batches.create(requests=reqs).id)
    by_id = {line["custom_id"]: line["result"] for line in results(client, served, batch.id)}
    kinds = {k: v["error"]["error"]["type"] for k, v in by_id.items() if v["type"] == "errored"}
    assert kinds == {
        "m500": "api_error",
        "m529": "overloaded_error",
        "m429": "rate_limit_error",
        "m400": "invalid_request_error",
    }
    assert by_id["late"] == {"type": "expired"} and by_id["ok"]["type"] == "succeeded"
    assert (batch.request_counts.errored, batch.request_counts.expired) == (4, 1)

    anthropic_emulator.admin({"errored_rate": 0.3, "expired_rate": 0.2})
    many = [request(f"r{i}", f"q {i}") for i in range(200)]
    batch, _ = wait_ended(client, served, client.messages.batches.create(requests=many).id)
    counts = batch.request_counts
    assert 30 < counts.errored < 90 and 15 < counts.expired < 70
    assert counts.succeeded + counts.errored + counts.expired == 200


def test_expiry_ends_the_batch_with_unfinished_requests_expired(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, clock, _ = manual(start_seconds=0.0, lines_per_second=10.0, expire_after_seconds=1.0)
    t0 = clock.now
    batch = client.messages.batches.create(requests=[request(f"x{i}", f"q {i}") for i in range(30)])
    assert (batch.expires_at.timestamp() - t0) == pytest.approx(1.0)
    clock.now = t0 + 0.99
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    clock.now = t0 + 5
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.ended_at == ended.expires_at
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (10, 20)
    lines = list(client.messages.batches.results(batch.id))
    assert Counter(line.result.type for line in lines) == {"succeeded": 10, "expired": 20}


def test_a_held_batch_stays_in_progress_until_released(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, clock, root = manual(start_seconds=1.0, lines_per_second=10.0, hold_after_lines=4)
    t0 = clock.now
    batch = client.messages.batches.create(requests=[request(f"h{i}", f"q {i}") for i in range(10)])
    for hours in (1, 12, 23):  # however late the test reads, the batch waits
        clock.now = t0 + hours * 3600
        seen = client.messages.batches.retrieve(batch.id)
        assert seen.processing_status == "in_progress" and seen.results_url is None
        assert wait_held(root, batch.id)["request_counts"]["processing"] == 10
    released_at = clock.now
    status, _, body = http("POST", f"{root}/_emulator/release", b"")
    assert (status, body) == (200, {"released": [batch.id]})
    clock.now = released_at + 0.55  # the 6 held requests follow at the same pace
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    clock.now = released_at + 0.65
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 10
    assert ended.ended_at is not None and ended.ended_at.timestamp() == pytest.approx(
        released_at + 0.6
    )

    held = client.messages.batches.create(requests=[request(f"c{i}", f"q {i}") for i in range(10)])
    clock.now += 3600
    client.messages.batches.cancel(held.id)
    clock.now += 60
    canceled = client.messages.batches.retrieve(held.id)
    assert (canceled.request_counts.succeeded, canceled.request_counts.canceled) == (4, 6)


def admin_post(root: str, path: str, body: Any) -> tuple[int, Any]:
    status, _, answer = http(
        "POST",
        f"{root}/_emulator/{path}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    return status, answer


def test_expire_on_demand_ends_a_held_batch_with_what_it_ran(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, clock, root = manual(start_seconds=0.0, lines_per_second=10.0, hold_after_lines=4)
    t0 = clock.now
    batch = client.messages.batches.create(requests=[request(f"x{i}", f"q {i}") for i in range(10)])
    other = client.messages.batches.create(requests=[request(f"o{i}", f"q {i}") for i in range(10)])
    clock.now = t0 + 3600
    assert admin_post(root, "expire", {"batch": batch.id}) == (200, {"expired": [batch.id]})
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.results_url is not None
    assert ended.ended_at is not None and ended.ended_at.timestamp() == pytest.approx(t0 + 3600)
    assert ended.expires_at.timestamp() == pytest.approx(t0 + 24 * 3600)  # still the window
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.expired, counts.errored) == (0, 4, 6, 0)
    lines = list(client.messages.batches.results(batch.id))
    assert Counter(line.result.type for line in lines) == {"succeeded": 4, "expired": 6}
    assert client.messages.batches.retrieve(other.id).processing_status == "in_progress"

    status, body = admin_post(root, "expire", {"batch": batch.id})
    assert status == 409 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "ended" in body["error"]["message"]
    status, body = admin_post(root, "expire", {"batch": "msgbatch_nope"})
    assert (status, body["error"]["type"]) == (404, "not_found_error")
    client.messages.batches.cancel(other.id)  # canceling: not expired by {}
    third = client.messages.batches.create(requests=[request(f"t{i}", f"q {i}") for i in range(10)])
    assert admin_post(root, "expire", {}) == (200, {"expired": [third.id]})
    status, body = admin_post(root, "expire", {"batch": other.id})
    assert status == 409 and "canceling" in body["error"]["message"]
    clock.now += 60
    canceled = client.messages.batches.retrieve(other.id).request_counts
    assert (canceled.succeeded, canceled.canceled, canceled.expired) == (4, 6, 0)


def test_expire_after_lines_expires_only_the_next_batches(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, clock, root = manual(start_seconds=0.0, lines_per_second=10.0)
    status, config = admin_post(root, "config", {"expire_after_lines": 3, "expire_next_batches": 1})
    assert status == 200 and config["expire_next_batches"] == 1
    t0 = clock.now
    reqs = [request(f"e{i}", f"q {i}") for i in range(10)]
    first = client.messages.batches.create(requests=reqs)
    second = client.messages.batches.create(requests=reqs)
    assert admin_post(root, "config", {})[1]["expire_next_batches"] == 0
    clock.now = t0 + 0.25
    assert client.messages.batches.retrieve(first.id).processing_status == "in_progress"
    clock.now = t0 + 3600
    expired = client.messages.batches.retrieve(first.id)
    assert expired.ended_at is not None and expired.ended_at.timestamp() == pytest.approx(t0 + 0.3)
    assert (expired.request_counts.succeeded, expired.request_counts.expired) == (3, 7)
    assert client.messages.batches.retrieve(second.id).request_counts.succeeded == 10


def test_cancel_then_delete(
    client: anthropic.Anthropic, served: Served, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    anthropic_emulator.admin({"hold_after_lines": 10})  # 10 answered, then it waits
    created = raw(
        client,
        served,
        MessageBatch,
        lambda r: r.create(requests=[request(f"k{i}", f"q {i}") for i in range(40)]),
    )
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(created.id)  # still processing
    anthropic_emulator.wait_held(created.id)
    canceling = raw(client, served, MessageBatch, lambda r: r.cancel(created.id))
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None and canceling.results_url is None
    assert canceling.request_counts.processing == 40
    batch, _ = wait_ended(client, served, created.id)
    counts = batch.request_counts
    assert (counts.succeeded, counts.canceled, counts.processing) == (10, 30, 0)
    lines = results(client, served, batch.id)
    assert Counter(line["result"]["type"] for line in lines) == {"succeeded": 10, "canceled": 30}
    assert all(line["result"] == {"type": "canceled"} for line in lines[10:])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.cancel(batch.id)  # ended: nothing to cancel

    deleted = raw(client, served, DeletedMessageBatch, lambda r: r.delete(batch.id))
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    assert batch.id not in {b.id for b in client.messages.batches.list(limit=100)}


# --------------------------------------------------------------------------- list


def test_list_pages_newest_first(client: anthropic.Anthropic, served: Served) -> None:
    ids = [
        client.messages.batches.create(requests=[request("a", f"batch {n}")]).id for n in range(7)
    ]
    newest_first = ids[::-1]
    first = client.messages.batches.with_raw_response.list(limit=3)
    body = json.loads(first.text())
    for item in body["data"]:
        served.add(MessageBatch, item)
    page = first.parse()
    assert set(body) == {"data", "has_more", "first_id", "last_id"}
    assert [b["id"] for b in body["data"]] == newest_first[:3]
    assert (body["has_more"], body["first_id"], body["last_id"]) == (
        True,
        newest_first[0],
        newest_first[2],
    )
    assert [b.id for b in page.data] == newest_first[:3]
    # The SDK pages on with after_id.
    assert [b.id for b in client.messages.batches.list(limit=3)] == newest_first
    after = client.messages.batches.list(limit=3, after_id=newest_first[2])
    assert [b.id for b in after.data] == newest_first[3:6] and after.has_more is True
    last = client.messages.batches.list(limit=3, after_id=newest_first[5])
    assert [b.id for b in last.data] == newest_first[6:] and last.has_more is False
    before = client.messages.batches.list(limit=2, before_id=newest_first[4])
    assert [b.id for b in before.data] == newest_first[2:4] and before.has_more is True
    assert before.first_id == newest_first[2] and before.last_id == newest_first[3]
    top = client.messages.batches.list(limit=5, before_id=newest_first[2])
    assert [b.id for b in top.data] == newest_first[:2] and top.has_more is False
    assert client.messages.batches.list(limit=1000).data[0].id == newest_first[0]
    for bad in (0, 1001):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.list(limit=bad)


# --------------------------------------------------------------------------- create errors


def test_custom_id_rule_is_enforced_at_create(client: anthropic.Anthropic) -> None:
    for custom_id in ("a/b", "ü-1", "x" * 65, "", "with space"):
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.batches.create(requests=[request(custom_id, "x")])
        assert "custom_id" in info.value.message
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.batches.create(requests=[request("same", "x"), request("same", "y")])
    assert "Duplicate custom_id" in info.value.message
    ok = client.messages.batches.create(requests=[request("A-z_0" + "9" * 59, "x")])
    assert ok.request_counts.processing == 1


def test_request_and_byte_limits(
    client: anthropic.Anthropic, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    anthropic_emulator.admin({"max_requests": 5, "max_bytes": 4000})
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.batches.create(requests=[request(f"r{i}", "x") for i in range(6)])
    assert "at most 5 items" in info.value.message
    with pytest.raises(anthropic.APIStatusError) as too_big:
        client.messages.batches.create(requests=[request("big", "x" * 5000)])
    assert too_big.value.status_code == 413
    assert too_big.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[])
    assert anthropic_emulator.stats()["creates"] == 0
    assert client.messages.batches.create(requests=[request("r", "x")]).id


def test_malformed_envelopes_are_refused(anthropic_emulator: AnthropicEmulatorHandle) -> None:
    url = f"{anthropic_emulator.root_url}/v1/messages/batches"
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    for body, field in (
        (b"not json", "JSON"),
        (b"[]", "dictionary"),
        (b'{"requests": [], "extra": 1}', "extra"),
        (b'{"requests": [{"custom_id": "a"}]}', "requests.0.params"),
        (b'{"requests": [{"custom_id": "a", "params": {}, "x": 1}]}', "requests.0.x"),
    ):
        status, _, answer = http("POST", url, body, headers)
        assert status == 400, body
        assert answer["type"] == "error" and field in answer["error"]["message"], answer


# --------------------------------------------------------------------------- auth, versions


@pytest.mark.parametrize(
    "auth", [{"x-api-key": "k"}, {"Authorization": "Bearer k"}], ids=["x-api-key", "bearer"]
)
@pytest.mark.parametrize("version", ["2023-06-01", "2026-10-21"])
def test_both_auth_headers_and_versions(
    anthropic_emulator: AnthropicEmulatorHandle, auth: dict[str, str], version: str
) -> None:
    url = f"{anthropic_emulator.root_url}/v1/messages/batches"
    status, headers, body = http("GET", url, headers={**auth, "anthropic-version": version})
    assert status == 200 and body["data"] == []
    assert headers["x-emulator"] == "batchline-anthropic" and headers["request-id"]


def test_missing_auth_or_version_is_refused(anthropic_emulator: AnthropicEmulatorHandle) -> None:
    url = f"{anthropic_emulator.root_url}/v1/messages/batches"
    status, _, body = http("GET", url, headers={"anthropic-version": "2023-06-01"})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    for version in (None, "yesterday", "2020-01-01"):
        headers = {"x-api-key": "k"}
        if version:
            headers["anthropic-version"] = version
        status, _, body = http("GET", url, headers=headers)
        assert status == 400 and "anthropic-version" in body["error"]["message"]
    # The SDK sends Bearer auth and its own (newer) version.
    client = anthropic.Anthropic(api_key="k", base_url=anthropic_emulator.root_url)
    assert client.messages.batches.list().data == []


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "kind"), [(429, "rate_limit_error"), (500, "api_error"), (529, "overloaded_error")]
)
def test_api_faults_are_retried_by_the_sdk(
    client: anthropic.Anthropic,
    anthropic_emulator: AnthropicEmulatorHandle,
    status: int,
    kind: str,
) -> None:
    anthropic_emulator.admin({"api_error_next": 2, "api_error_status": status})
    before = anthropic_emulator.stats()
    batch = client.messages.batches.create(requests=[request("a", "x")])
    after = anthropic_emulator.stats()
    assert after["injected_errors"] - before["injected_errors"] == 2
    assert after["creates"] == 1 and batch.id

    anthropic_emulator.admin({"api_error_rate": 1.0, "api_error_status": status})
    with pytest.raises(anthropic.APIStatusError) as info:
        anthropic_emulator.client(max_retries=0).messages.batches.retrieve(batch.id)
    assert info.value.status_code == status
    assert info.value.body["error"]["type"] == kind  # type: ignore[index]
    assert info.value.response.headers["retry-after-ms"] == "1"


def test_admin_endpoints(anthropic_emulator: AnthropicEmulatorHandle) -> None:
    root = anthropic_emulator.root_url
    status, _, body = http("GET", f"{root}/")
    assert status == 200 and body["emulator"] == "batchline-anthropic"
    config = anthropic_emulator.admin({"lines_per_second": 10})
    assert config["lines_per_second"] == 10.0
    status, _, body = http("POST", f"{root}/_emulator/config", b'{"nope": 1}')
    assert status == 400 and "unknown config keys: nope" in body["error"]["message"]
    client = anthropic_emulator.client()
    batch = client.messages.batches.create(requests=[request("a", "hi"), request("b", "yo")])
    [entry] = anthropic_emulator.batches()
    assert entry["id"] == batch.id
    assert entry["emulator"] == {
        "requests": 2,
        "models": [MODEL],
        "deleted": False,
        "held": False,
    }
    assert [r["custom_id"] for r in anthropic_emulator.requests(batch.id)] == ["a", "b"]
    anthropic_emulator.reset()
    assert anthropic_emulator.batches() == [] and anthropic_emulator.stats()["creates"] == 0
    assert anthropic_emulator.admin({})["lines_per_second"] == 2000.0


# --------------------------------------------------------------------------- quota

ORG = "batchline-emulator-org"


def batch_of(prefix: str, n: int) -> list[dict[str, Any]]:
    return [request(f"{prefix}{i}", f"q {i}") for i in range(n)]


def queue_message(limit: str, queued: str, wanted: str) -> str:
    return (
        f"This request would exceed the rate limit for your organization ({ORG}) of {limit} "
        f"batch requests in the processing queue: {queued} are queued and this batch has "
        f"{wanted}. For details, refer to: https://docs.claude.com/en/api/rate-limits. "
        "Please try again once some batches have ended."
    )


def refused(client: anthropic.Anthropic, requests: list[dict[str, Any]]) -> tuple[str, str]:
    """Create a batch that must be refused as over the queue limit: (message, retry-after)."""
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert info.value.status_code == 429
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    message: str = body["error"]["message"]
    return message, info.value.response.headers["retry-after"]


def queue_use(root: str) -> dict[str, Any]:
    status, _, body = http("GET", f"{root}/_emulator/quota")
    assert status == 200
    return body  # type: ignore[no-any-return]


def test_a_create_past_the_queue_limit_answers_429(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, clock, root = manual(
        start_seconds=1.0, lines_per_second=10.0, queued_request_limit=1_005
    )
    client.messages.batches.create(requests=batch_of("a", 3))  # type: ignore[arg-type]
    assert queue_use(root)["anthropic"] == {"queued_requests": 3, "limit": 1_005}
    clock.now += 0.5
    message, retry_after = refused(client, batch_of("b", 1_003))
    assert message == queue_message("1,005", "3", "1,003")
    assert retry_after == "1"  # the first batch is due to end 0.8 s later
    later = client.messages.batches.create(requests=batch_of("c", 2))  # type: ignore[arg-type]
    assert queue_use(root) == {
        "anthropic": {"queued_requests": 5, "limit": 1_005},
        "over_quota": 1,
    }
    clock.now += 1.5  # both batches have ended: the queue is empty
    assert client.messages.batches.retrieve(later.id).processing_status == "ended"
    assert queue_use(root)["anthropic"]["queued_requests"] == 0
    message, retry_after = refused(client, batch_of("d", 1_006))  # never fits: 60
    assert (message, retry_after) == (queue_message("1,005", "0", "1,006"), "60")


def test_the_queue_frees_when_a_batch_is_canceled_or_expires(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, clock, root = manual(
        start_seconds=0.0,
        hold_after_lines=0,  # every batch stays in_progress until it is canceled or expires
        cancel_seconds=5.0,
        expire_after_seconds=300.0,
        queued_request_limit=4,
    )
    held = client.messages.batches.create(requests=batch_of("h", 3))  # type: ignore[arg-type]
    clock.now += 100
    assert refused(client, batch_of("x", 2))[1] == "60"  # held: due to end at its expiry (200 s)
    client.messages.batches.cancel(held.id)
    clock.now += 1
    assert client.messages.batches.retrieve(held.id).processing_status == "canceling"
    assert queue_use(root)["anthropic"]["queued_requests"] == 3  # until it has ended
    assert refused(client, batch_of("x", 2))[1] == "4"
    clock.now += 4
    assert client.messages.batches.retrieve(held.id).processing_status == "ended"
    second = client.messages.batches.create(requests=batch_of("s", 4))  # type: ignore[arg-type]
    clock.now += 299
    message, retry_after = refused(client, batch_of("y", 1))
    assert message == queue_message("4", "4", "1") and retry_after == "1"
    clock.now += 1
    assert client.messages.batches.retrieve(second.id).request_counts.expired == 4
    client.messages.batches.create(requests=batch_of("y", 1))  # type: ignore[arg-type]
    assert queue_use(root) == {
        "anthropic": {"queued_requests": 1, "limit": 4},
        "over_quota": 3,
    }


def test_quota_exceeded_next_refuses_creates_with_room(
    manual: Callable[..., tuple[anthropic.Anthropic, ManualClock, str]],
) -> None:
    client, _, root = manual(quota_exceeded_next=1)
    assert refused(client, batch_of("f", 2)) == (queue_message("0", "0", "2"), "1")
    client.messages.batches.create(requests=batch_of("g", 2))  # type: ignore[arg-type]
    status, _, config = http("POST", f"{root}/_emulator/config", b'{"quota_exceeded_next": 1}')
    assert status == 200 and config["queued_request_limit"] is None
    http("POST", f"{root}/_emulator/config", b'{"queued_request_limit": 10}')
    assert refused(client, batch_of("h", 2)) == (queue_message("10", "2", "2"), "1")
    assert queue_use(root) == {"anthropic": {"queued_requests": 2, "limit": 10}, "over_quota": 2}


@pytest.mark.parametrize(
    ("overrides", "wanted"),
    [
        ({"queued_request_limit": -1}, "config queued_request_limit must be >= 0"),
        ({"queued_request_limit": 2.5}, "config queued_request_limit must be an integer"),
        ({"queued_request_limit": "many"}, "config queued_request_limit must be a number"),
        ({"queued_request_limit": {"claude-haiku-4-5": 5}}, "queued_request_limit must be a"),
        ({"quota_exceeded_next": -2}, "config quota_exceeded_next must be >= 0"),
    ],
)
def test_queue_config_is_checked(
    anthropic_emulator: AnthropicEmulatorHandle, overrides: dict[str, Any], wanted: str
) -> None:
    root = anthropic_emulator.root_url
    status, _, body = http("POST", f"{root}/_emulator/config", json.dumps(overrides).encode())
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert wanted in body["error"]["message"]
    assert anthropic_emulator.admin({})["queued_request_limit"] is None
    assert (
        anthropic_emulator.admin({"queued_request_limit": 1e5})["queued_request_limit"] == 100_000
    )


def test_command_line_serves_until_terminated(tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys

    from batchline_tools.local.processes import free_port

    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchline_emulators.anthropic",
            "--port",
            str(port),
            "--config-json",
            '{"lines_per_second": 3}',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                status, _, body = http("GET", f"http://127.0.0.1:{port}/_emulator/config")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert status == 200 and body["lines_per_second"] == 3.0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_SECONDS) == 0


# --------------------------------------------------------------------------- structured outputs

RECIPE_TOOL = {
    "name": "record_recipe",
    "description": "Record the recipe.",
    "input_schema": RECIPE_SCHEMA,
}


def tool_request(
    custom_id: str, text: str, *, repair: bool = False, choice: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A request forcing the recipe tool; a repair carries an earlier answer and feedback."""
    r = request(
        custom_id,
        text,
        tools=[RECIPE_TOOL],
        tool_choice=choice or {"type": "tool", "name": "record_recipe"},
    )
    if repair:
        r["params"]["messages"] += [
            {"role": "assistant", "content": '{"title": 7}'},
            {"role": "user", "content": "servings is required and title must be a string."},
        ]
    return r


def tool_answer_kind(message: dict[str, Any]) -> str:
    """valid / wrong_type / missing_field for a tool_use answer, not_json for a text one."""
    block = message["content"][0]
    if block["type"] == "text":
        assert message["stop_reason"] == "end_turn"
        return "not_json"
    assert block["type"] == "tool_use" and message["stop_reason"] == "tool_use"
    return answer_kind(json.dumps(block["input"]), RECIPE_SCHEMA)


def run_ended(client: anthropic.Anthropic, served: Served, reqs: list[Any]) -> dict[str, Any]:
    created = raw(client, served, MessageBatch, lambda r: r.create(requests=reqs))
    batch, _ = wait_ended(client, served, created.id)
    return {line["custom_id"]: line["result"] for line in results(client, served, batch.id)}


def test_a_forced_tool_is_answered_with_a_tool_use_block(
    client: anthropic.Anthropic, served: Served
) -> None:
    reqs = [tool_request(f"t{i}", f"A recipe with {i} eggs") for i in range(6)]
    reqs.append(tool_request("any", "Any tool will do", choice={"type": "any"}))
    reqs += [tool_request(f"r{i}", "A recipe again", repair=True) for i in range(2)]
    cut = tool_request("cut", "A recipe, briefly")
    cut["params"]["max_tokens"] = 5
    reqs.append(cut)
    auto = request("auto", "Talk or call", tools=[RECIPE_TOOL], tool_choice={"type": "auto"})
    reqs += [auto, request("plain", "Just talk")]
    by_id = run_ended(client, served, reqs)
    assert {r["type"] for r in by_id.values()} == {"succeeded"}

    kinds = {}
    for cid in [*(f"t{i}" for i in range(6)), "any", "r0", "r1"]:
        message = by_id[cid]["message"]
        kinds[cid] = tool_answer_kind(message)
        (block,) = message["content"]
        assert block["id"].startswith("toolu_") and block["name"] == "record_recipe"
        assert block["caller"] == {"type": "direct"}
        text = json.dumps(block["input"], separators=(",", ":"))
        assert message["usage"]["output_tokens"] == math.ceil(len(text) / 4)
        assert message["usage"]["input_tokens"] > by_id["plain"]["message"]["usage"]["input_tokens"]
        assert (
            model_problems(MessageBatchIndividualResponse, {"custom_id": cid, "result": by_id[cid]})
            == []
        )
    assert_kinds(kinds, "valid")
    inputs = [by_id[f"t{i}"]["message"]["content"][0]["input"] for i in range(6)]
    assert len({json.dumps(i, sort_keys=True) for i in inputs}) == 6
    for value in inputs:
        Recipe.model_validate(value)

    cut_message = by_id["cut"]["message"]
    assert cut_message["stop_reason"] == "max_tokens"
    assert cut_message["content"][0]["input"] == {} and cut_message["usage"]["output_tokens"] == 5
    for cid in ("auto", "plain"):
        message = by_id[cid]["message"]
        assert message["stop_reason"] == "end_turn"
        assert message["content"][0]["text"].startswith(CONTENT_PREFIX)

    # The SDK reads the same results as its own typed blocks.
    batch_id = client.messages.batches.list(limit=1).data[0].id
    typed = {line.custom_id: line.result for line in client.messages.batches.results(batch_id)}
    block = typed["t0"].message.content[0]  # type: ignore[union-attr]
    assert isinstance(block, ToolUseBlock) and block.input == inputs[0]


def test_invalid_answer_rate_spoils_first_tool_answers_only(
    client: anthropic.Anthropic, served: Served, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    anthropic_emulator.admin({"invalid_answer_rate": 1.0})
    reqs = [tool_request(f"f{i}", f"Recipe {i}") for i in range(9)]
    reqs += [tool_request(f"r{i}", f"Recipe {i}", repair=True) for i in range(3)]
    reqs.append(request("plain", "Just talk"))
    by_id = run_ended(client, served, reqs)
    first = {f"f{i}": tool_answer_kind(by_id[f"f{i}"]["message"]) for i in range(9)}
    assert_kinds(first, "invalid")
    assert Counter(first.values()) == {"wrong_type": 3, "missing_field": 3, "not_json": 3}
    for cid, kind in first.items():
        message = by_id[cid]["message"]
        if kind == "not_json":
            text = message["content"][0]["text"]
            assert message["usage"]["output_tokens"] == math.ceil(len(text) / 4)
            with pytest.raises(ValueError):
                json.loads(text)
    repairs = {f"r{i}": tool_answer_kind(by_id[f"r{i}"]["message"]) for i in range(3)}
    assert_kinds(repairs, "valid")
    assert by_id["plain"]["message"]["content"][0]["text"].startswith(CONTENT_PREFIX)


def test_invalid_answer_rate_picks_by_custom_id(
    client: anthropic.Anthropic, served: Served, anthropic_emulator: AnthropicEmulatorHandle
) -> None:
    reqs = [tool_request(f"p{i:02d}", "Recipe") for i in range(40)]

    def invalid_ids(by_id: dict[str, Any]) -> set[str]:
        return {cid for cid, r in by_id.items() if tool_answer_kind(r["message"]) != "valid"}

    assert invalid_ids(run_ended(client, served, reqs)) == set()  # the default is 0
    anthropic_emulator.admin({"invalid_answer_rate": 0.5})
    picked = invalid_ids(run_ended(client, served, reqs))
    assert 8 < len(picked) < 32
    assert invalid_ids(run_ended(client, served, reqs[::-1])) == picked


def test_tools_and_tool_choice_are_checked_later(
    client: anthropic.Anthropic, served: Served
) -> None:
    tool = RECIPE_TOOL
    bad: dict[str, dict[str, Any]] = {
        "unknown-tool": {"tools": [tool], "tool_choice": {"type": "tool", "name": "nope"}},
        "no-schema": {"tools": [{"name": "x"}], "tool_choice": {"type": "any"}},
        "array-schema": {"tools": [{"name": "x", "input_schema": {"type": "array"}}]},
        "no-tools": {"tool_choice": {"type": "any"}},
        "bad-choice": {"tools": [tool], "tool_choice": {"type": "always"}},
        "bad-name": {"tools": [{**tool, "name": "has space"}]},
    }
    reqs = [request(cid, "x", **params) for cid, params in bad.items()]
    by_id = run_ended(client, served, reqs)
    expected_field = {
        "unknown-tool": "tool_choice.tool.name",
        "no-schema": "tools.0.custom.input_schema",
        "array-schema": "tools.0.custom.input_schema.type",
        "no-tools": "tool_choice",
        "bad-choice": "tool_choice",
        "bad-name": "tools.0.custom.name",
    }
    for cid, field_name in expected_field.items():
        result = by_id[cid]
        assert result["type"] == "errored", (cid, result)
        assert result["error"]["error"]["type"] == "invalid_request_error"
        assert field_name in result["error"]["error"]["message"], (cid, result)
