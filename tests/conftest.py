"""Root fixtures: single emulators for integration tests and the whole local stack for e2e.

Each emulator fixture starts its process once per session (own process group, log under
the session's temp dir) and stops it at the end. When java, an emulator jar or the
fake-gcs-server binary is missing, the tests that need it are skipped, except under CI
(`CI=true`), where that is a broken machine and fails loudly.

Override `local_stack_config` in a nested conftest to run the stack with other settings
(e.g. small chunk limits through `function_env`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

try:
    import batchline  # noqa: F401
except ImportError:  # the package is not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from batchline.local import processes, stack
from batchline.local.stack import LocalStack, StackConfig

START_TIMEOUT = 60.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_components(*components: str) -> None:
    """Skip (fail under CI=true) when what `components` need is not on this machine."""
    missing = stack.missing_prerequisites(components)
    if not missing:
        return
    reason = "local stack prerequisites missing: " + "; ".join(missing)
    if _in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _started(component: stack.Component) -> stack.Component:
    try:
        component.wait_healthy(START_TIMEOUT)
    except processes.ProcessStartError as exc:
        processes.stop_process(component.process)
        pytest.fail(str(exc), pytrace=False)
    return component


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


@pytest.fixture(scope="session")
def local_stack_config(tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    """Settings of the session's `local_stack`: fast ticks, a temp run dir."""
    return StackConfig(run_dir=tmp_path_factory.mktemp("local-stack"), tick_seconds=0.5)


@pytest.fixture(scope="session")
def local_stack(local_stack_config: StackConfig) -> Iterator[LocalStack]:
    """The whole local stack, started once per session; `client_env()` for clients."""
    require_components(*stack.COMPONENTS)
    running = LocalStack(local_stack_config)
    try:
        running.start()
    except stack.LocalStackError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def set_client_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, str]], None]:
    """A function that sets env vars for this test only, so in-process Google clients and
    `Settings.from_env()` talk to the emulators: `set_client_env(local_stack.client_env())`."""

    def apply(env: Mapping[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return apply


@pytest.fixture
def local_client_env(
    local_stack: LocalStack, set_client_env: Callable[[Mapping[str, str]], None]
) -> dict[str, str]:
    """`local_stack.client_env()`, applied to this test's environment."""
    env = local_stack.client_env()
    set_client_env(env)
    return env
