"""Follow-up rounds: retries, failover and their limits, on in-memory ports.

The decision table (`domain/rounds.py`) first, then whole jobs through submit → poll →
collect with two fake providers: `openai` (the line's model) and `vertex` (its fallback).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from batchline.bootstrap import Deps, Providers
from batchline.domain.models import BatchState, JobState
from batchline.domain.rounds import RoundReason, chain_after, next_step
from batchline.errors import ProviderError
from batchline.services.collect import collect
from batchline.services.poll import poll
from batchline.services.submit import ObjectFinalized, handle_object_finalized
from batchline_tools.memory import MemoryBlobStore, RecordingPublisher

from .fakes import CrashAfterSubmit, FakeClock, FakeProvider, make_deps

MSG = [{"role": "user", "content": "hi"}]
FIRST = "openai/gpt-4o-mini"
FALLBACK = "vertex/gemini-2.5-flash"


def failed(
    kind: str,
    *,
    retryable: bool,
    attempts: list[dict[str, Any]] | None = None,
    status: str = "failed",
    model: str = FIRST,
) -> dict[str, Any]:
    provider, _, name = model.partition("/")
    return {
        "status": status,
        "provider": provider,
        "model": name,
        "error": {"type": kind, "message": "x", "retryable": retryable},
        "attempts": attempts or [{"reason": "first", "provider": provider, "model": name}],
    }


# --- the decision table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "chain", "expected"),
    [
        # a passing failure is retried once at the same model, then fails over
        (failed("server_error", retryable=True), [FALLBACK], (RoundReason.RETRY, FIRST)),
        (
            failed(
                "server_error",
                retryable=True,
                attempts=[
                    {"reason": "first", "provider": "openai", "model": "gpt-4o-mini"},
                    {"reason": "retry", "provider": "openai", "model": "gpt-4o-mini"},
                ],
            ),
            [FALLBACK],
            (RoundReason.FAILOVER, FALLBACK),
        ),
        # expired lines are retried too
        (
            failed("batch_expired", retryable=False, status="expired"),
            [],
            (RoundReason.RETRY, FIRST),
        ),
        # a whole batch that failed is not retried: it fails over at once, or stands
        (failed("batch_failed", retryable=False), [FALLBACK], (RoundReason.FAILOVER, FALLBACK)),
        (failed("batch_failed", retryable=False), [], None),
        (failed("submit_failed", retryable=False), [FALLBACK], (RoundReason.FAILOVER, FALLBACK)),
        (failed("queue_timeout", retryable=False), [FALLBACK], (RoundReason.FAILOVER, FALLBACK)),
        # a lasting failure fails over without a retry
        (failed("invalid_request", retryable=False), [FALLBACK], (RoundReason.FAILOVER, FALLBACK)),
        # a canceled job is final
        (failed("job_canceled", retryable=False, status="canceled"), [FALLBACK], None),
        # the last model of the chain hands over to nobody
        (failed("invalid_request", retryable=False, model=FALLBACK), [FALLBACK], None),
        # a schema failure with no repairs left fails over
        (
            failed("schema_validation", retryable=False),
            [FALLBACK],
            (RoundReason.FAILOVER, FALLBACK),
        ),
        (
            {"status": "succeeded", "provider": "openai", "model": "m", "attempts": []},
            [FALLBACK],
            None,
        ),
    ],
)
def test_what_follows_a_result_line(
    record: dict[str, Any], chain: list[str], expected: tuple[RoundReason, str] | None
) -> None:
    step = next_step(record, chain, max_retries=1, repairs_left=False)
    assert (None if step is None else (step.reason, step.target)) == expected


def test_max_retries_zero_fails_over_at_once_and_chains_skip_the_current_model() -> None:
    step = next_step(
        failed("server_error", retryable=True), [FALLBACK], max_retries=0, repairs_left=False
    )
    assert step is not None and step.reason is RoundReason.FAILOVER
    assert chain_after("a/1", ["a/1", "b/2", "a/1", "c/3"]) == ("b/2", "c/3")
    assert chain_after("z/9", ["a/1", "b/2"]) == ("a/1", "b/2")
    assert chain_after("c/3", ["a/1", "b/2", "c/3"]) == ()


# --- whole jobs ---------------------------------------------------------------------------


def two_providers() -> tuple[Deps, FakeProvider, FakeProvider, FakeClock]:
    deps, first, clock = make_deps(max_requests=3)
    second = FakeProvider(clock)
    second.name, second.id_prefix = "vertex", "projects/p/batchPredictionJobs/"
    providers = Providers({"openai": lambda: first, "vertex": lambda: second})
    return replace(deps, providers=providers), first, second, clock


def line(**fields: object) -> bytes:
    return orjson.dumps({"model": FIRST, "messages": MSG, **fields})


def submit(deps: Deps, data: bytes, **metadata: str) -> str:
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    generation = blobs.put("gs://in/dir/in.jsonl", data)
    job = handle_object_finalized(
        deps, ObjectFinalized("in", "dir/in.jsonl", generation, len(data), metadata=metadata)
    )
    assert job is not None
    return job.job_id


def drive(deps: Deps, job_id: str, *fakes: FakeProvider, rounds: int = 6) -> list[dict[str, Any]]:
    """Poll, end every batch, collect: until the job ends; its result lines."""
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    for _ in range(rounds):
        poll(deps)
        for fake in fakes:
            for batch in fake.batches.values():
                if not batch.batch.state.ended:
                    batch.batch = replace(batch.batch, state=BatchState.COMPLETED)
        poll(deps)
        collect(deps, job_id)
        job = deps.store.get_job(job_id)
        assert job is not None
        if job.state.terminal:
            return [orjson.loads(x) for x in deps.blobs.read_bytes(job.results_uri).splitlines()]
    raise AssertionError(f"the job did not end: {deps.store.get_job(job_id)}")


def summary_of(deps: Deps, job_id: str) -> dict[str, Any]:
    job = deps.store.get_job(job_id)
    assert job is not None
    parsed: dict[str, Any] = orjson.loads(deps.blobs.read_bytes(job.summary_uri))
    return parsed


def ids(fake: FakeProvider) -> list[list[str]]:
    return [b.request_ids for b in fake.batches.values()]


def test_a_failing_line_is_retried_then_fails_over_and_every_attempt_is_listed() -> None:
    deps, first, second, _ = two_providers()
    job_id = submit(deps, b"\n".join(line() for _ in range(4)), fallback=FALLBACK)
    first.fail_ids = {"bl-2"}  # line 2 fails at OpenAI every time (a lasting 500)
    results = drive(deps, job_id, first, second)
    assert [r["status"] for r in results] == ["succeeded"] * 4
    moved = results[1]
    assert (moved["provider"], moved["model"]) == ("vertex", "gemini-2.5-flash")
    assert [(a["reason"], a["provider"], a["status"]) for a in moved["attempts"]] == [
        ("first", "openai", "failed"),
        ("retry", "openai", "failed"),
        ("failover", "vertex", "succeeded"),
    ]
    assert [len(x) for x in ids(first)] == [3, 1, 1]  # two chunks, then the retry
    assert ids(second) == [["bl-2"]]
    summary = summary_of(deps, job_id)
    providers = summary["providers"]
    assert providers["openai"] == {
        "sent": 5,
        "succeeded": 3,
        "failed": 2,
        "failed_over_from": 1,
        "failed_over_to": 0,
    }
    assert providers["vertex"]["failed_over_to"] == 1 and providers["vertex"]["succeeded"] == 1
    assert [(r["round"], r["reason"]) for r in summary["rounds"]] == [(1, "retry"), (2, "failover")]
    assert summary["counts"] == {"succeeded": 4}


def test_an_expired_line_is_retried_and_the_finished_ones_are_never_asked_again() -> None:
    deps, first, _, _ = two_providers()
    job_id = submit(deps, b"\n".join(line() for _ in range(3)))
    poll(deps)
    first.end(BatchState.EXPIRED, finished=2)
    results = drive(deps, job_id, first)
    assert [r["status"] for r in results] == ["succeeded"] * 3
    assert ids(first)[1] == [ids(first)[0][2]]  # only the unfinished one went again
    assert [a["status"] for a in results[2]["attempts"]] == ["expired", "succeeded"]
    assert len(results[0]["attempts"]) == 1


def test_without_retries_or_fallback_a_failure_stands_naming_its_error() -> None:
    deps, first, _, _ = two_providers()
    job_id = submit(deps, line(), max_retries="0")
    first.fail_ids = {"bl-1"}
    results = drive(deps, job_id, first)
    assert results[0]["status"] == "failed" and results[0]["error"]["type"] == "server_error"
    assert len(first.batches) == 1


def test_a_native_line_is_retried_but_says_it_cannot_fail_over() -> None:
    deps, first, second, _ = two_providers()
    native = orjson.dumps(
        {
            "custom_id": "n",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": MSG},
        }
    )
    job_id = submit(deps, native, fallback=FALLBACK)
    first.fail_ids = {"bl-1"}
    results = drive(deps, job_id, first, second)
    assert results[0]["status"] == "failed"
    assert "not failed over" in results[0]["error"]["message"]
    assert "provider-native" in results[0]["error"]["message"]
    assert len(results[0]["attempts"]) == 2 and second.batches == {}


def test_a_round_that_would_break_the_budget_is_not_sent_and_its_lines_say_so() -> None:
    deps, first, second, _ = two_providers()
    # The worst case of both lines, retried once at each model, fits $0.01 ...
    job_id = submit(
        deps,
        line(max_tokens=10) + b"\n" + line(max_tokens=10),
        fallback=FALLBACK,
        max_cost_usd="0.01",
    )
    job = deps.store.get_job(job_id)
    assert job is not None and job.state is not JobState.REJECTED
    # ... but line 1's answer bills far more than planned, and line 2 fails.
    first.usage = {"input_tokens": 200_000, "output_tokens": 10}
    first.fail_ids = {"bl-2"}
    results = drive(deps, job_id, first, second)
    assert sum(len(x) for x in ids(first)) == 2 and second.batches == {}  # no round
    assert results[0]["status"] == "succeeded"
    assert results[1]["status"] == "failed"
    assert "not sent again" in results[1]["error"]["message"]
    assert "max_cost_usd" in results[1]["error"]["message"]
    assert results[1]["error"]["type"] == "server_error"


def test_the_budget_counts_every_round_the_options_allow() -> None:
    deps, _, _, _ = two_providers()
    cheap = submit(deps, line(max_tokens=100), max_cost_usd="0.0001", max_retries="0")
    job = deps.store.get_job(cheap)
    assert job is not None and job.state is not JobState.REJECTED
    deps2, _, _, _ = two_providers()
    costly = submit(
        deps2, line(max_tokens=100), max_cost_usd="0.0001", max_retries="3", fallback=FALLBACK
    )
    job = deps2.store.get_job(costly)
    assert job is not None and job.state is JobState.REJECTED
    assert "retried 3 time(s)" in (job.error or "")


def test_a_canceled_job_starts_no_round() -> None:
    deps, first, second, _ = two_providers()
    job_id = submit(deps, line(), fallback=FALLBACK)
    first.fail_ids = {"bl-1"}
    poll(deps)
    job = deps.store.get_job(job_id)
    assert job is not None
    deps.store.update_job(job_id, lambda j: replace(j, cancel_requested_at=1.0))
    results = drive(deps, job_id, first, second)
    assert second.batches == {} and len(first.batches) == 1
    assert results[0]["status"] == "failed"


def test_a_crash_after_a_failover_batch_is_created_adopts_it_rather_than_sending_twice() -> None:
    deps, first, second, clock = two_providers()
    job_id = submit(deps, line(), fallback=FALLBACK, max_retries="0")
    first.fail_ids = {"bl-1"}
    poll(deps)
    first.end()
    poll(deps)
    collect(deps, job_id)  # the failover round is staged and committed
    second.crash_after_submit = True
    with pytest.raises(CrashAfterSubmit):
        poll(deps)  # dies after Vertex accepted the batch, before it is recorded
    assert len(second.batches) == 1
    clock.advance(deps.settings.lease_seconds + 1)
    results = drive(deps, job_id, first, second)
    assert len(second.batches) == 1, [(b.batch.tag, b.request_ids) for b in second.batches.values()]
    assert results[0]["status"] == "succeeded" and results[0]["provider"] == "vertex"


def queued(fake: FakeProvider) -> None:
    for batch in fake.batches.values():  # waiting for capacity: nothing has run
        batch.batch = replace(batch.batch, state=BatchState.QUEUED)
        batch.finished = set()


def test_a_batch_queued_past_max_queue_hours_is_cancelled_and_its_lines_fail_over() -> None:
    deps, first, second, clock = two_providers()
    job_id = submit(deps, line() + b"\n" + line(), fallback=FALLBACK, max_queue_hours="2")
    queued(first)
    poll(deps)
    clock.advance(3600)
    poll(deps)  # an hour queued: left alone
    assert all(b.batch.state is BatchState.QUEUED for b in first.batches.values())
    clock.advance(3601)
    dying = first.cancel
    calls: list[str] = []

    def cancel_fails_once(batch_id: str) -> None:
        calls.append(batch_id)
        if len(calls) == 1:
            raise ProviderError("the process dies before the cancel reaches OpenAI", retryable=True)
        dying(batch_id)

    first.cancel = cancel_fails_once  # type: ignore[method-assign]
    poll(deps)  # noted on the chunk, then the cancel fails
    [chunk] = deps.store.get_chunks(job_id)
    assert (chunk.error or "").startswith("queue_timeout")
    poll(deps)  # the next tick cancels
    assert calls == ["batch_0", "batch_0"]
    results = drive(deps, job_id, first, second)
    assert [r["provider"] for r in results] == ["vertex", "vertex"]
    assert results[0]["attempts"][0]["error"]["type"] == "queue_timeout"
    assert calls == ["batch_0", "batch_0"]  # asked once it was cancelling: never again


def test_a_fallback_that_cannot_take_the_line_is_passed_over_and_the_attempts_say_why() -> None:
    deps, first, second, _ = two_providers()
    # Anthropic takes temperatures up to 1 only: this line skips it for Vertex.
    job_id = submit(
        deps,
        line(temperature=1.5),
        fallback=f"anthropic/claude-haiku-4-5,{FALLBACK}",
        max_retries="0",
    )
    first.fail_ids = {"bl-1"}
    [result] = drive(deps, job_id, first, second)
    assert (result["status"], result["provider"]) == ("succeeded", "vertex")
    assert [(a["provider"], a["status"]) for a in result["attempts"]] == [
        ("openai", "failed"),
        ("anthropic", "skipped"),
        ("vertex", "succeeded"),
    ]
    assert "temperature" in result["attempts"][1]["error"]["message"]
    providers = summary_of(deps, job_id)["providers"]
    assert "anthropic" not in providers  # nothing was sent there
    assert providers["vertex"]["failed_over_to"] == 1


def test_a_line_no_fallback_can_take_keeps_its_failure_saying_why_per_model() -> None:
    deps, first, second, _ = two_providers()
    job_id = submit(
        deps, line(temperature=1.5), fallback="anthropic/claude-haiku-4-5", max_retries="0"
    )
    first.fail_ids = {"bl-1"}
    [result] = drive(deps, job_id, first, second)
    assert result["status"] == "failed" and result["error"]["type"] == "server_error"
    assert "not failed over: anthropic/claude-haiku-4-5: temperature" in result["error"]["message"]
    assert len(first.batches) == 1 and second.batches == {}


def test_the_cli_passes_retries_fallback_and_queue_hours_as_the_options_the_pipeline_reads() -> (
    None
):
    from batchline.domain import options
    from batchline_tools import cli

    argv = [
        "submit",
        "in.jsonl",
        "--max-retries",
        "2",
        "--fallback",
        f"{FALLBACK},anthropic/claude-haiku-4-5",
        "--max-queue-hours",
        "6",
    ]
    metadata = cli._job_options(cli._parser().parse_args(argv))
    parsed = options.from_metadata(metadata)
    assert parsed.max_retries == 2 and parsed.max_queue_hours == 6.0
    assert parsed.fallback == (FALLBACK, "anthropic/claude-haiku-4-5")


@pytest.mark.parametrize(
    ("metadata", "option"),
    [
        ({"max_retries": "9"}, "max_retries"),
        ({"max_retries": "-1"}, "max_retries"),
        ({"fallback": "openai/gpt-4o-mini,mistral/large"}, "fallback[1]"),
        ({"fallback": "gpt-4o-mini"}, "fallback[0]"),
        ({"max_queue_hours": "0"}, "max_queue_hours"),
        ({"max_queue_hours": "200"}, "max_queue_hours"),
        ({"max_queue_hours": "soon"}, "max_queue_hours"),
    ],
)
def test_bad_round_options_name_the_option(metadata: dict[str, str], option: str) -> None:
    from batchline.domain import options

    with pytest.raises(options.OptionError) as caught:
        options.from_metadata(metadata)
    assert caught.value.option == option


def test_the_api_takes_the_round_options_as_json_and_refuses_a_fallback_that_is_not_a_list() -> (
    None
):
    from batchline.domain import options

    parsed = options.from_api({"max_retries": 0, "fallback": [FALLBACK], "max_queue_hours": 1.5})
    assert (parsed.max_retries, parsed.fallback, parsed.max_queue_hours) == (0, (FALLBACK,), 1.5)
    with pytest.raises(options.OptionError) as caught:
        options.from_api({"fallback": FALLBACK})
    assert caught.value.option == "fallback"
