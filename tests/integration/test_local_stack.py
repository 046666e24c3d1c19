"""The local stack runner: every component comes up healthy, the event bridge turns a GCS
notification into Eventarc's storage CloudEvent, the ticker feeds the poll topic, and no
process outlives `down`, Ctrl-C or a failed start."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from batchline_tools.local import processes, stack
from batchline_tools.local.stack import LocalStack, LocalStackError, StackConfig

pytestmark = pytest.mark.integration

SHARED = Path(stack.__file__).resolve().parents[2]
#: Bounds on waits that end as soon as what they wait for happens; generous, since they
#: only bound a failure (a stop itself takes at most about stop_grace + 5 s).
WAIT_SECONDS = 60.0
START_SECONDS = 180.0


# ------------------------------------------------------------------------------ helpers


class Recorder:
    """A tiny HTTP server standing in for the submit function: records every POST.

    Objects whose name contains "fail-once" get a 500 on their first delivery.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._failed: set[str] = set()
        self._cond = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                subject = self.headers.get("ce-subject", "")
                status = 200
                if "fail-once" in subject and subject not in recorder._failed:
                    recorder._failed.add(subject)
                    status = 500
                with recorder._cond:
                    recorder.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": json.loads(body),
                            "status": status,
                        }
                    )
                    recorder._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = WAIT_SECONDS
    ) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.requests), timeout=timeout):
                raise AssertionError(f"timed out; recorded: {self.requests}")
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return not processes.pid_alive(pid)  # a zombie waiting for init to reap it


def _group_dead(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return not processes.group_alive(pgid)


def assert_all_gone(pids: Mapping[str, tuple[int, int]], timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    alive: dict[str, tuple[int, int]] = dict(pids)
    while alive and time.monotonic() < deadline:
        alive = {n: p for n, p in alive.items() if not (_dead(p[0]) and _group_dead(p[1]))}
        if alive:
            time.sleep(0.1)
    assert not alive, f"still alive: {alive}"


def _pids(state: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    return {name: (c["pid"], c["pgid"]) for name, c in state["components"].items()}


def _cli(*args: str, timeout: float = START_SECONDS) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHARED), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "batchline_tools.local.cli", "local", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# ----------------------------------------------------------- one stack, many checks


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def bridged_stack(
    recorder: Recorder,
    tmp_path_factory: pytest.TempPathFactory,
    require_components: Callable[..., None],
) -> Iterator[LocalStack]:
    """A full stack whose bridge posts to the recorder instead of the submit function."""
    require_components(*stack.COMPONENTS)
    config = StackConfig(
        run_dir=tmp_path_factory.mktemp("bridged"),
        tick_seconds=0.5,
        bridge_target=recorder.url,
    )
    with LocalStack(config) as running:
        yield running


def test_up_brings_every_component_healthy(bridged_stack: LocalStack) -> None:
    status = bridged_stack.status()
    assert list(status["components"]) == list(stack.COMPONENTS)
    unhealthy = {n: c for n, c in status["components"].items() if not c["healthy"]}
    assert not unhealthy, unhealthy
    assert status["healthy"] is True

    state = json.loads(bridged_stack.state_path.read_text())
    assert state["status"] == "running"
    assert set(state["components"]) == set(stack.COMPONENTS)
    for name, component in state["components"].items():
        assert component["pgid"] == component["pid"], name
        assert Path(component["log"]) == bridged_stack.log_path(name)
        assert Path(component["log"]).is_file()

    env = bridged_stack.client_env()
    assert env["FIRESTORE_EMULATOR_HOST"] == f"127.0.0.1:{state['ports']['firestore']}"
    assert env["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{state['ports']['gcs']}"
    assert env["BATCHLINE_OPENAI_BASE_URL"].endswith("/v1")
    assert env["BATCHLINE_ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{state['ports']['anthropic']}"
    assert env["ANTHROPIC_API_KEY"] and env["OPENAI_API_KEY"]
    # An http:// endpoint: the Vertex adapter talks REST to the emulator, without credentials.
    assert env["BATCHLINE_VERTEX_API_ENDPOINT"] == f"http://127.0.0.1:{state['ports']['vertex']}"
    assert state["env"] == env


def test_attach_reads_the_same_stack(bridged_stack: LocalStack) -> None:
    attached = LocalStack.attach(bridged_stack.run_dir)
    assert attached.client_env() == bridged_stack.client_env()
    status = attached.status()
    assert status["healthy"] is True
    assert {n: c["pid"] for n, c in status["components"].items()} == {
        n: c.process.pid for n, c in bridged_stack.components.items()
    }
    result = _cli("status", "--json", "--run-dir", str(bridged_stack.run_dir))
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["components"]) == set(stack.COMPONENTS)


def test_upload_reaches_submit_as_storage_cloudevent(
    bridged_stack: LocalStack,
    recorder: Recorder,
    set_client_env: Callable[[Mapping[str, str]], None],
) -> None:
    set_client_env(bridged_stack.client_env())
    from google.cloud import storage

    client = storage.Client()
    cfg = bridged_stack.config
    tag = uuid.uuid4().hex[:8]
    # Only the input bucket triggers submit (as the Eventarc trigger's bucket filter does).
    client.bucket(cfg.output_bucket).blob(f"ignored/{tag}.jsonl").upload_from_string(b"{}\n")
    blob = client.bucket(cfg.input_bucket).blob(f"in/{tag} fail-once.jsonl")
    blob.metadata = {"default_model": "openai/gpt-4.1-mini"}
    blob.upload_from_string(b'{"custom_id":"a"}\n', content_type="application/jsonl")
    blob.reload()

    # The CloudEvents HTTP binding percent-encodes the space (local/bridge.py).
    subject = f"objects/in/{tag}%20fail-once.jsonl"

    def delivered(reqs: list[dict[str, Any]]) -> bool:
        return any(r["headers"].get("ce-subject") == subject and r["status"] == 200 for r in reqs)

    requests = recorder.wait_for(delivered)
    mine = [r for r in requests if r["headers"].get("ce-subject") == subject]
    # The first POST got a 500: the bridge passed it to Pub/Sub, which redelivered.
    assert [r["status"] for r in mine] == [500, 200]
    assert mine[0]["headers"]["ce-id"] == mine[1]["headers"]["ce-id"]
    assert not [r for r in requests if tag in r["headers"].get("ce-subject", "") and r not in mine]

    headers, data = mine[1]["headers"], mine[1]["body"]
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == "google.cloud.storage.object.v1.finalized"
    assert headers["ce-source"] == f"//storage.googleapis.com/projects/_/buckets/{cfg.input_bucket}"
    assert headers["ce-id"]
    assert headers["ce-time"].endswith("Z")
    assert headers["content-type"] == "application/json"
    assert data["bucket"] == cfg.input_bucket
    assert data["name"] == blob.name
    assert data["generation"] == str(blob.generation)
    assert data["size"] == str(blob.size)
    assert data["md5Hash"] == blob.md5_hash
    assert data["contentType"] == "application/jsonl"
    assert data["metadata"] == {"default_model": "openai/gpt-4.1-mini"}
    assert data["timeCreated"] and data["updated"]


def test_ticker_publishes_to_the_poll_topic(
    bridged_stack: LocalStack, set_client_env: Callable[[Mapping[str, str]], None]
) -> None:
    set_client_env(bridged_stack.client_env())
    from google.cloud import pubsub_v1

    cfg = bridged_stack.config
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(cfg.project, f"test-ticks-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(
        name=subscription, topic=f"projects/{cfg.project}/topics/{cfg.poll_topic}"
    )
    try:
        received: list[Any] = []
        deadline = time.monotonic() + WAIT_SECONDS
        while len(received) < 2 and time.monotonic() < deadline:
            response = subscriber.pull(
                subscription=subscription, max_messages=10, timeout=5, return_immediately=False
            )
            received += [m.message for m in response.received_messages]
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=subscription,
                    ack_ids=[m.ack_id for m in response.received_messages],
                )
        assert len(received) >= 2
        assert all(json.loads(m.data) == {"source": "scheduler"} for m in received)
    finally:
        subscriber.delete_subscription(subscription=subscription)
        subscriber.close()


def test_bridge_acknowledges_other_events_and_bad_deliveries(bridged_stack: LocalStack) -> None:
    import urllib.request

    def push(envelope: object) -> int:
        req = urllib.request.Request(
            bridged_stack.bridge_url,
            data=json.dumps(envelope).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)

    data = base64.b64encode(json.dumps({"bucket": "b", "name": "n"}).encode()).decode()
    deleted = {
        "message": {"data": data, "messageId": "9", "attributes": {"eventType": "OBJECT_DELETE"}}
    }
    assert push(deleted) == 204
    assert push({"not": "a push"}) == 204


# ------------------------------------------------------------------- no orphans


@pytest.fixture
def run_dir(tmp_path: Path, require_components: Callable[..., None]) -> Iterator[Path]:
    """A run directory of its own; whatever the test did (or failed to do), the stack
    recorded there is stopped at the end, as `batchline local down` would."""
    require_components(*stack.COMPONENTS)
    path = tmp_path / "run"
    yield path
    if (path / "state.json").exists():
        with contextlib.suppress(LocalStackError):
            LocalStack.attach(path).stop()


def test_detached_up_then_down_leaves_no_process(run_dir: Path) -> None:
    up = _cli("up", "--detach", "--run-dir", str(run_dir), "--tick", "0.5")
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((run_dir / "state.json").read_text())
    pids = _pids(state)
    assert set(pids) == set(stack.COMPONENTS)
    assert all(processes.group_alive(pgid) for _, pgid in pids.values())

    status = _cli("status", "--run-dir", str(run_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    for name in stack.COMPONENTS:
        assert name in status.stdout

    down = _cli("down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert_all_gone(pids)
    assert not (run_dir / "state.json").exists()
    assert _cli("status", "--run-dir", str(run_dir)).returncode == 3


def test_ctrl_c_on_foreground_up_stops_everything(run_dir: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHARED), env.get("PYTHONPATH")) if p)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchline_tools.local.cli",
            "local",
            "up",
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        state_path = run_dir / "state.json"
        deadline = time.monotonic() + START_SECONDS
        state: dict[str, Any] = {}
        while time.monotonic() < deadline and up.poll() is None:
            if state_path.exists():
                state = json.loads(state_path.read_text())
                if state.get("status") == "running":
                    break
            time.sleep(0.2)
        assert state.get("status") == "running", up.stdout.read() if up.stdout else ""
        pids = _pids(state)
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=WAIT_SECONDS)
        assert up.returncode == 0, output
        assert "stopped" in output
        assert_all_gone(pids)
        assert not state_path.exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        _cli("down", "--run-dir", str(run_dir))


def test_failed_start_stops_what_it_started(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, tuple[int, int]] = {}
    real_start = processes.start_process

    def recording_start(name: str, argv: Any, **kwargs: Any) -> processes.ManagedProcess:
        proc = real_start(name, argv, **kwargs)
        started[name] = (proc.pid, proc.pgid)
        return proc

    monkeypatch.setattr(processes, "start_process", recording_start)
    broken = [sys.executable, "-c", "import sys; print('openai emulator exploded'); sys.exit(7)"]
    config = StackConfig(run_dir=run_dir, openai_emulator_command=broken)
    with pytest.raises(LocalStackError) as failure:
        LocalStack(config).start()
    message = str(failure.value)
    assert "openai" in message
    assert "exited with code 7" in message
    assert "openai emulator exploded" in message  # the tail of the failing component's log
    assert {"pubsub", "firestore", "openai", "submit"} <= set(started)
    assert_all_gone(started)
    assert not (run_dir / "state.json").exists()
