"""The `batchline` command: run the local stack, submit files, follow jobs, read results.

Against the local stack (the default) the CLI reads the stack's state file for its
addresses; against a GCP project it takes `--project` and the bucket flags (or the same
BATCHLINE_* variables the functions read) and uses Application Default Credentials.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from batchline.config import Settings
    from batchline.domain.models import Job
    from batchline.ports import JobStore


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"batchline: {exc}", file=sys.stderr)
        return 1
    return result


class CliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    from batchline.local import cli as local_cli

    parser = argparse.ArgumentParser(prog="batchline", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    local_cli.register(commands)

    def target_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", help="local stack run directory (default .batchline/local)")
        p.add_argument("--project", help="a GCP project instead of the local stack")
        p.add_argument("--input-bucket", help="with --project (else BATCHLINE_INPUT_BUCKET)")
        p.add_argument("--output-bucket", help="with --project (else BATCHLINE_OUTPUT_BUCKET)")

    submit = commands.add_parser("submit", help="upload a JSONL file to the input bucket")
    submit.add_argument("file", type=Path)
    submit.add_argument(
        "--model", help="default model for lines without one, e.g. openai/gpt-4.1-mini"
    )
    submit.add_argument("--name", help="object name in the input bucket (default: the file name)")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    submit.add_argument("--json", action="store_true", help="print one JSON object")
    target_flags(submit)
    submit.set_defaults(run=_submit)

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true")
    target_flags(status)
    status.set_defaults(run=_status)

    results = commands.add_parser("results", help="download a job's results.jsonl")
    results.add_argument("job_id")
    results.add_argument("--out", type=Path, help="write to this file (default: stdout)")
    results.add_argument("--head", type=int, help="only the first N lines")
    target_flags(results)
    results.set_defaults(run=_results)

    demo = commands.add_parser(
        "demo", help="start the local stack, run the examples, check and preview the results"
    )
    demo.add_argument("--examples", type=Path, default=Path("examples"))
    demo.add_argument("--run-dir")
    demo.add_argument("--timeout", type=float, default=120.0)
    demo.add_argument(
        "--stay", action="store_true", help="keep the stack up afterwards until Ctrl-C"
    )
    demo.set_defaults(run=_demo)
    return parser


# -- target ------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    """Point this process's Google clients at the target and return its settings."""
    from batchline.config import Settings

    if getattr(args, "project", None):
        env = dict(os.environ)
        env["GOOGLE_CLOUD_PROJECT"] = args.project
        if args.input_bucket:
            env["BATCHLINE_INPUT_BUCKET"] = args.input_bucket
        if args.output_bucket:
            env["BATCHLINE_OUTPUT_BUCKET"] = args.output_bucket
        env.setdefault("BATCHLINE_WORK_BUCKET", "unused-by-the-cli")
        return Settings.from_env(env)
    from batchline.local.stack import LocalStack, LocalStackError

    try:
        stack = LocalStack.attach(args.run_dir)
    except (LocalStackError, FileNotFoundError) as exc:
        raise CliError(
            f"no local stack is running ({exc}); start one with `batchline local up --detach` "
            "or pass --project"
        ) from exc
    os.environ.update(stack.client_env())
    return Settings.from_env()


def _store(settings: Settings) -> JobStore:
    from batchline.adapters.firestore import FirestoreJobStore, make_client

    return FirestoreJobStore(make_client(settings.project))


def _blobs(settings: Settings) -> Any:
    from batchline.adapters.gcs import GcsBlobStore, make_client

    return GcsBlobStore(make_client(settings.project))


# -- commands ----------------------------------------------------------------------------


def upload(settings: Settings, file: Path, name: str, model: str | None) -> str:
    """Upload `file` as gs://INPUT/name; returns the job id the upload starts."""
    from batchline.adapters.gcs import make_client
    from batchline.domain.ids import job_id_for_object

    if not file.is_file():
        raise CliError(f"{file}: no such file")
    blob = make_client(settings.project).bucket(settings.input_bucket).blob(name)
    if model:
        blob.metadata = {"model": model}
    content_type = "application/gzip" if name.endswith(".gz") else "application/jsonl"
    blob.upload_from_filename(str(file), content_type=content_type)
    return job_id_for_object(settings.input_bucket, name, str(blob.generation))


def _submit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    name = args.name or args.file.name
    job_id = upload(settings, args.file, name, args.model)
    if not args.json:
        print(f"uploaded {args.file} to gs://{settings.input_bucket}/{name}; job {job_id}")
    if not args.wait:
        if args.json:
            print(orjson.dumps({"job_id": job_id, "state": None, "counts": {}}).decode())
        return 0
    job = wait_for(_store(settings), job_id, args.timeout, show=not args.json)
    if args.json:
        print(orjson.dumps(_job_json(job_id, job)).decode())
    else:
        _print_job(job_id, job)
    return 0 if job is not None and job.state.terminal else 1


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    job = _store(settings).get_job(args.job_id)
    if job is None:
        raise CliError(f"no job {args.job_id}")
    if args.json:
        print(orjson.dumps(_job_json(args.job_id, job)).decode())
    else:
        _print_job(args.job_id, job)
    return 0


def _results(args: argparse.Namespace) -> int:
    settings = _settings(args)
    job = _store(settings).get_job(args.job_id)
    if job is None:
        raise CliError(f"no job {args.job_id}")
    if not job.state.terminal:
        raise CliError(f"job {args.job_id} is {job.state}; results come when it ends")
    blobs = _blobs(settings)
    out = args.out.open("wb") if args.out else sys.stdout.buffer
    try:
        with blobs.open_read(job.results_uri) as reader:
            for n, line in enumerate(reader):
                if args.head is not None and n >= args.head:
                    break
                out.write(line)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def wait_for(store: JobStore, job_id: str, timeout: float, *, show: bool) -> Job | None:
    """Follow a job until it ends or `timeout` passes; prints progress when `show`."""
    deadline = time.monotonic() + timeout
    last = ""
    job = None
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        line = _progress(store, job_id, job)
        if show and line != last:
            print(line, file=sys.stderr, flush=True)
            last = line
        if job is not None and job.state.terminal:
            return job
        time.sleep(0.5)
    return job


def _progress(store: JobStore, job_id: str, job: Job | None) -> str:
    if job is None:
        return f"{job_id}: waiting for the submit function"
    done = total = 0
    for chunk in store.get_chunks(job_id) if job.chunk_count else []:
        total += chunk.request_count
        done += chunk.batch_counts.get("completed", 0) + chunk.batch_counts.get("failed", 0)
    progress = f" {done}/{total} requests done at the provider" if total else ""
    return f"{job_id}: {job.state}{progress} ({job.chunk_count} batch(es))"


def _job_json(job_id: str, job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"job_id": job_id, "state": None, "counts": {}}
    from batchline.services.api import job_view

    return job_view(job)


def _print_job(job_id: str, job: Job | None) -> None:
    if job is None:
        print(f"{job_id}: not found yet")
        return
    view = _job_json(job_id, job)
    print(f"job      {job_id}  {view['state']}")
    print(f"source   {view['source']}")
    print(f"counts   {orjson.dumps(view['counts']).decode()}")
    if view["cost_usd"] is not None:
        print(f"cost     ${view['cost_usd']:.6f} at batch prices")
    if view["results_uri"]:
        print(f"results  {view['results_uri']}")
    if view["summary_uri"]:
        print(f"summary  {view['summary_uri']}")
    if view["error"]:
        print(f"error    {view['error']}")


def _demo(args: argparse.Namespace) -> int:
    from batchline.local.demo import run_demo

    return run_demo(args.examples, run_dir=args.run_dir, timeout=args.timeout, stay=args.stay)


if __name__ == "__main__":
    raise SystemExit(main())
