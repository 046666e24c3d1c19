"""The API's parts on in-memory ports: the route table, pydantic errors in the one error
shape, the OpenAPI document, job listing with cursors (the memory store), the dry run,
and pydantic staying out of the other functions' imports."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from batchline.domain.models import Job, JobOptions, JobState, ResultStatus, Source
from batchline.ports import InvalidCursor, JobQuery
from batchline.services import estimate
from batchline.services.api import estimates, models
from batchline.services.api.errors import BadRequest, TooLarge
from batchline.services.api.openapi import CHECKED_IN, document_bytes
from batchline.services.api.routes import find, routes
from batchline.services.api.validation import dotted, job_request
from batchline_tools.memory import MemoryJobStore

from .fakes import make_deps

ROOT = Path(__file__).resolve().parents[2]


def test_pydantic_is_imported_on_the_api_path_only() -> None:
    """The other functions' cold start does not pay for pydantic."""
    cases = {
        "batchline.entrypoints": False,
        "batchline.services.submit": False,
        "batchline.services.poll": False,
        "batchline.services.collect": False,
        "batchline.services.api.routes": True,
    }
    for module, expected in cases.items():
        code = f"import sys; import main, {module}; print('pydantic' in sys.modules)"
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT / "functions",
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == str(expected), (module, done.stderr)


def test_the_models_name_the_domains_states() -> None:
    assert set(typing.get_args(models.JobStateName)) == {str(s) for s in JobState}
    assert set(typing.get_args(models.ResultStatusName)) == {str(s) for s in ResultStatus}


def test_the_route_table_finds_operations_and_the_methods_a_path_allows() -> None:
    job = "job-" + "0" * 24
    route, params, _ = find("POST", f"/v1/jobs/{job}:cancel")
    assert route is not None and route.handler.__name__ == "cancel_job"
    assert params == {"job_id": job}
    route, params, _ = find("GET", f"/v1/jobs/{job}/results")
    assert route is not None and route.handler.__name__ == "get_results"
    assert find("POST", "/v1/jobs:estimate")[0] is not None
    assert find("DELETE", "/v1/jobs") == (None, {}, ["GET", "POST"])
    assert find("GET", f"/v1/jobs/{job}:cancel") == (None, {}, ["POST"])
    assert find("GET", "/v1/jobs/a:b") == (None, {}, [])
    assert find("GET", "/v2/jobs") == (None, {}, [])
    pairs = [(r.method, r.path) for r in routes()]
    assert len(pairs) == len(set(pairs))


def test_the_checked_in_openapi_document_is_the_generated_one() -> None:
    assert CHECKED_IN.read_bytes() == document_bytes(), "run `make openapi`"


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"requests": [{}], "option": 1}, "option", 400),
        ({"requests": [{}], "options": {"labels": {"a": 1}}}, "options.labels.a", 400),
        (
            {"requests": [{}], "options": {"max_repair_attempts": True}},
            "options.max_repair_attempts",
            400,
        ),
        ({"requests": [{}], "options": {"max_cost_usd": 0}}, "options.max_cost_usd", 400),
        ({"requests": [{}], "options": {"labels": {"__x__": "v"}}}, "options.labels.__x__", 400),
        ({"requests": [{}], "options": {"labels": {"a": "x" * 300}}}, "options.labels.a", 413),
        ({"input_uri": "http://x/y.jsonl"}, "input_uri", 400),
        ({"requests": [{}] * 10_001}, "requests", 413),
        ({}, None, 400),
        ({"requests": [{}], "input_uri": "gs://in/x.jsonl"}, None, 400),
        ("text", "body", 400),
        ({"requests": [{}], "options": {"prefer": "fast"}}, "options.prefer", 400),
        ({"requests": [{}], "options": {"candidates": ["a/b"]}}, "options.candidates", 400),
        ({"requests": [{}], "options": {"candidates": "a/b"}}, "options.candidates", 400),
        (
            {"requests": [{}], "options": {"candidates": ["openai/gpt-9"]}},
            "options.candidates",
            400,
        ),
    ],
)
def test_a_bad_job_body_names_the_field(body: object, field: str | None, status: int) -> None:
    with pytest.raises(BadRequest) as caught:
        job_request(body)
    assert caught.value.field == field
    assert isinstance(caught.value, TooLarge) == (status == 413)
    assert "pydantic" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_good_job_body_keeps_its_values() -> None:
    job = job_request(
        {"requests": [{"a": 1}], "options": {"schema": "invoice", "labels": {"t": "x"}}}
    )
    assert job.requests == [{"a": 1}]
    assert job.options.schema == "invoice" and job.options.labels == {"t": "x"}


def test_the_estimate_view_of_auto_lines_is_the_apis_model() -> None:
    deps = make_deps()[0]
    line = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    options = JobOptions(candidates=["vertex/gemini-2.5-flash", "openai/gpt-4o-mini"])
    found = estimate.dry_run(deps, estimate.inline_source([line, line]), options)
    view = estimates.EstimateView.model_validate(found.view(deps))
    assert [(c.model, c.requests) for c in view.auto] == [("openai/gpt-4o-mini", 2)]
    assert view.auto[0].reasons == {"cheapest of 2": 2}
    assert [(c.provider, c.model) for c in view.chunks] == [("openai", "gpt-4o-mini")]


def test_dotted_paths() -> None:
    assert dotted(("requests", 3, "body", "seed")) == "requests[3].body.seed"
    assert dotted(("options", "labels", "a")) == "options.labels.a"
    assert dotted(()) == ""


# ------------------------------------------------------------------------------ listing


def _job(n: int, created_at: float, **changes: object) -> Job:
    job = Job(
        job_id=f"job-{n:024x}",
        source=Source("in", f"{n}.jsonl", "1", 1),
        options=JobOptions(),
        output_prefix=f"gs://out/{n}/job-{n:024x}/",
        created_at=created_at,
    )
    return replace(job, **changes)  # type: ignore[arg-type]


def test_memory_listing_pages_newest_first_and_refuses_foreign_cursors() -> None:
    store = MemoryJobStore()
    for n in range(23):
        labels = {"team": "a" if n % 2 else "b", "tier": str(n % 3)}
        state = JobState.RUNNING if n % 4 else JobState.FAILED
        store.create_job(_job(n, float(n // 3), state=state, options=JobOptions(labels=labels)))
    expected = sorted(store.jobs.values(), key=lambda j: (j.created_at, j.job_id), reverse=True)

    def walk(query: JobQuery) -> list[str]:
        seen: list[str] = []
        while True:
            page = store.list_jobs(query)
            seen += [j.job_id for j in page.jobs]
            if page.next_cursor is None:
                return seen
            query = replace(query, cursor=page.next_cursor)

    assert walk(JobQuery(limit=4)) == [j.job_id for j in expected]
    labelled = JobQuery(labels={"team": "a", "tier": "1"}, state=JobState.RUNNING, limit=1)
    assert walk(labelled) == [
        j.job_id
        for j in expected
        if j.options.labels == {"team": "a", "tier": "1"} and j.state is JobState.RUNNING
    ]
    assert walk(JobQuery(created_after=2.0, created_before=5.0, limit=2)) == [
        j.job_id for j in expected if 2.0 < j.created_at < 5.0
    ]

    cursor = store.list_jobs(JobQuery(limit=2)).next_cursor
    assert cursor is not None
    for bad in (
        # A changed character inside (the last one may only carry base64 padding bits).
        JobQuery(limit=2, cursor=cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]),
        JobQuery(limit=2, cursor=cursor, state=JobState.FAILED),
        JobQuery(limit=2, cursor="%%%"),
        JobQuery(limit=2, cursor=""),
    ):
        with pytest.raises(InvalidCursor):
            store.list_jobs(bad)
    with pytest.raises(InvalidCursor):
        MemoryJobStore().list_jobs(JobQuery(limit=2, cursor=cursor))  # another store's
    with pytest.raises(ValueError):
        JobQuery(limit=0)
    with pytest.raises(ValueError):
        JobQuery(limit=101)


# ------------------------------------------------------------------------------ dry run


def test_a_dry_run_counts_lines_chunks_and_cost_and_writes_nothing() -> None:
    deps, provider, _ = make_deps(max_requests=2)
    line = {"model": "openai/gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}
    requests: list[object] = [dict(line, custom_id=f"r{i}") for i in range(5)]
    requests += [{"custom_id": "bad"}, "not an object", dict(line, custom_id="r0")]
    requests.append(dict(line, custom_id="named", schema="invoice"))
    found = estimate.dry_run(deps, estimate.inline_source(requests), JobOptions())
    assert (found.lines, found.requests, found.invalid) == (9, 6, 3)
    assert [(i.line, i.field) for i in found.invalid_lines][2] == (8, "custom_id")
    assert {k: v[:2] for k, v in found.chunks.items()} == {("openai", "gpt-4.1-mini"): [3, 6]}
    assert found.chunks[("openai", "gpt-4.1-mini")][2] > 6 * 50
    low, high = found.input_only_usd(deps), found.estimate.total_usd
    assert low is not None and high is not None and 0 < low < high
    assert found.unread_schemas == {"invoice"} and "invoice" in found.warnings()[0]
    assert deps.blobs.objects == {} and provider.batches == {}
    assert deps.store.jobs == {}
    many = [orjson.loads(orjson.dumps(line))] * 50
    assert (
        len(estimate.dry_run(deps, estimate.inline_source(many), JobOptions()).invalid_lines) == 0
    )
    bad = [{"custom_id": f"b{i}"} for i in range(30)]
    assert (
        len(estimate.dry_run(deps, estimate.inline_source(bad), JobOptions()).invalid_lines) == 20
    )
