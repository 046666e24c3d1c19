"""`batchline estimate FILE`: plan a JSONL file here, as the pipeline would plan it, and
say what the job would be: its lines, the invalid ones and why, the chunks per provider
and model, what `model: "auto"` chose, and the cost range. Nothing is uploaded and no
provider or cloud service is called: the dry run of `POST /v1/jobs:estimate`
(`services/estimate.py`) runs on in-memory ports, under this machine's BATCHLINE_*
settings (enabled providers, default model, prices, auto candidates).
"""

from __future__ import annotations

import argparse
import gzip
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchline_tools.deployment import CliError

if TYPE_CHECKING:
    from batchline.bootstrap import Deps
    from batchline.domain.models import JobOptions

#: Invalid lines the text output lists (`--json` has the dry run's first 20).
SHOWN_INVALID = 5
#: Settings a local dry run needs but never uses (no bucket is read or written).
_UNUSED = {
    "GOOGLE_CLOUD_PROJECT": "batchline-estimate",
    "BATCHLINE_INPUT_BUCKET": "unused-by-estimate",
    "BATCHLINE_OUTPUT_BUCKET": "unused-by-estimate",
    "BATCHLINE_WORK_BUCKET": "unused-by-estimate",
}


def register(commands: Any) -> None:
    """Add `estimate` to the CLI's subcommands."""
    from batchline.domain.models import PREFERENCES

    estimate = commands.add_parser(
        "estimate",
        help="plan a JSONL file locally: lines, invalid lines, chunks, auto choices, cost "
        "range (nothing is uploaded or sent)",
    )
    estimate.add_argument("file", type=Path)
    estimate.add_argument(
        "--model", help="default model for lines without one: provider/model, or auto"
    )
    estimate.add_argument(
        "--candidates", metavar="A,B", help="the provider/model names model auto chooses from"
    )
    estimate.add_argument("--prefer", choices=PREFERENCES, help="what auto chooses for")
    estimate.add_argument(
        "--schema",
        help="the answers' JSON Schema: a .json file or module:Class (checked against "
        "each provider), or a registered schema's name (not read here)",
    )
    estimate.add_argument("--json", action="store_true", help="print one JSON object")
    estimate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Plan `args.file` and print what the job would be."""
    from batchline.domain.lines import UnreadableInput
    from batchline.services.estimate import dry_run

    options = job_options(args)
    deps = local_deps()
    if not args.file.is_file():
        raise CliError(f"no file {args.file}")
    try:
        with args.file.open("rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if args.file.name.endswith(".gz") else raw
            found = dry_run(deps, stream, options)
    except UnreadableInput as exc:
        raise CliError(f"{args.file}: {exc}") from None
    except (OSError, EOFError) as exc:
        raise CliError(f"{args.file}: cannot be read: {exc}") from None
    view = found.view(deps)
    if args.json:
        print(orjson.dumps(view).decode())
    else:
        print("\n".join(describe(args.file.name, view)))
    return 0


def job_options(args: argparse.Namespace) -> JobOptions:
    """The flags as job options, checked as the pipeline checks an object's metadata."""
    from batchline.domain.options import OptionError, from_metadata

    metadata = {
        name: value
        for name, value in (
            ("model", args.model),
            ("candidates", args.candidates),
            ("prefer", args.prefer),
        )
        if value
    }
    inline = None
    if args.schema and (Path(args.schema).is_file() or ":" in args.schema):
        from batchline_tools.cli import load_schema

        schema, name = load_schema(args.schema)
        inline = {"name": name or "schema", "schema": schema}
    elif args.schema:
        metadata["schema"] = args.schema
    try:
        options = from_metadata(metadata)
    except OptionError as exc:
        raise CliError(str(exc)) from None
    return replace(options, response_schema=inline) if inline else options


def local_deps() -> Deps:
    """Dependencies on in-memory ports, with this machine's BATCHLINE_* settings."""
    from batchline.bootstrap import Deps, Providers
    from batchline.config import Settings
    from batchline.domain.pricing import load_prices
    from batchline.errors import ConfigError
    from batchline_tools.memory import MemoryBlobStore, MemoryJobStore, RecordingPublisher

    env = {**_UNUSED, **{k: v for k, v in os.environ.items() if v.strip()}}
    try:
        settings = Settings.from_env(env)
        prices = load_prices(settings.prices_json)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    return Deps(
        settings=settings,
        store=MemoryJobStore(),
        blobs=MemoryBlobStore(),
        publisher=RecordingPublisher(),
        providers=Providers({}),  # a dry run calls no provider
        prices=prices,
    )


def describe(name: str, view: dict[str, Any]) -> list[str]:
    """The dry run's view as lines of text."""
    out = [
        f"{name}: {view['lines']} lines ({view['blank_lines']} blank lines skipped), "
        f"{view['requests']} requests, {view['invalid']} invalid"
    ]
    if view["invalid_lines"]:
        out.append(f"invalid lines (the first {SHOWN_INVALID}):")
        out += [
            f"  line {i['line']}: {i['field']}: {i['message']}"
            for i in view["invalid_lines"][:SHOWN_INVALID]
        ]
    out.append("chunks:")
    out += [
        f"  {c['provider']}/{c['model']}: {c['chunks']} chunks, {c['requests']} requests, "
        f"{c['bytes']} bytes"
        for c in view["chunks"]
    ] or ["  none"]
    if view["auto"]:
        out.append("model auto chose:")
        for choice in view["auto"]:
            out.append(f"  {choice['model']}: {choice['requests']} lines")
            out += [f"    {n} {why}" for why, n in sorted(choice["reasons"].items())]
    out.append(_cost(view))
    out += [f"warning: {w}" for w in view["warnings"]]
    return out


def _cost(view: dict[str, Any]) -> str:
    cost = view["cost_usd"]
    as_of = view["estimate"]["prices_as_of"]
    if cost["high"] is None:
        unpriced = ", ".join(sorted(view["estimate"]["unpriced"]))
        return f"estimated cost: unknown (no price for {unpriced}; prices as of {as_of})"
    return (
        f"estimated cost: ${cost['low']:.6f} (input only) to ${cost['high']:.6f} (every "
        f"request at its most output) at batch prices; ${cost['realtime_high']:.6f} "
        f"at real-time prices; prices as of {as_of}"
    )
