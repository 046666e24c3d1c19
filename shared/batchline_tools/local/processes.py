"""Child processes of the local stack: start in their own group, wait for health, stop by group.

Every child runs in a new session (so in its own process group, led by the child), with
stdout and stderr appended to a log file. Stopping signals the whole group, so helpers that
a child forks (gunicorn workers, a JVM's own children) go with it, and every child at once
(`stop_all`): SIGTERM, a grace period (5 s), then SIGKILL of the groups still alive. A process is identified
by pid, process-group id and start time, so that a stale record never signals an unrelated
process that happens to reuse the pid.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

#: How long a stopped child has to exit after SIGTERM before its group gets SIGKILL.
DEFAULT_GRACE_SECONDS = 5.0
#: How long to wait, after SIGKILL, for the kernel to take a group (quick, unless a
#: process is stuck in an uninterruptible call).
KILL_WAIT_SECONDS = 5.0

_handed_out_ports: set[int] = set()


class ProcessStartError(RuntimeError):
    """A child exited or never became healthy; the message carries the tail of its log."""

    def __init__(self, name: str, reason: str, log_path: Path | None = None) -> None:
        self.name = name
        self.reason = reason
        self.log_path = log_path
        message = f"{name}: {reason}"
        if log_path is not None:
            message += f"\n--- last lines of {log_path} ---\n{tail(log_path)}"
        super().__init__(message)


@dataclass
class ManagedProcess:
    """A child started by `start_process` (or re-read from a state file)."""

    name: str
    argv: list[str]
    pid: int
    pgid: int
    log_path: Path
    start_time: int | None = None
    #: What asks it to stop (then SIGKILL after the grace period); see `start_process`.
    stop_signal: signal.Signals = signal.SIGTERM
    #: Send `stop_signal` to the leader only (it passes the stop on to its group).
    stop_leader_only: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": self.argv,
            "pid": self.pid,
            "pgid": self.pgid,
            "log": str(self.log_path),
            "start_time": self.start_time,
            "stop_signal": self.stop_signal.name,
            "stop_leader_only": self.stop_leader_only,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManagedProcess:
        return cls(
            name=str(data["name"]),
            argv=[str(a) for a in data.get("argv", [])],
            pid=int(data["pid"]),
            pgid=int(data["pgid"]),
            log_path=Path(str(data["log"])),
            start_time=data.get("start_time"),
            stop_signal=signal.Signals[str(data.get("stop_signal") or "SIGTERM")],
            stop_leader_only=bool(data.get("stop_leader_only", False)),
        )

    def exit_code(self) -> int | None:
        """The exit code if the child has exited (only known to the process that started it)."""
        if self.popen is not None:
            return self.popen.poll()
        return None

    def is_running(self) -> bool:
        """True while the group leader is alive (and is still the process we started)."""
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid) and _same_process(self.pid, self.start_time)

    def group_alive(self) -> bool:
        """True while any member of the child's process group is alive."""
        if self.popen is not None:
            self.popen.poll()  # reap the leader so that it does not count as a zombie
        return group_alive(self.pgid)

    def stop(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        stop_process(self, grace=grace)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now; never the same one twice within this process.

    Picked below the kernel's ephemeral range: a port is free when we pick it but only
    taken when the component binds it, and in between anything that asks the kernel for
    a port (a JVM's side servers, every outgoing connection) gets one from that range.
    Only when nothing below it is free does this fall back to a kernel-chosen port.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(_LOWEST_PORT, low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port not in _handed_out_ports and _bindable(host, port):
            _handed_out_ports.add(port)
            return port
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("could not find a free TCP port")


_LOWEST_PORT = 20_000


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(part) for part in text.split())
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default
    return low, high


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
    stop_signal: signal.Signals = signal.SIGTERM,
    stop_leader_only: bool = False,
) -> ManagedProcess:
    """Start `argv` in a new session with its output written to `log_path`.

    `stop_signal` is what `stop_all` sends first: SIGTERM, unless the program treats
    SIGTERM as "finish every request first" and something else as "stop now" (gunicorn:
    SIGINT), and nothing is gained by waiting (the local stack's state is in memory).
    With `stop_leader_only` it goes to the child alone, not its group: for a supervisor
    that passes the stop on to its workers itself, which would otherwise get it twice.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab" if append else "wb") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {_quote(argv)}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise ProcessStartError(name, f"cannot execute {argv[0]!r}: {exc}", log_path) from exc
    return ManagedProcess(
        name=name,
        argv=list(argv),
        pid=popen.pid,
        pgid=popen.pid,  # start_new_session makes the child the leader of its own group
        log_path=log_path,
        start_time=process_start_time(popen.pid),
        stop_signal=stop_signal,
        stop_leader_only=stop_leader_only,
        popen=popen,
    )


def http_check(url: str, *, timeout: float = 1.0) -> Callable[[], bool]:
    """Healthy once `url` answers HTTP at all (any status: the server is listening and parsing)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False

    return check


def tcp_check(host: str, port: int, *, timeout: float = 0.5) -> Callable[[], bool]:
    """Healthy once a TCP connection to host:port succeeds."""

    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False

    return check


def wait_healthy(
    proc: ManagedProcess,
    check: Callable[[], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> float:
    """Poll `check` until it passes; fail early if the child exits. Returns seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        code = proc.exit_code()
        if code is not None:
            raise ProcessStartError(
                proc.name, f"exited with code {code} during start", proc.log_path
            )
        if proc.popen is None and not proc.is_running():
            raise ProcessStartError(proc.name, "is not running", proc.log_path)
        if check():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise ProcessStartError(proc.name, f"not healthy after {timeout:.0f} s", proc.log_path)
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


@dataclass
class StopReport:
    """What `stop_all` did: how long it took, and which groups needed SIGKILL (and which,
    rarely, were still alive when it gave up: stuck in the kernel)."""

    seconds: float = 0.0
    signalled: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    alive: list[str] = field(default_factory=list)
    #: Seconds from the stop signal until each one's group was gone.
    took: dict[str, float] = field(default_factory=dict)

    def __iadd__(self, later: StopReport) -> StopReport:
        """This report followed by `later` (a second wave)."""
        self.seconds += later.seconds
        self.signalled += later.signalled
        self.killed += later.killed
        self.alive += later.alive
        self.took.update(later.took)
        return self

    def __str__(self) -> str:
        text = f"{len(self.signalled)} stopped in {self.seconds:.1f} s"
        if self.took:
            slowest = max(self.took, key=self.took.__getitem__)
            text += f" (slowest: {slowest} {self.took[slowest]:.1f} s)"
        if self.killed:
            text += f" (SIGKILL after the grace period: {', '.join(self.killed)})"
        if self.alive:
            text += f"; still alive: {', '.join(self.alive)}"
        return text


def stop_process(proc: ManagedProcess, *, grace: float = DEFAULT_GRACE_SECONDS) -> bool:
    """`stop_all([proc])`. True if anything was signalled."""
    return bool(stop_all([proc], grace=grace).signalled)


def stop_all(
    procs: Sequence[ManagedProcess],
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    kill_wait: float = KILL_WAIT_SECONDS,
) -> StopReport:
    """Stop children in parallel, in bounded time: SIGTERM (each child's `stop_signal`)
    to every process group (or its leader) at once, up to `grace` seconds for them all to
    exit, then
    SIGKILL to each group still alive and up to `kill_wait` seconds for the kernel to take
    them. Takes at most about grace + kill_wait seconds however many children there are
    and however loaded the machine is (a child busy with a request, or starved of CPU, is
    killed, not waited for).
    """
    started = time.monotonic()
    report = StopReport()
    live: list[ManagedProcess] = []
    for proc in procs:
        if (
            proc.popen is None
            and pid_alive(proc.pid)
            and not _same_process(proc.pid, proc.start_time)
        ):
            continue  # the pid was reused by an unrelated process: our child is long gone
        # Once only: a handler that gets its stop signal twice may re-enter and deadlock.
        if proc.stop_leader_only:
            signalled = _signal_pid(proc.pid, proc.stop_signal)
        else:
            signalled = _signal_group(proc.pgid, proc.stop_signal)
        if not signalled and proc.popen is not None and proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it left its group
                proc.popen.send_signal(proc.stop_signal)
                signalled = True
        if signalled or proc.group_alive():  # a group whose leader is gone is killed too
            live.append(proc)
            report.signalled.append(proc.name)
    live = _wait_gone(live, time.monotonic() + grace, started, report.took)
    for proc in live:
        _signal_group(proc.pgid, signal.SIGKILL)
        report.killed.append(proc.name)
    live = _wait_gone(live, time.monotonic() + kill_wait, started, report.took)
    report.alive = [proc.name for proc in live]
    for proc in procs:
        if proc.popen is not None:
            proc.popen.poll()  # reap the leader if it has exited; never block on it
    report.seconds = time.monotonic() - started
    return report


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive during the block are noted and dropped (the stop in
    progress is what they ask for). Only on the main thread; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_gone(
    procs: list[ManagedProcess], deadline: float, started: float, took: dict[str, float]
) -> list[ManagedProcess]:
    """Poll until every group in `procs` is gone or `deadline` passes; those still alive.
    Notes in `took` when each went (seconds since `started`)."""
    live = procs
    while True:
        now = time.monotonic()
        still = [p for p in live if p.group_alive()]
        took.update({p.name: now - started for p in live if p not in still})
        live = still
        if not live or now >= deadline:
            return live
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def group_alive(pgid: int) -> bool:
    """True if any non-zombie process is in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = _group_members(pgid)
    if members is None:  # no /proc: trust the signal probe
        return True
    return any(not _is_zombie(pid) for pid in members)


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to detect pid reuse."""
    stat = _read_stat(pid)
    if stat is None:
        return None
    try:
        return int(stat[21])  # field 22 of /proc/PID/stat
    except (IndexError, ValueError):
        return None


def tail(path: Path, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _same_process(pid: int, start_time: int | None) -> bool:
    if start_time is None:
        return True
    current = process_start_time(pid)
    return current is None or current == start_time


def _signal_pid(pid: int, sig: signal.Signals) -> bool:
    if pid <= 1:
        return False
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _read_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    end = raw.rfind(")")
    if end < 0:
        return None
    return [raw[: raw.find(" ")], raw[raw.find("(") + 1 : end], *raw[end + 2 :].split()]


def _is_zombie(pid: int) -> bool:
    stat = _read_stat(pid)
    return stat is not None and len(stat) > 2 and stat[2] in ("Z", "X")


def _group_members(pgid: int) -> list[int] | None:
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None and len(stat) > 4 and stat[4] == str(pgid):
            members.append(int(entry.name))
    return members


def _quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
