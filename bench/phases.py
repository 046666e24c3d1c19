"""One benchmark phase in a fresh process, for its peak RSS: `python bench/phases.py PHASE ...`.

PHASE is `baseline` (import what the phases import, load nothing), `submit` (build_plan
on the input file) or `collect` (collect the job `submit` staged, from provider files the
parent generated), for the `--provider` the input's lines go to; `--max-repair-attempts`
is the submitted job's option (0 for inputs with schemas: collect finishes in one round).
Storage is `DiskBlobStore` under WORKDIR, so the fakes hold nothing in memory. Prints one
JSON object: wall and CPU seconds, peak RSS and what the phase produced.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import sys
import time
from pathlib import Path

# Import everything both phases use before anything is measured: the baseline process
# imports exactly this and stops.
import harness
import orjson

from batchline.domain.models import Chunk


def maxrss_bytes() -> int:
    """This process's peak RSS: VmHWM, the high-water mark of its own address space.

    Not `getrusage(RUSAGE_SELF).ru_maxrss`: on Linux that one carries the parent's RSS at
    fork over the exec, so a phase started from the (large) benchmark process would
    report the parent's size. ru_maxrss is the fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("baseline", "submit", "collect"))
    parser.add_argument("--input", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--provider", choices=sorted(harness.BENCH_PROVIDERS), default="openai")
    parser.add_argument("--max-repair-attempts", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("batchline").setLevel(logging.WARNING)
    gc.collect()
    report: dict[str, object] = {"phase": args.phase}
    if args.phase == "submit":
        report.update(_submit(args.input, args.workdir, args.max_repair_attempts))
    elif args.phase == "collect":
        report.update(_collect(args.workdir, args.provider))
    report["maxrss"] = maxrss_bytes()
    sys.stdout.buffer.write(orjson.dumps(report) + b"\n")


def _submit(input_path: Path, workdir: Path, max_repair_attempts: int | None) -> dict[str, object]:
    blobs = harness.DiskBlobStore(workdir / "blobs")
    generation = blobs.put_file(harness.input_uri(), input_path)
    deps = harness.make_deps(blobs)
    job = harness.make_job(generation, input_path.stat().st_size, max_repair_attempts)
    started, started_cpu = time.perf_counter(), time.process_time()
    plan = harness.submit_phase(deps, job)
    seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    (workdir / "job.json").write_bytes(
        orjson.dumps(
            {
                "job": job.to_dict(),
                "chunks": [c.to_dict() for c in plan.chunks],
                "plan": plan.record().to_dict(),
            }
        )
    )
    return {
        "seconds": seconds,
        "cpu": cpu,
        "plan": plan.record().to_dict(),
        "chunks": [
            {
                "index": c.index,
                "requests": c.request_count,
                "payload_bytes": c.payload_bytes,
                "payload_uri": c.payload_uri,
            }
            for c in plan.chunks
        ],
    }


def _collect(workdir: Path, provider_name: str) -> dict[str, object]:
    from batchline.domain.models import Job

    state = orjson.loads((workdir / "job.json").read_bytes())
    job = Job.from_dict(state["job"])
    chunks = [Chunk.from_dict(c) for c in state["chunks"]]
    files = [
        tuple(Path(name) for name in chunk_files)
        for chunk_files in orjson.loads((workdir / "provider.json").read_bytes())
    ]
    blobs = harness.DiskBlobStore(workdir / "blobs")
    provider = harness.BENCH_PROVIDERS[provider_name]()
    deps = harness.make_deps(blobs, provider)
    job = harness.ready_for_collect(deps, job, chunks, provider, files)
    started, started_cpu = time.perf_counter(), time.process_time()
    done = harness.collect_phase(deps, job)
    seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return {
        "seconds": seconds,
        "cpu": cpu,
        "state": str(done.state),
        "counts": done.counts,
        "results_path": str(blobs.path(done.results_uri)),
        "results_bytes": blobs.stat(done.results_uri)[1],
    }


if __name__ == "__main__":
    main()
