"""`make run` / `make demo`: run the examples through the local stack and check them.

Each example must come back with exactly one result line per non-blank input line, in
input order, with the user's custom_ids, and with the status counts that
`examples/expected.json` names. The demo exits non-zero otherwise.
"""

from __future__ import annotations

import gzip
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchline_tools.local.stack import LocalStack, StackConfig

PREVIEW_LINES = 2


@dataclass
class ExampleRun:
    file: Path
    job_id: str
    problems: list[str] = field(default_factory=list)
    results_uri: str | None = None
    summary_uri: str | None = None
    preview: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _example_files(examples: Path) -> list[Path]:
    files = sorted(p for p in examples.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise SystemExit(f"no .jsonl or .jsonl.gz files in {examples}")
    return files


def _input_lines(file: Path) -> list[tuple[int, dict[str, Any] | None]]:
    """(line number, parsed object or None) for each non-blank line."""
    data = file.read_bytes()
    if file.name.endswith(".gz"):
        data = gzip.decompress(data)
    data = data.removeprefix(b"\xef\xbb\xbf")
    out: list[tuple[int, dict[str, Any] | None]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        out.append((number, obj if isinstance(obj, dict) else None))
    return out


def check(
    run: ExampleRun,
    results: list[dict[str, Any]],
    summary: dict[str, Any],
    expected: dict[str, Any] | None,
) -> None:
    inputs = _input_lines(run.file)
    problems = run.problems
    if len(results) != len(inputs):
        problems.append(f"{len(results)} result lines for {len(inputs)} input lines")
    for (number, obj), result in zip(inputs, results, strict=False):
        if result.get("line") != number:
            problems.append(
                f"result for line {result.get('line')} where line {number} was expected"
            )
            break
        given = obj.get("custom_id") if obj else None
        if obj and given is None and "request" in obj:
            given = obj.get("key")  # a Vertex native line's own id
        if isinstance(given, str) and result.get("custom_id") != given:
            problems.append(
                f"line {number}: custom_id {result.get('custom_id')!r}, expected {given!r}"
            )
    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    run.counts = counts
    if summary.get("counts") != counts:
        problems.append(f"summary counts {summary.get('counts')} differ from results {counts}")
    if expected is not None and expected.get("counts") != counts:
        problems.append(f"counts {counts}, expected {expected.get('counts')}")


def run_demo(examples: Path, *, run_dir: str | None, timeout: float, stay: bool) -> int:
    from batchline.adapters.firestore import FirestoreJobStore
    from batchline.adapters.firestore import make_client as firestore_client
    from batchline.adapters.gcs import GcsBlobStore
    from batchline.adapters.gcs import make_client as gcs_client
    from batchline.config import Settings
    from batchline_tools.deployment import upload

    files = _example_files(examples)
    expected_path = examples / "expected.json"
    expected = orjson.loads(expected_path.read_bytes()) if expected_path.exists() else {}

    owned: LocalStack | None = None
    if LocalStack.is_running(run_dir):
        stack = LocalStack.attach(run_dir)
        print(f"using the local stack running in {stack.run_dir}")
    else:
        config = StackConfig(run_dir=Path(run_dir)) if run_dir else StackConfig()
        print(
            "starting the local stack (Firestore, Pub/Sub, GCS, OpenAI, Anthropic and Vertex AI "
            "emulators, functions)…"
        )
        started = time.monotonic()
        owned = stack = LocalStack(config).start()
        print(f"up in {time.monotonic() - started:.1f}s; logs in {stack.log_dir}")
    print(f"jobs page: {stack.page_url}", flush=True)
    try:
        os.environ.update(stack.client_env())
        settings = Settings.from_env()
        store = FirestoreJobStore(firestore_client(settings.project))
        blobs = GcsBlobStore(gcs_client(settings.project))
        runs = []
        for file in files:
            job_id = upload(settings, file, f"examples/{file.name}", None)
            print(f"dropped {file.name} into gs://{settings.input_bucket}/examples/ → job {job_id}")
            runs.append(ExampleRun(file, job_id))
        deadline = time.monotonic() + timeout
        for run in runs:
            _follow(run, store, blobs, deadline, timeout, expected.get(run.file.name))
        ok = _report(runs)
        if stay:
            print(
                "\nThe stack stays up: drop more files with `batchline submit FILE --wait`, "
                f"follow them on the jobs page at {stack.page_url}. Ctrl-C stops it."
            )
            _wait_for_interrupt()
        return 0 if ok else 1
    finally:
        if owned is not None:
            print("stopping the local stack…", flush=True)
            print(f"stopped: {owned.stop()}", flush=True)


def _follow(
    run: ExampleRun, store: Any, blobs: Any, deadline: float, timeout: float, expected: Any
) -> None:
    """Wait for one example's job to end, then check its results against `expected`."""
    from batchline_tools.deployment import wait_for

    job = wait_for(store, run.job_id, max(1.0, deadline - time.monotonic()), show=True)
    if job is None or not job.state.terminal:
        state = job.state if job else "unknown"
        run.problems.append(f"not finished within {timeout:.0f}s (state {state})")
        return
    if job.state.value == "rejected":
        run.problems.append(f"rejected: {job.error}")
        return
    run.results_uri, run.summary_uri = job.results_uri, job.summary_uri
    results = [orjson.loads(x) for x in blobs.read_bytes(job.results_uri).splitlines()]
    summary = orjson.loads(blobs.read_bytes(job.summary_uri))
    run.preview = results[:PREVIEW_LINES]
    check(run, results, summary, expected)


def _report(runs: list[ExampleRun]) -> bool:
    ok = True
    for run in runs:
        mark = "ok  " if not run.problems else "FAIL"
        ok = ok and not run.problems
        print(f"\n[{mark}] {run.file.name}  job {run.job_id}  {orjson.dumps(run.counts).decode()}")
        if run.results_uri:
            print(f"       results  {run.results_uri}")
            print(f"       summary  {run.summary_uri}")
        for problem in run.problems:
            print(f"       problem: {problem}")
        for result in run.preview:
            output = result.get("output") or {}
            parsed = output.get("parsed")
            text = (orjson.dumps(parsed).decode() if parsed is not None else "") or (
                output.get("text") or ""
            )
            text = text[:70]
            shown = text or (result.get("error") or {}).get("message", "")[:70]
            print(
                f"       {result['line']:>3} {result['custom_id']:<14} {result['status']:<9} {shown}"
            )
    print("\nall examples complete and correct" if ok else "\nsome examples are wrong", flush=True)
    return ok


def _wait_for_interrupt() -> None:
    stop = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
