"""Planning one file on the in-memory ports, and reading back what planning staged."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from batchline.bootstrap import Deps
from batchline.domain.models import Job, JobOptions, Source
from batchline.domain.paths import WorkPaths
from batchline.services.plan_file import Plan, build_plan
from batchline_tools.memory import MemoryBlobStore


@dataclass
class Planned:
    plan: Plan
    #: line number -> that line's invalid result line
    invalid: dict[int, dict[str, object]]
    #: (provider, model, line numbers) of each staged chunk, from its manifest
    chunks: list[tuple[str, str, list[int]]]

    @property
    def chunked_lines(self) -> list[int]:
        return sorted(n for _, _, numbers in self.chunks for n in numbers)


def plan_file(deps: Deps, data: bytes, options: JobOptions | None = None) -> Planned:
    blobs = deps.blobs
    assert isinstance(blobs, MemoryBlobStore)
    name = "fuzz/in.jsonl"
    generation = blobs.put(f"gs://in/{name}", data)
    job = Job(
        job_id=f"job-{generation}",
        source=Source("in", name, generation, len(data)),
        options=options or JobOptions(),
        output_prefix=f"gs://out/fuzz/in/job-{generation}/",
    )
    plan = build_plan(deps, job)
    paths = WorkPaths(deps.settings.work_bucket, job.job_id)
    invalid = {}
    for row in blobs.read_bytes(paths.invalid).splitlines():
        number, _, record = row.partition(b"\t")
        invalid[int(number)] = orjson.loads(record)
    chunks = []
    for chunk in plan.chunks:
        manifest = blobs.read_bytes(chunk.manifest_uri).splitlines()
        numbers = [orjson.loads(entry)["line"] for entry in manifest]
        assert len(blobs.read_bytes(chunk.payload_uri).splitlines()) == len(numbers)
        chunks.append((chunk.provider, chunk.model, numbers))
    return Planned(plan, invalid, chunks)
