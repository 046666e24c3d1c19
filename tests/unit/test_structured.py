"""Structured outputs on in-memory ports: validation on collect, repairs, one line each."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from batchline.bootstrap import Deps
from batchline.domain.models import Job, JobState, ProviderResult, ResultStatus
from batchline.ports import StagedPayload
from batchline.services.collect import collect
from batchline.services.poll import poll
from batchline.services.submit import handle_object_finalized
from batchline_tools.memory import RecordingPublisher

from .fakes import FakeClock, FakeProvider, make_deps
from .test_pipeline import upload

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
    },
    "required": ["name", "tags", "score"],
}
GOOD = {"name": "n", "tags": ["a"], "score": 3}
BAD = {"name": "n", "tags": ["a"], "score": 11}  # fails at $.score


class SchemaProvider(FakeProvider):
    """Answers every request with JSON: `bad` ids get an invalid first answer (their
    conversation has no assistant turn yet) and a valid one when asked again."""

    def __init__(self, clock: FakeClock, bad: set[str]) -> None:
        super().__init__(clock)
        self.bad = bad
        self.bad_always = False  # bad ids stay wrong when asked again
        self.pretty = False  # answer with indented JSON (newlines between tokens)
        self.turns: dict[tuple[str, str], int] = {}
        self.sent: list[dict[str, object]] = []

    def create_batch(self, payload: StagedPayload, tag, model, uploaded=None):  # type: ignore[no-untyped-def]
        batch = super().create_batch(payload, tag, model, uploaded)
        with payload.open() as stream:
            for raw in stream.read().splitlines():
                request = orjson.loads(raw)
                self.sent.append(request)
                messages = request["body"]["messages"]
                self.turns[(batch.batch_id, request["custom_id"])] = len(messages)
        return batch

    def iter_results(self, batch) -> Iterator[ProviderResult]:  # type: ignore[no-untyped-def]
        for result in super().iter_results(batch):
            first = self.turns[(batch.batch_id, result.request_id)] == 1
            spoiled = result.request_id in self.bad and (first or self.bad_always)
            answer = BAD if spoiled else GOOD
            yield ProviderResult(
                result.request_id,
                ResultStatus.SUCCEEDED,
                text=orjson.dumps(
                    answer, option=orjson.OPT_INDENT_2 if self.pretty else None
                ).decode(),
                finish_reason="stop",
                usage={"input_tokens": 10, "output_tokens": 5},
            )


def drive(deps: Deps, provider: FakeProvider, job_id: str, rounds: int = 5) -> None:
    publisher = deps.publisher
    assert isinstance(publisher, RecordingPublisher)
    for _ in range(rounds):
        provider.end()
        poll(deps)
        for message in publisher.on("batchline-collect"):
            collect(deps, message["job_id"])
        publisher.messages.clear()
        job = deps.store.get_job(job_id)
        if job is not None and job.state.terminal:
            return


def setup(bad: set[str]) -> tuple[Deps, SchemaProvider]:
    deps, _, clock = make_deps(max_requests=4)
    provider = SchemaProvider(clock, bad)
    deps.providers._factories["openai"] = lambda: provider  # type: ignore[attr-defined]
    deps.providers._clients.clear()  # type: ignore[attr-defined]
    return deps, provider


def lines(n: int) -> bytes:
    return b"\n".join(
        orjson.dumps(
            {
                "custom_id": f"c{i}",
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": f"doc {i}"}],
                "response_schema": {"name": "Doc", "schema": SCHEMA},
            }
        )
        for i in range(n)
    )


def run(deps: Deps, provider: SchemaProvider, data: bytes, **metadata: str) -> list[dict]:
    return run_job(deps, provider, data, **metadata)[1]


def run_job(
    deps: Deps, provider: SchemaProvider, data: bytes, **metadata: str
) -> tuple[Job, list[dict]]:
    job = handle_object_finalized(deps, upload(deps, data, metadata=metadata))
    assert job is not None
    drive(deps, provider, job.job_id)
    final = deps.store.get_job(job.job_id)
    assert final is not None and final.state.terminal
    results = [orjson.loads(x) for x in deps.blobs.read_bytes(final.results_uri).splitlines()]
    return final, results


def summary_of(deps: Deps, job: Job) -> dict:
    return orjson.loads(deps.blobs.read_bytes(job.summary_uri))


def test_valid_answers_are_parsed_and_the_request_carries_a_strict_schema() -> None:
    deps, provider = setup(bad=set())
    results = run(deps, provider, lines(5))
    assert [r["status"] for r in results] == ["succeeded"] * 5
    assert all(r["output"]["parsed"] == GOOD for r in results)
    assert all(len(r["attempts"]) == 1 for r in results)
    fmt = provider.sent[0]["body"]["response_format"]  # type: ignore[index]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False


def test_invalid_answers_are_asked_again_and_the_line_lists_both_attempts() -> None:
    deps, provider = setup(bad={"bl-2", "bl-7"})
    job, results = run_job(deps, provider, lines(9))
    assert len(results) == 9 and [r["custom_id"] for r in results] == [f"c{i}" for i in range(9)]
    assert [r["status"] for r in results] == ["succeeded"] * 9
    for r in results:
        again = r["line"] in (2, 7)
        assert len(r["attempts"]) == (2 if again else 1)
        assert r["output"]["parsed"] == GOOD
    first = results[1]["attempts"][0]
    assert first["status"] == "failed" and first["error"]["type"] == "schema_validation"
    assert first["error"]["path"] == "$.score" and '"score":11' in first["text"]
    assert results[1]["usage"] == {"input_tokens": 20, "output_tokens": 10}
    # The repair carried the answer and what was wrong with it.
    repairs = [s for s in provider.sent if len(s["body"]["messages"]) == 3]  # type: ignore[index]
    assert sorted(s["custom_id"] for s in repairs) == ["bl-2", "bl-7"]
    assert "$.score" in repairs[0]["body"]["messages"][2]["content"]  # type: ignore[index]
    summary = summary_of(deps, job)
    assert job.state is JobState.SUCCEEDED
    assert summary["counts"]["succeeded"] == 9 and summary["repaired"] == 2
    assert summary["usage"]["input_tokens"] == 110  # nine answers and two repairs


def test_without_repairs_invalid_answers_fail_naming_the_path() -> None:
    deps, provider = setup(bad={"bl-2"})
    job, results = run_job(deps, provider, lines(3), max_repair_attempts="0")
    assert [r["status"] for r in results] == ["succeeded", "failed", "succeeded"]
    error = results[1]["error"]
    assert error["type"] == "schema_validation" and error["path"] == "$.score"
    assert "maximum" in error["message"]
    assert results[1]["output"]["parsed"] is None and "11" in results[1]["output"]["text"]
    assert job.state is JobState.PARTIAL
    assert summary_of(deps, job)["errors"] == {"schema_validation": 1}


def test_a_registered_schema_that_is_missing_makes_the_line_invalid() -> None:
    deps, provider = setup(bad=set())
    data = orjson.dumps(
        {
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "x"}],
            "schema": "Nope",
        }
    )
    results = run(deps, provider, data)
    assert results[0]["status"] == "invalid" and results[0]["error"]["field"] == "schema"
    assert "no registered schema named 'Nope'" in results[0]["error"]["message"]


def test_a_registered_default_schema_applies_to_every_line() -> None:
    deps, provider = setup(bad=set())
    deps.blobs.write_bytes("gs://work/schemas/Doc.json", orjson.dumps(SCHEMA), "application/json")
    data = b"\n".join(
        orjson.dumps(
            {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        )
        for _ in range(2)
    )
    results = run(deps, provider, data, schema="Doc")
    assert [r["output"]["parsed"] for r in results] == [GOOD, GOOD]


@pytest.mark.parametrize("value", ["-1", "x", "9"])
def test_bad_option_metadata_rejects_the_job(value: str) -> None:
    deps, provider = setup(bad=set())
    job = handle_object_finalized(
        deps, upload(deps, lines(1), metadata={"max_repair_attempts": value})
    )
    assert job is not None and job.state is JobState.REJECTED
    assert "max_repair_attempts" in (job.error or "")
    assert provider.batches == {}


def test_a_duplicate_collect_starts_one_repair_round() -> None:
    deps, provider = setup(bad={"bl-1", "bl-5"})
    job = handle_object_finalized(deps, upload(deps, lines(6)))
    assert job is not None
    provider.end()
    poll(deps)
    collect(deps, job.job_id)
    collect(deps, job.job_id)  # the same message delivered again
    reopened = deps.store.get_job(job.job_id)
    assert reopened is not None and reopened.state is JobState.RUNNING
    chunks = deps.store.get_chunks(job.job_id)
    repairs = [c for c in chunks if c.round == 1]
    assert sum(c.request_count for c in repairs) == 2 and reopened.chunk_count == len(chunks)
    drive(deps, provider, job.job_id)
    final = deps.store.get_job(job.job_id)
    assert final is not None and final.state is JobState.SUCCEEDED
    assert len(provider.batches) == len(chunks)  # one batch per chunk, repairs included
    results = [orjson.loads(x) for x in deps.blobs.read_bytes(final.results_uri).splitlines()]
    assert [len(r["attempts"]) for r in results] == [2, 1, 1, 1, 2, 1]


def test_a_repair_that_fails_again_is_failed_with_every_attempt() -> None:
    deps, provider = setup(bad={"bl-3"})
    provider.bad_always = True
    results = run(deps, provider, lines(3), max_repair_attempts="2")
    assert [r["status"] for r in results] == ["succeeded", "succeeded", "failed"]
    attempts = results[2]["attempts"]
    assert [a["error"]["type"] for a in attempts] == ["schema_validation"] * 3
    assert len({a["batch_id"] for a in attempts}) == 3
    assert results[2]["usage"] == {"input_tokens": 30, "output_tokens": 15}


def test_an_answer_with_newlines_still_makes_one_line_with_its_parsed_object() -> None:
    deps, provider = setup(bad=set())
    provider.pretty = True
    job, results = run_job(deps, provider, lines(2))
    raw = deps.blobs.read_bytes(job.results_uri)
    assert raw.count(b"\n") == 2
    assert [r["output"]["parsed"] for r in results] == [GOOD, GOOD]
