"""`batchline list` and `batchline results` against a "project" on the emulators (Firestore
and fake-gcs-server), through the same ports and services as the api function."""

# ruff: noqa: F811  (the fixtures of test_functions, imported, are parameters here)
from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from batchline.domain.models import Job, JobOptions, JobState, Source
from batchline_tools.cli import main

from .test_functions import Cloud, cloud, fresh  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def flags(cloud: Cloud) -> list[str]:
    return [
        "--project",
        cloud.project,
        "--input-bucket",
        cloud.input_bucket,
        "--output-bucket",
        cloud.output_bucket,
        "--work-bucket",
        cloud.env["BATCHLINE_WORK_BUCKET"],
    ]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def job(cloud: Cloud, n: int, state: JobState) -> Job:
    job_id = f"job-{n:08x}{uuid.uuid4().hex[:16]}"
    made = Job(
        job_id=job_id,
        source=Source(cloud.input_bucket, f"cli/{n}.jsonl", "1", 10),
        options=JobOptions(),
        output_prefix=f"gs://{cloud.output_bucket}/cli/{n}/{job_id}/",
        state=state,
        counts={"requests": n},
        created_at=1_800_000_000.0 + n,
    )
    assert cloud.store.create_job(made)
    return made


def test_list_shows_jobs_newest_first_with_state_and_limit(
    cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = [job(cloud, n, [JobState.RUNNING, JobState.SUCCEEDED][n % 2]) for n in range(5)]
    code, out, err = run(capsys, "list", "--json", *flags(cloud))
    assert code == 0, err
    listed = json.loads(out)
    assert [j["job_id"] for j in listed["jobs"]] == [j.job_id for j in reversed(jobs)]
    assert listed["next_cursor"] is None

    code, out, err = run(
        capsys, "list", "--state", "succeeded", "--limit", "1", "--json", *flags(cloud)
    )
    assert code == 0, err
    listed = json.loads(out)
    assert [j["job_id"] for j in listed["jobs"]] == [jobs[3].job_id]
    assert listed["next_cursor"]

    code, out, err = run(capsys, "list", "--state", "running", *flags(cloud))
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == [jobs[4].job_id, jobs[2].job_id, jobs[0].job_id]
    assert "running" in lines[0] and "4 requests" in lines[0]

    assert run(capsys, "list", "--limit", "101", *flags(cloud))[0] == 1
    code, out, _ = run(capsys, "list", "--state", "canceled", *flags(cloud))
    assert (code, out.strip()) == (0, "no jobs canceled")


def test_results_prints_the_lines_of_a_status(
    cloud: Cloud, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    running = job(cloud, 1, JobState.RUNNING)
    code, _, err = run(capsys, "results", running.job_id, *flags(cloud))
    assert code == 1 and "results come when it ends" in err

    done = job(cloud, 2, JobState.PARTIAL)
    lines = [
        {"custom_id": f"c{i}", "line": i + 1, "status": "failed" if i in (1, 4) else "succeeded"}
        for i in range(6)
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    cloud.blobs.write_bytes(done.results_uri, data, "application/jsonl")
    code, out, err = run(capsys, "results", done.job_id, *flags(cloud))
    assert code == 0, err
    assert out.encode() == data
    code, out, err = run(capsys, "results", done.job_id, "--status", "failed", *flags(cloud))
    assert code == 0, err
    assert [json.loads(x)["custom_id"] for x in out.splitlines()] == ["c1", "c4"]
    target = tmp_path / "failed.jsonl"
    code, _, err = run(
        capsys,
        "results",
        done.job_id,
        "--status",
        "failed",
        "--head",
        "1",
        "--out",
        str(target),
        *flags(cloud),
    )
    assert code == 0, err
    assert [json.loads(x)["custom_id"] for x in target.read_text().splitlines()] == ["c1"]

    elsewhere = job(cloud, 3, JobState.SUCCEEDED)
    cloud.store.update_job(elsewhere.job_id, lambda j: replace(j, output_prefix=done.output_prefix))
    code, _, err = run(capsys, "results", elsewhere.job_id, *flags(cloud))
    assert code == 1 and "no outputs this deployment can read" in err
