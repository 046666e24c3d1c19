"""Root fixtures: single emulators for integration tests (the whole local stack for e2e is
in tests/e2e/conftest.py, and lives only while the e2e tests run).

Each emulator fixture starts its process once per session (own process group, log under
the session's temp dir) and stops it at the end. When java, an emulator jar or the
fake-gcs-server binary is missing, the tests that need it are skipped, except under CI
(`CI=true`), where that is a broken machine and fails loudly.

Every process the tests start inherits `PYTEST_BATCHLINE_SESSION` (one value per session);
when the session ends, any such process still alive is reported, killed, and fails the
run: one test's leftovers must not slow down or break the next run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

try:
    import batchline  # noqa: F401
except ImportError:  # the package is not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from batchline_tools.local import processes, stack

START_TIMEOUT = 60.0
#: In the environment of every process this session starts (see the module docstring).
SESSION_MARKER = "PYTEST_BATCHLINE_SESSION"
#: How long, after the last teardown, the session's processes have to be gone.
LEFTOVER_WAIT_SECONDS = 5.0


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SESSION_MARKER] = uuid.uuid4().hex


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown (runner's hook)
def pytest_sessionfinish(session: pytest.Session) -> None:
    deadline = time.monotonic() + LEFTOVER_WAIT_SECONDS
    while (left := session_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} process(es) started by the tests outlived the session (killed):"]
    lines += [f"  {pid}: {argv[:200]}" for pid, argv in sorted(left.items())]
    if reporter is not None:
        reporter.write_sep("=", "leftover processes", red=True)
        reporter.write_line("\n".join(lines))
    else:
        print("\n".join(lines), file=sys.stderr)
    for pid in left:
        with contextlib.suppress(OSError):
            # Its own group leader (setsid): the group is the tests' too. Else only the pid.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def session_processes() -> dict[int, str]:
    """Live (non-zombie) processes, other than this one, that this session started."""
    marker = f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}".encode() + b"\0"
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
            if marker not in environ or not processes.pid_alive(int(entry.name)):
                continue
            argv = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        found[int(entry.name)] = argv.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """What a test needs is not on this machine: skip it, but fail under CI=true, where
    `.ci/run` installs everything and a skip would hide a missing emulator or tool."""
    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_components(*components: str) -> None:
    """Skip (fail under CI=true) when what `components` need is not on this machine."""
    missing = stack.missing_prerequisites(components)
    if missing:
        unavailable("local stack prerequisites missing: " + "; ".join(missing))


def _started(component: stack.Component) -> stack.Component:
    try:
        component.wait_healthy(START_TIMEOUT)
    except processes.ProcessStartError as exc:
        processes.stop_process(component.process)
        pytest.fail(str(exc), pytrace=False)
    return component


@dataclass(frozen=True)
class HeavyBudget:
    """How much a heavy test (fuzzing, a scale run; marked `heavy`) may do: a little in
    `make test` and CI, whose whole run stays under 30 minutes on 2 cores, and much more
    under `make bench` (BATCHLINE_TEST_BUDGET=bench)."""

    name: str  # "test" or "bench"
    #: Wall-clock seconds one heavy test should stay under.
    seconds: float

    def pick(self, test: int, bench: int) -> int:
        """`test` examples (or lines, rounds...) in `make test`, `bench` in `make bench`."""
        return bench if self.name == "bench" else test


@pytest.fixture(scope="session")
def heavy_budget() -> HeavyBudget:
    if os.environ.get("BATCHLINE_TEST_BUDGET", "").strip().lower() == "bench":
        return HeavyBudget("bench", seconds=600.0)
    return HeavyBudget("test", seconds=30.0)


@pytest.fixture(name="require_components", scope="session")
def require_components_fixture() -> Callable[..., None]:
    """`require_components("firestore", "gcs", ...)`: skip (or fail under CI) if missing."""
    return require_components


@pytest.fixture(scope="session")
def emulator_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the single-emulator fixtures write their logs."""
    return tmp_path_factory.mktemp("emulators")


@pytest.fixture(scope="session")
def firestore_emulator(emulator_log_dir: Path) -> Iterator[str]:
    """A Firestore emulator for the session; yields its host, "127.0.0.1:PORT"."""
    require_components("firestore")
    component = _started(stack.start_firestore(emulator_log_dir))
    try:
        yield str(component.url)
    finally:
        processes.stop_process(component.process)


@pytest.fixture(scope="session")
def pubsub_emulator(emulator_log_dir: Path) -> Iterator[str]:
    """A Pub/Sub emulator for the session; yields its host, "127.0.0.1:PORT"."""
    require_components("pubsub")
    component = _started(stack.start_pubsub(emulator_log_dir))
    try:
        yield str(component.url)
    finally:
        processes.stop_process(component.process)


@pytest.fixture(scope="session")
def gcs_server(emulator_log_dir: Path) -> Iterator[str]:
    """A fake-gcs-server (memory backend, no notifications); yields "http://127.0.0.1:PORT"."""
    require_components("gcs")
    component = _started(stack.start_gcs(emulator_log_dir))
    try:
        yield str(component.url)
    finally:
        processes.stop_process(component.process)


@pytest.fixture
def set_client_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, str]], None]:
    """A function that sets env vars for this test only, so in-process Google clients and
    `Settings.from_env()` talk to the emulators: `set_client_env(local_stack.client_env())`."""

    def apply(env: Mapping[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return apply
