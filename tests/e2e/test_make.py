"""The README's commands, run as a user runs them: `make demo`, `make run` then Ctrl-C, and
the CLI round trip against `batchline local up --detach`.

Each test has its own run directory (BATCHLINE_LOCAL_DIR), so that its stack is its own and
"nothing of that run is left" can be checked: no process whose environment or command line
names the run directory, and none of the pids/process groups its `state.json` recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from batchline_tools.local import processes
from batchline_tools.local.stack import COMPONENTS, LocalStack, LocalStackError

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.jsonl"
#: Bounds on waits that end as soon as what they wait for happens: generous, since they only
#: bound a failure. A stop takes at most about the grace period (5 s) + 5 s by itself.
STARTED_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def make_command(target: str) -> list[str]:
    """`make TARGET`. CI runs `make setup` before the tests; where it has not been run, make
    is told not to (a test must not install packages), which is the only difference."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed", pytrace=False)
    if not (ROOT / ".venv" / "bin" / "batchline").exists():
        reason = "no .venv with batchline in the repository: run `make setup` first"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    question = subprocess.run(
        ["make", "-q", "setup"], cwd=ROOT, capture_output=True, check=False, timeout=60
    )
    if question.returncode == 0:
        return ["make", target]
    if _in_ci():
        pytest.fail("`make setup` has not been run (or pyproject.toml changed since)")
    return ["make", "-o", ".venv/.installed", target]


def batchline() -> str:
    """The `batchline` command of the environment that runs the tests."""
    beside = Path(sys.executable).parent / "batchline"
    found = str(beside) if beside.exists() else shutil.which("batchline")
    if found is None:
        pytest.fail("no `batchline` command: is the package installed?", pytrace=False)
    return found


#: Left out of the commands' environment: a user's shell has none of the settings that
#: other tests (or an outer `make test`) put in this process's environment.
NOT_INHERITED = re.compile(
    r"BATCHLINE_.*|.*_EMULATOR_HOST|GOOGLE_CLOUD_PROJECT|GCP_PROJECT|OPENAI_.*|ANTHROPIC_.*"
    r"|MAKEFLAGS|MFLAGS|MAKELEVEL"
)


def user_env(run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not NOT_INHERITED.fullmatch(k)}
    env["BATCHLINE_LOCAL_DIR"] = str(run_dir)
    return env


def run(
    args: list[str], run_dir: Path, *, timeout: float = STOP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        env=user_env(run_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# ------------------------------------------------------------- what a run leaves behind


def run_processes(run_dir: Path) -> dict[int, str]:
    """Live (non-zombie) processes whose environment or command line names `run_dir`."""
    in_env = f"BATCHLINE_LOCAL_DIR={run_dir}".encode() + b"\0"
    in_argv = str(run_dir).encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes() + b"\0"
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            continue
        if in_env in environ or in_argv in argv:
            found[int(entry.name)] = argv.replace(b"\0", b" ").decode(errors="replace")
    return found


class StateWatcher:
    """Reads `<run_dir>/state.json` while the run lasts, keeping every pid and process
    group it ever recorded (the file is gone once the stack stops)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "state.json"
        self.groups: dict[str, tuple[int, int]] = {}
        self.last: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.read()
            self._stop.wait(0.1)

    def read(self) -> None:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        self.last = state
        for name, component in state.get("components", {}).items():
            self.groups[name] = (int(component["pid"]), int(component["pgid"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.read()


def leftovers(run_dir: Path, groups: dict[str, tuple[int, int]]) -> dict[str, Any]:
    alive: dict[str, Any] = {
        name: pids
        for name, pids in groups.items()
        if processes.pid_alive(pids[0]) or processes.group_alive(pids[1])
    }
    alive.update({str(pid): argv for pid, argv in run_processes(run_dir).items()})
    return alive


def assert_nothing_left(
    run_dir: Path, groups: dict[str, tuple[int, int]], timeout: float = STOP_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while (alive := leftovers(run_dir, groups)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"still running after the run ended: {alive}"
    assert not (run_dir / "state.json").exists()


def kill_leftovers(run_dir: Path, groups: dict[str, tuple[int, int]]) -> None:
    """Last resort in `finally`: SIGKILL what this test started and left running."""
    for _, pgid in groups.values():
        if pgid > 1 and processes.group_alive(pgid):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
    for pid in run_processes(run_dir):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def run_dir(tmp_path: Path, require_components: Callable[..., None]) -> Iterator[Path]:
    require_components(*COMPONENTS)
    path = tmp_path / "run"
    yield path
    if (path / "state.json").exists():  # a stack the test left up: stop it as `down` would
        with contextlib.suppress(LocalStackError):
            LocalStack.attach(path).stop()
    kill_leftovers(path, {})


def gcs_object(env: dict[str, str], uri: str, media: bool = False) -> requests.Response:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    url = f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o/"
    url += urllib.parse.quote(name, safe="")
    return requests.get(url, params={"alt": "media"} if media else None, timeout=10)


def nonblank_lines(path: Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


# ------------------------------------------------------------------------------ tests


def test_make_demo_runs_the_examples_and_leaves_nothing_running(run_dir: Path) -> None:
    watcher = StateWatcher(run_dir)
    try:
        demo = subprocess.run(
            make_command("demo"),
            cwd=ROOT,
            env=user_env(run_dir),
            capture_output=True,
            text=True,
            timeout=2 * STARTED_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        watcher.stop()
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output
        assert "all examples complete and correct" in demo.stdout, output
        assert set(watcher.groups) == set(COMPONENTS), watcher.groups
        assert_nothing_left(run_dir, watcher.groups)
    finally:
        watcher.stop()
        kill_leftovers(run_dir, watcher.groups)


def test_make_run_stays_up_with_results_until_ctrl_c(run_dir: Path) -> None:
    watcher = StateWatcher(run_dir)
    make = subprocess.Popen(
        make_command("run"),
        cwd=ROOT,
        env=user_env(run_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as a shell's foreground job
    )
    lines: list[str] = []
    staying = threading.Event()

    def read_output() -> None:
        assert make.stdout is not None
        for line in make.stdout:
            lines.append(line)
            if "stays up" in line:
                staying.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + STARTED_TIMEOUT
        while not staying.wait(0.2):
            assert make.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
        output = "".join(lines)
        assert "all examples complete and correct" in output, output

        # What it printed is there: each job ended, with its results in the output bucket.
        watcher.read()
        env = watcher.last["env"]
        jobs = re.findall(r"^\[ok  \] (\S+)\s+job (job-[0-9a-f]+)", output, re.MULTILINE)
        printed = re.findall(r"^\s+results\s+(gs://\S+)$", output, re.MULTILINE)
        # Every example the demo checks (examples/expected.json), and nothing else.
        expected = json.loads((ROOT / "examples" / "expected.json").read_text())
        assert {name for name, _ in jobs} == set(expected) and len(expected) >= 8
        assert len(printed) == len(jobs)
        status = run([batchline(), "status", dict(jobs)["quickstart.jsonl"], "--json"], run_dir)
        assert status.returncode == 0, status.stderr
        view = json.loads(status.stdout)
        assert view["state"] == "succeeded"
        assert view["results_uri"] in printed
        for uri in printed:
            assert gcs_object(env, uri).status_code == 200, uri
            summary = gcs_object(env, uri.replace("results.jsonl", "summary.json"), media=True)
            assert summary.status_code == 200, uri
            assert summary.json()["state"] in ("succeeded", "partial")

        # The jobs page it printed lists them.
        page_urls = set(re.findall(r"jobs page: (http://\S+?)\.?$", output, re.MULTILINE))
        assert page_urls == {env["BATCHLINE_API_URL"] + "/"}, output
        page = requests.get(page_urls.pop(), timeout=30)
        assert (page.status_code, page.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
        assert {job_id for _, job_id in jobs} <= set(
            re.findall(r"/jobs/(job-[0-9a-f]+)", page.text)
        )

        # The /proc check below sees the stack's processes while they run.
        running = run_processes(run_dir)
        assert {pid for pid, _ in watcher.groups.values()} <= set(running), running

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal
        make.wait(timeout=STOP_TIMEOUT)
        reader.join(timeout=5)
        watcher.stop()
        assert "stopping the local stack" in "".join(lines)
        stopped = rf"^stopped: {len(COMPONENTS)} stopped in [0-9.]+ s"
        assert re.search(stopped, "".join(lines), re.MULTILINE), "".join(lines)
        assert set(watcher.groups) == set(COMPONENTS), watcher.groups
        assert_nothing_left(run_dir, watcher.groups)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        watcher.stop()
        kill_leftovers(run_dir, watcher.groups)


def test_cli_round_trip_against_a_detached_stack(run_dir: Path, tmp_path: Path) -> None:
    cli = batchline()
    groups: dict[str, tuple[int, int]] = {}
    stopped = False
    try:
        up = run([cli, "local", "up", "--detach"], run_dir, timeout=STARTED_TIMEOUT)
        state = json.loads((run_dir / "state.json").read_text()) if up.returncode == 0 else {}
        groups = {n: (c["pid"], c["pgid"]) for n, c in state.get("components", {}).items()}
        assert up.returncode == 0, up.stdout + up.stderr
        assert set(groups) == set(COMPONENTS)
        api = state["env"]["BATCHLINE_API_URL"]
        assert f"jobs page: {api}/\n" in up.stdout, up.stdout
        running = run_processes(run_dir)
        assert {pid for pid, _ in groups.values()} <= set(running), running

        submit = run(
            [cli, "submit", str(QUICKSTART), "--wait", "--json"], run_dir, timeout=STARTED_TIMEOUT
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        printed = submit.stdout.strip().splitlines()
        assert len(printed) == 1, submit.stdout
        job = json.loads(printed[0])
        job_id = job["job_id"]
        assert re.fullmatch(r"job-[0-9a-f]{24}", job_id)
        assert job["state"] == "succeeded"
        assert job["counts"]["succeeded"] == nonblank_lines(QUICKSTART)
        prefix = f"gs://{state['config']['output_bucket']}/quickstart/{job_id}/"
        assert job["results_uri"] == prefix + "results.jsonl"
        assert job["summary_uri"] == prefix + "summary.json"

        status = run([cli, "status", job_id, "--json"], run_dir)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout) == job

        head = run([cli, "results", job_id, "--head", "3"], run_dir)
        assert head.returncode == 0, head.stderr
        first = [json.loads(line) for line in head.stdout.splitlines()]
        assert [r["line"] for r in first] == [1, 2, 3]
        assert [r["custom_id"] for r in first] == ["explain-01", "explain-02", "explain-03"]

        out = tmp_path / "results.jsonl"
        saved = run([cli, "results", job_id, "--out", str(out)], run_dir)
        assert saved.returncode == 0, saved.stderr
        results = [json.loads(line) for line in out.read_text().splitlines()]
        inputs = [json.loads(line) for line in QUICKSTART.read_text().splitlines() if line.strip()]
        assert [r["custom_id"] for r in results] == [i["custom_id"] for i in inputs]
        assert {r["status"] for r in results} == {"succeeded"}
        failed = run([cli, "results", job_id, "--status", "failed"], run_dir)
        assert (failed.returncode, failed.stdout) == (0, ""), failed.stderr

        listed = run([cli, "list", "--state", "succeeded", "--limit", "10", "--json"], run_dir)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["jobs"][0] == job

        local = run([cli, "local", "status", "--json"], run_dir)
        assert local.returncode == 0, local.stdout + local.stderr
        health = json.loads(local.stdout)
        assert health["healthy"] is True
        assert set(health["components"]) == set(COMPONENTS)
        assert Path(health["run_dir"]) == run_dir.resolve()

        down = run([cli, "local", "down"], run_dir)
        stopped = True
        assert down.returncode == 0, down.stdout + down.stderr
        assert_nothing_left(run_dir, groups)
        assert run([cli, "local", "status", "--json"], run_dir).returncode == 3
    finally:
        if not stopped:
            run([cli, "local", "down"], run_dir)
        kill_leftovers(run_dir, groups)
