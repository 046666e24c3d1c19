"""The `batchline` command: run the local stack, submit files, follow jobs, read results,
register JSON Schemas.

Against the local stack (the default) the CLI reads the stack's state file for its
addresses; against a GCP project it takes `--project` and the bucket flags (or the same
BATCHLINE_* variables the functions read) and uses Application Default Credentials.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchline_tools.deployment import CliError, upload, wait_for

if TYPE_CHECKING:
    from batchline.config import Settings
    from batchline.domain.models import Job
    from batchline.ports import BlobStore, JobStore


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


def _parser() -> argparse.ArgumentParser:
    from batchline_tools import estimate
    from batchline_tools.local import cli as local_cli

    parser = argparse.ArgumentParser(prog="batchline", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    local_cli.register(commands)
    _add_submit(commands)
    estimate.register(commands)
    _add_job_commands(commands)
    _add_schema_commands(commands)
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


Commands = Any  # argparse's private _SubParsersAction


def _target_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="local stack run directory (default .batchline/local)")
    p.add_argument("--project", help="a GCP project instead of the local stack")
    p.add_argument("--input-bucket", help="with --project (else BATCHLINE_INPUT_BUCKET)")
    p.add_argument("--output-bucket", help="with --project (else BATCHLINE_OUTPUT_BUCKET)")
    p.add_argument("--work-bucket", help="with --project (else BATCHLINE_WORK_BUCKET)")


def _add_submit(commands: Commands) -> None:
    submit = commands.add_parser("submit", help="upload a JSONL file to the input bucket")
    submit.add_argument("file", type=Path)
    submit.add_argument(
        "--model",
        help="default model for lines without one, e.g. openai/gpt-4.1-mini, or auto",
    )
    submit.add_argument(
        "--candidates", metavar="A,B", help="the provider/model names model auto chooses from"
    )
    submit.add_argument("--prefer", choices=("cost", "speed"), help="what auto chooses for")
    submit.add_argument("--name", help="object name in the input bucket (default: the file name)")
    submit.add_argument(
        "--schema", help="registered schema (`batchline schema push`) the answers must follow"
    )
    submit.add_argument(
        "--max-repair-attempts",
        type=int,
        metavar="N",
        help="times an answer that does not fit the schema is sent back to be repaired",
    )
    submit.add_argument(
        "--max-cost-usd", type=float, metavar="X", help="the job's spending limit in USD"
    )
    submit.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help="times a line that failed for a passing reason (5xx, 429, expired) is sent again "
        "to its model (default 1)",
    )
    submit.add_argument(
        "--fallback",
        metavar="A,B",
        help="models (provider/model) a line that still fails goes to, in order",
    )
    submit.add_argument(
        "--max-queue-hours",
        type=float,
        metavar="H",
        help="a batch still queued at its provider after H hours is cancelled; its lines fail over",
    )
    submit.add_argument(
        "--notify-url",
        metavar="URL",
        help="POST the job's signed job.completed webhook here when it ends (https://)",
    )
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    submit.add_argument("--json", action="store_true", help="print one JSON object")
    _target_flags(submit)
    submit.set_defaults(run=_submit)


def _add_job_commands(commands: Commands) -> None:
    from batchline.domain.models import JobState, ResultStatus
    from batchline.ports import MAX_PAGE_SIZE

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true")
    _target_flags(status)
    status.set_defaults(run=_status)

    listing = commands.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--state", choices=[str(s) for s in JobState])
    listing.add_argument(
        "--limit", type=int, default=20, help=f"jobs to show, 1 to {MAX_PAGE_SIZE} (default 20)"
    )
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    _target_flags(listing)
    listing.set_defaults(run=_list)

    cancel = commands.add_parser(
        "cancel", help="cancel a job: answers already in are kept, the rest end canceled"
    )
    cancel.add_argument("job_id")
    cancel.add_argument("--wait", action="store_true", help="follow the job until it ends")
    cancel.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    cancel.add_argument("--json", action="store_true", help="print one JSON object")
    _target_flags(cancel)
    cancel.set_defaults(run=_cancel)

    results = commands.add_parser("results", help="print or save a job's results.jsonl")
    results.add_argument("job_id")
    results.add_argument("--status", choices=[str(s) for s in ResultStatus])
    results.add_argument("--out", type=Path, help="write to this file (default: stdout)")
    results.add_argument("--head", type=int, help="only the first N lines")
    _target_flags(results)
    results.set_defaults(run=_results)


def _add_schema_commands(commands: Commands) -> None:
    schema = commands.add_parser(
        "schema", help="register JSON Schemas for structured outputs (push, list, show)"
    )
    schema_commands = schema.add_subparsers(dest="schema_command", metavar="COMMAND")
    schema_commands.required = True
    push = schema_commands.add_parser(
        "push",
        help="upload a pydantic class's JSON Schema (module:Class) or a JSON Schema file",
    )
    push.add_argument("source", help="mypkg.models:Invoice, or path/to/schema.json")
    push.add_argument("--name", help="the name lines and jobs use (default: the class name)")
    push.add_argument("--json", action="store_true", help="print one JSON object")
    _target_flags(push)
    push.set_defaults(run=_schema_push)
    schema_list = schema_commands.add_parser("list", help="list the registered schemas")
    schema_list.add_argument("--json", action="store_true", help="print one JSON array")
    _target_flags(schema_list)
    schema_list.set_defaults(run=_schema_list)
    show = schema_commands.add_parser("show", help="print a registered schema")
    show.add_argument("name")
    _target_flags(show)
    show.set_defaults(run=_schema_show)


# -- target ------------------------------------------------------------------------------


#: Stands for a bucket the command at hand does not use.
_UNUSED_BUCKET = "unused-by-the-cli"


def _settings(args: argparse.Namespace, *, work_bucket: bool = False) -> Settings:
    """Point this process's Google clients at the target and return its settings.
    `work_bucket`: the command uses the work bucket (and neither other one)."""
    from batchline.config import Settings
    from batchline.errors import ConfigError

    if getattr(args, "project", None):
        env = dict(os.environ)
        env["GOOGLE_CLOUD_PROJECT"] = args.project
        for flag in ("input_bucket", "output_bucket", "work_bucket"):
            if getattr(args, flag, None):
                env[f"BATCHLINE_{flag.upper()}"] = getattr(args, flag)
        if work_bucket:
            if not env.get("BATCHLINE_WORK_BUCKET", "").strip():
                raise CliError("--project needs --work-bucket (or BATCHLINE_WORK_BUCKET)")
            for unused in ("BATCHLINE_INPUT_BUCKET", "BATCHLINE_OUTPUT_BUCKET"):
                if not env.get(unused, "").strip():
                    env[unused] = _UNUSED_BUCKET
        elif not env.get("BATCHLINE_WORK_BUCKET", "").strip():
            env["BATCHLINE_WORK_BUCKET"] = _UNUSED_BUCKET
        try:
            return Settings.from_env(env)
        except ConfigError as exc:
            raise CliError(f"{exc} (or pass the matching flag)") from exc
    from batchline_tools.local.stack import LocalStack, LocalStackError

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


def _blobs(settings: Settings) -> BlobStore:
    from batchline.adapters.gcs import GcsBlobStore, make_client

    return GcsBlobStore(make_client(settings.project))


# -- commands ----------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    options = _job_options(args)
    settings = _settings(args)
    if args.schema:
        _check_schema_registered(settings, args.schema)
    name = args.name or args.file.name
    job_id = upload(settings, args.file, name, args.model, options)
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


def _job_options(args: argparse.Namespace) -> dict[str, str]:
    """`submit`'s job-option flags as the custom metadata the pipeline reads."""
    options: dict[str, str] = {}
    if args.schema is not None:
        options["schema"] = _schema_name(args.schema)
    if args.max_repair_attempts is not None:
        if args.max_repair_attempts < 0:
            raise CliError("--max-repair-attempts must be 0 or more")
        options["max_repair_attempts"] = str(args.max_repair_attempts)
    if args.max_cost_usd is not None:
        if not args.max_cost_usd > 0 or args.max_cost_usd == float("inf"):
            raise CliError("--max-cost-usd must be a positive number")
        options["max_cost_usd"] = repr(args.max_cost_usd)
    if args.max_retries is not None:
        options["max_retries"] = str(args.max_retries)  # checked by the pipeline, naming it
    if args.fallback:
        options["fallback"] = args.fallback
    if args.max_queue_hours is not None:
        options["max_queue_hours"] = repr(args.max_queue_hours)
    if args.candidates:
        options["candidates"] = args.candidates  # checked by the pipeline, naming it
    if args.prefer:
        options["prefer"] = args.prefer
    if args.notify_url:
        # Checked by the pipeline, against the deployment's rules (a bad one rejects the
        # job, naming notify_url).
        options["notify_url"] = args.notify_url
    return options


def _check_schema_registered(settings: Settings, name: str) -> None:
    """Fail before uploading when `name` is surely not registered; when the work bucket is
    unknown or unreadable from here, leave the check to the pipeline."""
    if settings.work_bucket == _UNUSED_BUCKET:
        return
    from batchline.domain.paths import registered_schema_uri

    uri = registered_schema_uri(settings.work_bucket, name)
    try:
        exists = _blobs(settings).exists(uri)
    except Exception:  # no permission or no network: not ours to decide here
        return
    if not exists:
        raise CliError(f"no schema {name!r} is registered ({uri}); push it first")


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _store(settings)
    job = store.get_job(args.job_id)
    if job is None:
        raise CliError(f"no job {args.job_id}")
    from batchline.services.api.views import job_finish

    finish = job_finish(store, job, time.time())
    if args.json:
        print(orjson.dumps(_job_json(args.job_id, job, finish)).decode())
    else:
        _print_job(args.job_id, job, finish)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from batchline.services.cancel import JobEnded, request_cancel

    store = _store(_settings(args))
    try:
        job = request_cancel(store, args.job_id, time.time())
    except JobEnded as exc:
        raise CliError(str(exc)) from exc
    if job is None:
        raise CliError(f"no job {args.job_id}")
    if not job.state.terminal:
        print(
            f"{args.job_id}: cancel requested; the next poll cancels its batches",
            file=sys.stderr,
        )
        if args.wait:
            job = wait_for(store, args.job_id, args.timeout, show=not args.json) or job
    if args.json:
        print(orjson.dumps(_job_json(args.job_id, job)).decode())
    else:
        _print_job(args.job_id, job)
    return 0 if job.state.terminal or not args.wait else 1


def _list(args: argparse.Namespace) -> int:
    from batchline.domain.models import JobState
    from batchline.ports import MAX_PAGE_SIZE, JobQuery

    if not 1 <= args.limit <= MAX_PAGE_SIZE:
        raise CliError(f"--limit must be 1 to {MAX_PAGE_SIZE}")
    state = JobState(args.state) if args.state else None
    page = _store(_settings(args)).list_jobs(JobQuery(state=state, limit=args.limit))
    if args.json:
        views = [_job_json(job.job_id, job) for job in page.jobs]
        print(orjson.dumps({"jobs": views, "next_cursor": page.next_cursor}).decode())
        return 0
    if not page.jobs:
        print("no jobs" + (f" {args.state}" if args.state else ""))
    for job in page.jobs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(job.created_at))
        requests = job.counts.get("requests")
        counted = "" if requests is None else f"  {requests} requests"
        print(f"{job.job_id}  {job.state!s:<10}  {created}Z  {job.source.uri}{counted}")
    return 0


def _results(args: argparse.Namespace) -> int:
    from batchline.services.api.errors import Missing
    from batchline.services.api.outputs import Outputs, ResultsWanted, results

    settings = _settings(args)
    place = Outputs(_store(settings), _blobs(settings), settings.output_bucket)
    try:
        blocks = results(place, args.job_id, ResultsWanted(args.status, 0, args.head))
    except Missing as exc:
        raise CliError(str(exc)) from exc
    out = args.out.open("wb") if args.out else sys.stdout.buffer
    try:
        for block in blocks:
            out.write(block)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _job_json(job_id: str, job: Job | None, finish: float | None = None) -> dict[str, Any]:
    if job is None:
        return {"job_id": job_id, "state": None, "counts": {}}
    from batchline.services.api.views import job_view

    return job_view(job, finish)


def _print_job(job_id: str, job: Job | None, finish: float | None = None) -> None:
    if job is None:
        print(f"{job_id}: not found yet")
        return
    view = _job_json(job_id, job, finish)
    canceling = view["cancel_requested_at"] and not job.state.terminal
    print(f"job      {job_id}  {view['state']}" + (" (cancel requested)" if canceling else ""))
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
    if view["waiting"]:
        print(f"waiting  {view['waiting']}")
    if view.get("estimated_finish_at"):
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view["estimated_finish_at"]))
        print(f"finish   about {at} (first answers, at its pace so far)")
    elif view["state"] in ("submitting", "running") and not canceling:
        print("finish   not known yet: no line answered so far (worked out from its pace)")


# -- schemas -----------------------------------------------------------------------------


def _schema_name(name: str) -> str:
    from batchline.domain.paths import SCHEMA_NAME_PATTERN

    if not re.match(SCHEMA_NAME_PATTERN, name):
        raise CliError(
            f"{name!r} is not a valid schema name: 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def load_schema(source: str) -> tuple[dict[str, Any], str | None]:
    """The JSON Schema `source` names (`module:attr` or a .json file) and its default
    name (the class's name; None for a file). Raises CliError when it is not a valid
    JSON Schema of an object."""
    path = Path(source)
    if source.endswith(".json") or path.is_file():
        try:
            schema = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise CliError(f"cannot read {source}: {exc.strerror or exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise CliError(f"{source} is not JSON: {exc}") from exc
        default_name = None
    elif ":" in source:
        schema, default_name = _schema_of_object(source)
    else:
        raise CliError(f"{source}: expected module:Class (e.g. mypkg.models:Invoice) or a file")
    _check_object_schema(schema, source)
    return schema, default_name


def _schema_of_object(source: str) -> tuple[Any, str]:
    import importlib

    module_name, _, attr = source.partition(":")
    if not module_name or not attr:
        raise CliError(f"{source}: expected module:Class, e.g. mypkg.models:Invoice")
    # As `python -m` does: modules in the current directory are importable.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name}: {exc}") from exc
    except Exception as exc:
        raise CliError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise CliError(f"{module_name} has no {attr}") from exc
    if isinstance(target, dict):  # a schema written out in Python
        return target, attr.rsplit(".", 1)[-1]
    name = str(getattr(target, "__name__", attr.rsplit(".", 1)[-1]))
    if hasattr(target, "model_json_schema"):
        try:
            return target.model_json_schema(), name
        except Exception as exc:
            raise CliError(f"{source}: model_json_schema() failed: {exc}") from exc
    try:
        from pydantic import TypeAdapter

        return TypeAdapter(target).json_schema(), name
    except Exception as exc:
        raise CliError(
            f"{source} is not a pydantic model (nor a type pydantic can describe): {exc}"
        ) from exc


def _check_object_schema(schema: Any, source: str) -> None:
    """The checks the pipeline makes of a schema (valid JSON Schema), and an object root,
    which OpenAI and Anthropic both need."""
    from batchline.domain.schemas import ResponseSchema, SchemaError

    try:
        ResponseSchema.create(schema)
    except SchemaError as exc:
        raise CliError(f"{source}: {exc}") from exc
    if schema.get("type") != "object":
        raise CliError(
            f'{source}: the schema must describe an object ("type": "object" at the top, as '
            f"structured outputs need), got type {schema.get('type')!r}"
        )


def _schema_push(args: argparse.Namespace) -> int:
    from batchline.services import schemas

    schema, default_name = load_schema(args.source)
    if not args.name and default_name is None:
        raise CliError(f"{args.source}: give the schema a name with --name")
    name = _schema_name(args.name or str(default_name))
    settings = _settings(args, work_bucket=True)
    uri, size = schemas.push(_blobs(settings), settings.work_bucket, name, schema, args.source)
    if args.json:
        print(orjson.dumps({"name": name, "uri": uri, "size": size}).decode())
    else:
        print(f"pushed schema {name} to {uri} ({size} bytes)")
    return 0


def _schema_list(args: argparse.Namespace) -> int:
    from batchline.domain.paths import registered_schema_uri
    from batchline.services import schemas

    settings = _settings(args, work_bucket=True)
    rows = [r.to_dict() for r in schemas.registered(_blobs(settings), settings.work_bucket)]
    if args.json:
        print(orjson.dumps(rows).decode())
    elif not rows:
        folder = registered_schema_uri(settings.work_bucket, "NAME").removesuffix("NAME.json")
        print(f"no schemas registered in {folder}")
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['size']:>8} B  {r['updated'] or '-'}  {r['uri']}")
    return 0


def _schema_show(args: argparse.Namespace) -> int:
    from batchline.domain.paths import registered_schema_uri
    from batchline.errors import NotFound
    from batchline.services import schemas

    name = _schema_name(args.name)
    settings = _settings(args, work_bucket=True)
    try:
        data = schemas.read(_blobs(settings), settings.work_bucket, name)
    except NotFound as exc:
        uri = registered_schema_uri(settings.work_bucket, name)
        raise CliError(f"no schema {name!r} is registered ({uri})") from exc
    sys.stdout.write(data.decode() if data.endswith(b"\n") else data.decode() + "\n")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from batchline_tools.local.demo import run_demo

    return run_demo(args.examples, run_dir=args.run_dir, timeout=args.timeout, stay=args.stay)


if __name__ == "__main__":
    raise SystemExit(main())
