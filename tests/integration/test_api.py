"""The api function's operations, each through functions-framework's app on the emulators
(Firestore, Pub/Sub, fake-gcs-server, the OpenAI emulator): list with filters and cursor
pagination, summary, results streamed (filters, offset, limit, bounded memory), estimate,
the served OpenAPI document, and the errors each gives.
"""

# ruff: noqa: F811  (the fixtures of test_functions, imported, are parameters here)
from __future__ import annotations

import json
import tracemalloc
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from openapi_spec_validator import validate

from batchline.domain.models import Job, JobOptions, JobState, Source
from batchline.services.api.openapi import CHECKED_IN
from batchline.services.api.routes import routes

from .test_functions import (  # noqa: F401  (fixtures)
    Cloud,
    Functions,
    api_post,
    cloud,
    fresh,
    functions,
    json_reply,
    request_line,
    results_of,
    run_to_end,
    summary_of,
)

pytestmark = pytest.mark.integration


def key() -> str:
    return f"api-{uuid.uuid4().hex}"


def get(fn: Functions, path: str, **query: Any) -> tuple[int, dict[str, Any]]:
    return json_reply(fn.api.get(path, query_string=query))


def stored_job(cloud: Cloud, n: int, *, created_at: float, **changes: Any) -> Job:
    """A job record as submit makes one (for listing: no input behind it)."""
    job_id = f"job-{n:08x}{uuid.uuid4().hex[:16]}"
    job = Job(
        job_id=job_id,
        source=Source(cloud.input_bucket, f"list/{n}.jsonl", "1", 10),
        options=JobOptions(model="openai/gpt-4.1-mini"),
        output_prefix=f"gs://{cloud.output_bucket}/list/{n}/{job_id}/",
        created_at=created_at,
        updated_at=created_at,
    )
    job = replace(job, **changes)
    assert cloud.store.create_job(job)
    return job


# ---------------------------------------------------------------------------------- list


def test_listing_250_jobs_page_by_page_is_newest_first_without_gaps_or_duplicates(
    functions: Functions, cloud: Cloud
) -> None:
    states = [JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED]
    jobs = []
    for n in range(250):
        labels = {"team": "a" if n % 2 else "b", "tier": str(n % 5)}
        # Ties on created_at (every third pair) are ordered by job id.
        jobs.append(
            stored_job(
                cloud,
                n,
                created_at=1_800_000_000.0 + n // 2,
                state=states[n % 3],
                options=JobOptions(labels=labels),
            )
        )
    newest_first = sorted(jobs, key=lambda j: (j.created_at, j.job_id), reverse=True)

    def walk(limit: int, **filters: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        for _ in range(300):
            query = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
            status, page = get(functions, "/v1/jobs", **query)
            assert status == 200, page
            assert len(page["jobs"]) <= limit
            seen += [j["job_id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("the listing never ended")

    listed = walk(7)
    assert listed == [j.job_id for j in newest_first]
    assert len(set(listed)) == 250

    after = datetime.fromtimestamp(1_800_000_000.0 + 20, UTC).isoformat()
    before = datetime.fromtimestamp(1_800_000_000.0 + 100, UTC).isoformat().replace("+00:00", "Z")
    expected = [
        j.job_id
        for j in newest_first
        if j.state is JobState.SUCCEEDED
        and j.options.labels == {"team": "a", "tier": "2"}
        and 1_800_000_020 < j.created_at < 1_800_000_100
    ]
    assert expected  # the filters keep some and drop others
    combined = {
        "state": "succeeded",
        "label.team": "a",
        "label.tier": "2",
        "created_after": after,
        "created_before": before,
    }
    assert walk(2, **combined) == expected
    assert walk(100, **{"label.team": "b"}) == [
        j.job_id for j in newest_first if j.options.labels["team"] == "b"
    ]
    assert walk(20, state="failed") == [
        j.job_id for j in newest_first if j.state is JobState.FAILED
    ]
    status, page = get(functions, "/v1/jobs")
    assert status == 200 and len(page["jobs"]) == 20  # the default limit


def test_a_sparse_second_label_gives_short_pages_that_still_cover_every_match(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firestore filters one label; the second is checked in code, reading at most
    LIST_SCAN_LIMIT documents a page: a page may come back short (or empty) with a
    cursor, and walking the cursors still finds every match once, newest first."""
    from batchline.adapters import firestore
    from batchline.ports import JobQuery

    monkeypatch.setattr(firestore, "LIST_SCAN_LIMIT", 4)
    jobs = [
        stored_job(
            cloud,
            n,
            created_at=1_800_000_000.0 + n,
            # Firestore filters the first label by key ("area"), the code the second.
            options=JobOptions(labels={"area": "a", "zone": "rare" if n % 7 == 0 else "no"}),
        )
        for n in range(30)
    ]
    query = JobQuery(labels={"area": "a", "zone": "rare"}, limit=2)
    seen: list[str] = []
    pages = 0
    while True:
        page = cloud.store.list_jobs(query)
        pages += 1
        assert len(page.jobs) <= 2
        seen += [j.job_id for j in page.jobs]
        if page.next_cursor is None:
            break
        query = replace(query, cursor=page.next_cursor)
    rare = [j.job_id for j in reversed(jobs) if j.options.labels["zone"] == "rare"]
    assert seen == rare
    assert pages > len(rare) // 2 + 1  # some pages were cut short by the scan limit


def test_listing_refuses_bad_parameters_and_foreign_cursors(
    functions: Functions, cloud: Cloud
) -> None:
    for n in range(3):
        stored_job(cloud, n, created_at=1_800_000_000.0 + n, state=JobState.RUNNING)
    status, page = get(functions, "/v1/jobs", limit=1)
    assert status == 200 and page["next_cursor"]
    cursor = page["next_cursor"]
    assert get(functions, "/v1/jobs", limit=1, cursor=cursor)[0] == 200

    tampered = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cursor": tampered}, "cursor"),
        ({"cursor": cursor, "state": "running"}, "cursor"),  # another listing's cursor
        ({"cursor": "not a cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"state": "sleeping"}, "state"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_after": "2026-13-01T00:00:00Z"}, "created_after"),
        ({"created_before": "2026-01-01T00:00:00"}, "created_before"),  # no offset
        ({"sort": "oldest"}, "sort"),
        ({"label.__x__": "v"}, "label.__x__"),
    ]
    for query, field in cases:
        status, body = get(functions, "/v1/jobs", **query)
        assert (status, body["error"]["field"]) == (400, field), (query, body)
        assert set(body) == {"error"} and body["error"]["message"]
    reply = functions.api.get("/v1/jobs?state=running&state=failed")
    assert json_reply(reply)[0] == 400 and json_reply(reply)[1]["error"]["field"] == "state"


def test_a_job_submitted_over_the_api_is_listed_and_found_by_its_labels(
    functions: Functions, cloud: Cloud
) -> None:
    body = {"requests": [request_line(0)], "options": {"labels": {"team": "search"}}}
    status, view = api_post(functions, body, key())
    assert status == 202, view
    status, page = get(functions, "/v1/jobs", **{"label.team": "search"})
    assert status == 200
    assert [j["job_id"] for j in page["jobs"]] == [view["job_id"]]
    assert page["jobs"][0] == {k: v for k, v in view.items() if k != "idempotency_key"}
    assert get(functions, "/v1/jobs", **{"label.team": "other"})[1]["jobs"] == []


# ------------------------------------------------------------------- summary and results


def test_summary_and_results_are_404_until_the_job_ends_then_served(
    functions: Functions, cloud: Cloud
) -> None:
    lines = [request_line(i, f"r{i}") for i in range(5)]
    lines[1]["messages"][0]["content"] += " [emulator:fail=500]"
    lines[3]["messages"][0]["content"] += " [emulator:fail=500]"
    lines.append({"custom_id": "bad", "model": "openai/gpt-4.1-mini"})  # no messages
    status, view = api_post(functions, {"requests": lines}, key())
    assert status == 202, view
    job_id = view["job_id"]
    for what in ("summary", "results"):
        status, body = get(functions, f"/v1/jobs/{job_id}/{what}")
        assert (status, body["error"]["field"]) == (404, "job_id"), body
        assert "accepted" in body["error"]["message"]

    done, _ = run_to_end(functions, cloud, job_id)
    assert done.state is JobState.PARTIAL, done.error
    reply = functions.api.get(f"/v1/jobs/{job_id}/summary")
    assert reply.status_code == 200 and reply.mimetype == "application/json"
    assert reply.get_json() == summary_of(cloud, done)

    expected = results_of(cloud, done)
    assert [r["status"] for r in expected] == [
        "succeeded",
        "failed",
        "succeeded",
        "failed",
        "succeeded",
        "invalid",
    ]

    def results(**query: Any) -> list[dict[str, Any]]:
        reply = functions.api.get(f"/v1/jobs/{job_id}/results", query_string=query)
        assert reply.status_code == 200, reply.get_data()[:300]
        assert reply.mimetype == "application/jsonl"
        return [json.loads(line) for line in reply.get_data().splitlines()]

    assert results() == expected
    failed = [r for r in expected if r["status"] == "failed"]
    assert [r["custom_id"] for r in results(status="failed")] == ["r1", "r3"]
    assert results(status="failed") == failed
    assert results(status="failed", offset=1) == failed[1:]
    assert results(status="failed", limit=1) == failed[:1]
    assert results(offset=2, limit=3) == expected[2:5]
    assert results(offset=10) == []
    assert results(status="expired") == []
    for query, field in (
        ({"status": "lost"}, "status"),
        ({"offset": -1}, "offset"),
        ({"limit": 0}, "limit"),
        ({"page": 2}, "page"),
    ):
        status, body = get(functions, f"/v1/jobs/{job_id}/results", **query)
        assert (status, body["error"]["field"]) == (400, field), body


def test_a_rejected_job_has_a_summary_and_no_results(functions: Functions, cloud: Cloud) -> None:
    name = f"{uuid.uuid4().hex[:8]}/empty.jsonl"
    cloud.upload(name, b"\n\n")
    status, view = api_post(functions, {"input_uri": f"gs://{cloud.input_bucket}/{name}"}, key())
    assert status == 202, view
    from .test_functions import poll_tick

    assert poll_tick(functions, cloud) == 200
    job = cloud.job(view["job_id"])
    assert job is not None and job.state is JobState.REJECTED
    status, summary = get(functions, f"/v1/jobs/{job.job_id}/summary")
    assert status == 200 and summary == summary_of(cloud, job)
    status, body = get(functions, f"/v1/jobs/{job.job_id}/results")
    assert status == 404 and "rejected" in body["error"]["message"]


def test_a_job_reaches_only_its_own_output_prefix(functions: Functions, cloud: Cloud) -> None:
    """A record naming outputs elsewhere (another bucket, another job's prefix) is not
    followed: 404, and nothing of the other place is served."""
    other = stored_job(cloud, 1, created_at=1.0, state=JobState.SUCCEEDED)
    cloud.blobs.write_bytes(other.summary_uri, b'{"secret": true}', "application/json")
    for prefix in (
        f"gs://{cloud.env['BATCHLINE_WORK_BUCKET']}/jobs/x/",
        other.output_prefix,  # another job's prefix, in the right bucket
    ):
        job = stored_job(cloud, 2, created_at=2.0, state=JobState.SUCCEEDED)
        cloud.store.update_job(job.job_id, lambda j, p=prefix: replace(j, output_prefix=p))
        for what in ("summary", "results"):
            status, body = get(functions, f"/v1/jobs/{job.job_id}/{what}")
            assert status == 404, body
            assert "secret" not in json.dumps(body)


@pytest.mark.timeout(600)
def test_results_of_a_200k_line_job_stream_in_bounded_memory(
    functions: Functions, cloud: Cloud
) -> None:
    """The api reads results.jsonl a block at a time and sends blocks of 64 KiB: Python's
    peak allocation while streaming a ~60 MB file stays under 32 MiB, whatever the file's
    size (the GCS client's 8 MiB download chunk, held twice while it is sliced, one 1 MiB
    read, one block, and the test client's own)."""
    lines = 200_000
    job = stored_job(cloud, 3, created_at=3.0, state=JobState.SUCCEEDED)
    filler = "x" * 220
    data = b"".join(
        json.dumps(
            {
                "custom_id": f"c{i}",
                "line": i + 1,
                "status": "failed" if i % 10 == 0 else "succeeded",
                "output": {"text": filler},
            }
        ).encode()
        + b"\n"
        for i in range(lines)
    )
    assert len(data) > 50_000_000
    cloud.blobs.write_bytes(job.results_uri, data, "application/jsonl")
    del data

    tracemalloc.start()
    try:
        reply = functions.api.get(f"/v1/jobs/{job.job_id}/results", buffered=False)
        assert reply.status_code == 200
        count = size = 0
        last = b""
        for block in reply.response:
            count += block.count(b"\n")
            size += len(block)
            last = block
        reply.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == lines and size > 50_000_000
    assert json.loads(last.splitlines()[-1])["custom_id"] == f"c{lines - 1}"
    print(f"streaming {size / 2**20:.0f} MiB: peak traced allocation {peak / 2**20:.1f} MiB")
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"

    reply = functions.api.get(
        f"/v1/jobs/{job.job_id}/results", query_string={"status": "failed", "offset": 19_990}
    )
    tail = [json.loads(line) for line in reply.get_data().splitlines()]
    assert [r["custom_id"] for r in tail] == [f"c{i}" for i in range(199_900, 200_000, 10)]


# -------------------------------------------------------------------------------- estimate


def test_estimate_plans_inline_lines_without_side_effects(
    functions: Functions, cloud: Cloud
) -> None:
    work = cloud.env["BATCHLINE_WORK_BUCKET"]
    before = list(cloud.blobs.list_prefix(f"gs://{work}/"))
    lines: list[Any] = [request_line(i, f"e{i}") for i in range(5)]
    lines.append({"custom_id": "no-messages", "model": "openai/gpt-4.1-mini"})
    lines.append(request_line(6, "e0"))  # a duplicate id
    lines.append({**request_line(7, "named"), "schema": "invoice"})  # a registered schema
    reply = functions.api.post("/v1/jobs:estimate", json={"requests": lines})
    status, body = json_reply(reply)
    assert status == 200, body
    assert (body["lines"], body["requests"], body["invalid"]) == (8, 6, 2)
    assert [(i["line"], i["custom_id"], i["field"]) for i in body["invalid_lines"]] == [
        (6, "no-messages", "messages"),
        (7, "e0", "custom_id"),
    ]
    # BATCHLINE_OPENAI_MAX_REQUESTS is 2 here: 6 requests make 3 batches.
    assert body["chunks"] == [
        {
            "provider": "openai",
            "model": "gpt-4.1-mini",
            "chunks": 3,
            "requests": 6,
            "bytes": body["chunks"][0]["bytes"],
        }
    ]
    assert body["chunks"][0]["bytes"] > 6 * 100
    cost = body["cost_usd"]
    assert 0 < cost["low"] < cost["high"] < cost["realtime_high"]
    assert body["estimate"]["requests"] == 6
    assert len(body["warnings"]) == 1 and "invoice" in body["warnings"][0]
    assert cloud.store.active_jobs() == []
    assert list(cloud.blobs.list_prefix(f"gs://{work}/")) == before
    assert cloud.emulator_batches("dry-run") == []


def test_estimate_of_an_input_object_follows_the_input_uri_rules(
    functions: Functions, cloud: Cloud
) -> None:
    name = f"{uuid.uuid4().hex[:8]}/est.jsonl"
    data = b"".join(json.dumps(request_line(i)).encode() + b"\n" for i in range(3)) + b"\n"
    cloud.upload(name, data)
    status, body = json_reply(
        functions.api.post(
            "/v1/jobs:estimate",
            json={"input_uri": f"gs://{cloud.input_bucket}/{name}", "options": {"labels": {}}},
        )
    )
    assert status == 200, body
    assert (body["lines"], body["blank_lines"], body["requests"]) == (3, 1, 3)
    for uri in (
        f"gs://{cloud.output_bucket}/{name}",
        f"gs://{cloud.env['BATCHLINE_WORK_BUCKET']}/inline/x.jsonl",
        f"gs://{cloud.input_bucket}/{name}.txt",
        f"gs://{cloud.input_bucket}/missing.jsonl",
    ):
        status, body = json_reply(functions.api.post("/v1/jobs:estimate", json={"input_uri": uri}))
        assert (status, body["error"]["field"]) == (400, "input_uri"), (uri, body)
    status, body = json_reply(
        functions.api.post("/v1/jobs:estimate", json={"requests": [request_line(0)] * 10_001})
    )
    assert (status, body["error"]["field"]) == (413, "requests")
    status, body = json_reply(
        functions.api.post("/v1/jobs:estimate", json={"requests": [{}], "budget": 1})
    )
    assert (status, body["error"]["field"]) == (400, "budget")
    status, body = json_reply(
        functions.api.post("/v1/jobs:estimate", data="x", headers={"Content-Type": "text/plain"})
    )
    assert status == 415


# ---------------------------------------------------------------------- create and openapi


def test_a_reused_key_with_another_body_is_a_422_naming_the_job(
    functions: Functions, cloud: Cloud
) -> None:
    the_key = key()
    status, first = api_post(functions, {"requests": [request_line(0, "one")]}, the_key)
    assert status == 202, first
    status, again = api_post(functions, {"requests": [request_line(0, "one")]}, the_key)
    assert (status, again["job_id"]) == (200, first["job_id"])
    status, body = api_post(functions, {"requests": [request_line(0, "two")]}, the_key)
    assert (status, body["error"]["type"]) == (422, "idempotency_key_reused")
    assert first["job_id"] in body["error"]["message"]


def test_pydantic_errors_come_out_in_the_one_error_shape(functions: Functions) -> None:
    for body, field in (
        ({"requests": "x"}, "requests"),
        ({"requests": []}, "requests"),
        ({"input_uri": 3}, "input_uri"),
        ({"requests": [{}], "options": {"labels": {"a": 1}}}, "options.labels.a"),
        ({"requests": [{}], "options": {"max_cost_usd": "2"}}, "options.max_cost_usd"),
        ({"requests": [{}], "options": []}, "options"),
        ([], "body"),
    ):
        status, reply = json_reply(functions.api.post("/v1/jobs", json=body))
        assert (status, reply["error"]["field"]) == (400, field), (body, reply)
        assert set(reply["error"]) == {"type", "message", "field"}
        text = json.dumps(reply)
        assert "validation error" not in text and "errors.pydantic.dev" not in text


def test_the_served_openapi_document_is_the_checked_in_one_and_valid(
    functions: Functions,
) -> None:
    reply = functions.api.get("/v1/openapi.json")
    assert reply.status_code == 200 and reply.mimetype == "application/json"
    served = reply.get_data()
    assert served == CHECKED_IN.read_bytes(), "run `make openapi` and commit the document"
    document = json.loads(served)
    validate(document)  # OpenAPI 3.1, with its JSON Schema dialect
    assert document["openapi"] == "3.1.0"
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert operations == {(r.method, r.path) for r in routes()}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            error = operation["responses"]["400"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
