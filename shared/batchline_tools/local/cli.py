"""`batchline local up|down|status|env`: run the local stack from the command line.

The main CLI calls `register(subparsers)`; every command sets its handler, `(args) -> int`,
as both `args.run` and `args.func`. `python -m batchline_tools.local.cli ...` runs the
same commands on their own.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from batchline_tools.local.stack import LocalStack, StackConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `local` with its commands to an argparse subparsers object."""
    local: argparse.ArgumentParser = subparsers.add_parser(
        "local",
        help="run batchline on this machine (emulators, functions, bridge, ticker)",
        description="Run every batchline component on loopback with local emulators.",
    )
    commands = local.add_subparsers(dest="local_command", metavar="COMMAND")
    commands.required = True
    _add_up(commands)

    down = commands.add_parser("down", help="stop the local stack")
    _run_dir_arg(down)
    down.set_defaults(run=cmd_down, func=cmd_down)

    status = commands.add_parser("status", help="show each component's state")
    _run_dir_arg(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(run=cmd_status, func=cmd_status)

    env = commands.add_parser("env", help="print `export` lines for a client shell")
    _run_dir_arg(env)
    env.set_defaults(run=cmd_env, func=cmd_env)
    return local


def _run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="state and logs directory (default: $BATCHLINE_LOCAL_DIR or ./.batchline/local)",
    )


def _add_up(commands: Any) -> None:
    from batchline_tools.local.stack import PROVIDER_EMULATORS

    up = commands.add_parser("up", help="start the local stack")
    _run_dir_arg(up)
    up.add_argument(
        "--detach",
        action="store_true",
        help="return once everything is healthy and leave it running (stop with `down`)",
    )
    up.add_argument("--tick", type=float, default=None, help="seconds between poll ticks")
    up.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable for the functions (repeatable)",
    )
    for provider in PROVIDER_EMULATORS:
        up.add_argument(
            f"--{provider}-config",
            default=None,
            metavar="JSON",
            help=f"the {provider} emulator's configuration",
        )
    up.set_defaults(run=cmd_up, func=cmd_up)


class _BadArguments(Exception):
    """`local up` was given an argument it cannot use; the message says which."""


def _stack_config(args: argparse.Namespace) -> StackConfig:
    """The stack's configuration from `local up`'s arguments; _BadArguments if one is bad."""
    from batchline_tools.local.stack import PROVIDER_EMULATORS, StackConfig, default_run_dir

    function_env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _BadArguments(f"--env expects KEY=VALUE, got {item!r}")
        function_env[key] = value
    config = StackConfig(run_dir=args.run_dir or default_run_dir(), function_env=function_env)
    for provider in PROVIDER_EMULATORS:
        given = getattr(args, f"{provider}_config")
        try:
            setattr(config, f"{provider}_emulator_config", json.loads(given) if given else {})
        except ValueError as exc:
            raise _BadArguments(f"--{provider}-config is not JSON: {exc}") from None
    if args.tick is not None:
        if args.tick <= 0:
            raise _BadArguments("--tick must be positive")
        config.tick_seconds = args.tick
    return config


def cmd_up(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Start the local stack; stay in the foreground until Ctrl-C, or leave it running
    with --detach."""
    from batchline_tools.local.stack import LocalStack, LocalStackError

    try:
        config = _stack_config(args)
    except _BadArguments as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    stack = LocalStack(config)

    # SIGTERM behaves like Ctrl-C, so that `kill` of a foreground `up` stops its children.
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        print(f"starting the local stack in {config.run_dir} ...", file=out, flush=True)
        try:
            stack.start()
        except LocalStackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("interrupted; stopped", file=sys.stderr)
            return EXIT_FAILED
        return _serve(stack, args.detach, out)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def _serve(stack: LocalStack, detach: bool, out: TextIO) -> int:
    """Show the started stack; detach, or wait until Ctrl-C and stop everything."""
    detached = False
    try:
        # From here on a Ctrl-C, even during the status print, stops what started.
        _print_status(stack.status(), out)
        if detach:
            stack.detach()
            detached = True
            print(
                f"\nrunning in the background; stop with: batchline local down --run-dir "
                f"{shlex.quote(str(stack.config.run_dir))}",
                file=out,
            )
            return EXIT_OK
        print("\nCtrl-C stops everything.", file=out, flush=True)
        stack.wait(on_exit=lambda name: print(f"warning: {name} exited", file=sys.stderr))
    except KeyboardInterrupt:
        pass
    finally:
        if not detached:
            # A second Ctrl-C must not cut the cleanup short and leave orphans.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("stopping ...", file=out, flush=True)
            report = stack.stop()
            print(f"stopped: {report}", file=out, flush=True)
    return EXIT_OK


def cmd_down(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from batchline_tools.local.stack import LocalStack, LocalStackError, default_run_dir

    run_dir = args.run_dir or default_run_dir()
    try:
        stack = LocalStack.attach(run_dir)
    except LocalStackError:
        print(f"no local stack running in {run_dir}", file=out)
        return EXIT_OK
    names = ", ".join(stack.components)
    report = stack.stop()
    print(f"stopped {names}: {report}", file=out)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from batchline_tools.local.stack import LocalStack, LocalStackError, default_run_dir

    run_dir = args.run_dir or default_run_dir()
    try:
        status = LocalStack.attach(run_dir).status()
    except LocalStackError:
        status = {"run_dir": str(run_dir), "running": False, "healthy": False, "components": {}}
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True), file=out)
    elif not status["components"]:
        print(f"no local stack running in {run_dir}", file=out)
    else:
        _print_status(status, out)
    if not status["components"]:
        return EXIT_NOT_RUNNING
    return EXIT_OK if status["healthy"] else EXIT_FAILED


def cmd_env(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from batchline_tools.local.stack import LocalStack, LocalStackError, default_run_dir

    run_dir = args.run_dir or default_run_dir()
    try:
        env = LocalStack.attach(run_dir).client_env()
    except LocalStackError:
        print(f"no local stack running in {run_dir}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    for key, value in sorted(env.items()):
        print(f"export {key}={shlex.quote(value)}", file=out)
    return EXIT_OK


def _print_status(status: dict[str, Any], out: TextIO) -> None:
    rows = [("COMPONENT", "STATE", "PID", "ADDRESS", "LOG")]
    for name, comp in status["components"].items():
        if comp["healthy"]:
            state = "healthy"
        elif comp["running"]:
            state = "unhealthy"
        else:
            state = "stopped"
        rows.append((name, state, str(comp["pid"]), comp.get("url") or "-", comp["log"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        print("  ".join([*cells, row[4]]).rstrip(), file=out)
    print(f"run dir: {status['run_dir']}", file=out)
    if status.get("page_url"):
        print(f"jobs page: {status['page_url']}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchline")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
