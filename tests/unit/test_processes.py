"""Stopping the local stack's children: every group at once, SIGKILL after the grace period,
bounded in time however many children there are and whatever they do with SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from batchline_tools.local import processes

SLEEPER = "import time; time.sleep(600)"
#: Ignores SIGTERM (as a busy JVM or a gunicorn worker mid-request may seem to).
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)
#: Forks a grandchild in its own group, as gunicorn forks its worker.
FORKING = "import subprocess, time; subprocess.Popen(['sleep', '600']); time.sleep(600)"


def start(name: str, code: str, tmp_path: Path) -> processes.ManagedProcess:
    return processes.start_process(
        name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log"
    )


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stop_all_stops_every_group_at_once_and_kills_what_ignores_sigterm(
    tmp_path: Path,
) -> None:
    children = [start(f"sleeper-{n}", SLEEPER, tmp_path) for n in range(3)]
    children += [start(f"stubborn-{n}", STUBBORN, tmp_path) for n in range(2)]
    children.append(start("forking", FORKING, tmp_path))
    for child in children:
        if child.name.startswith("stubborn"):
            wait_for(lambda c=child: "ready" in processes.tail(c.log_path).splitlines())
    wait_for(lambda: len(processes._group_members(children[-1].pgid) or []) == 2)

    report = processes.stop_all(children, grace=1.0, kill_wait=30.0)

    assert sorted(report.signalled) == sorted(c.name for c in children)
    assert sorted(report.killed) == ["stubborn-0", "stubborn-1"]
    assert report.alive == []
    assert not any(c.group_alive() for c in children)  # the grandchild went with its group
    assert all(c.exit_code() is not None for c in children)  # leaders reaped
    # One grace period for them all, not one each (the SIGKILL itself is quick).
    assert 1.0 <= report.seconds < 1.0 + 10.0, report
    assert "SIGKILL after the grace period: stubborn-" in str(report)


def test_a_child_that_exits_on_sigterm_is_not_waited_for(tmp_path: Path) -> None:
    children = [start(f"sleeper-{n}", SLEEPER, tmp_path) for n in range(4)]
    report = processes.stop_all(children, grace=60.0)
    assert report.killed == [] and report.alive == []
    assert report.seconds < 30.0  # they exit at once; only a broken stop waits 60 s
    assert not processes.stop_process(children[0])  # already gone: nothing to signal


#: Counts the SIGINTs it gets in the second after the first, writes the count, exits.
COUNTER = """
import signal, sys, time
from pathlib import Path
got = []
signal.signal(signal.SIGINT, lambda *_: got.append(time.monotonic()))
print("ready", flush=True)
while not got:
    time.sleep(0.01)
time.sleep(1.0)
Path(sys.argv[1]).write_text(str(len(got)))
"""
#: A supervisor (as gunicorn's master): passes SIGINT on to its worker, waits for it.
FORWARDER = """
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
def forward(signum, frame):
    worker.send_signal(signal.SIGINT)
    worker.wait()
    sys.exit(0)
signal.signal(signal.SIGINT, forward)
print("ready", flush=True)
time.sleep(600)
"""


def test_a_supervisor_alone_gets_the_stop_signal_and_passes_it_on(tmp_path: Path) -> None:
    count = tmp_path / "count"
    supervisor = processes.start_process(
        "supervisor",
        [sys.executable, "-c", FORWARDER, COUNTER, str(count)],
        log_path=tmp_path / "supervisor.log",
        stop_signal=signal.SIGINT,
        stop_leader_only=True,
    )
    # Both print "ready" on a line of its own (the log's first line quotes the command).
    wait_for(lambda: processes.tail(supervisor.log_path).splitlines().count("ready") == 2)
    report = processes.stop_all([supervisor], grace=60.0)
    assert report.killed == [] and not supervisor.group_alive()
    # Once: had the group been signalled too, the worker would have had it twice (the
    # double delivery that deadlocks a gunicorn worker's quick shutdown).
    assert count.read_text() == "1"
    restored = processes.ManagedProcess.from_dict(supervisor.to_dict())
    assert (restored.stop_signal, restored.stop_leader_only) == (signal.SIGINT, True)


def test_interrupts_are_held_off_during_a_stop() -> None:
    before = signal.getsignal(signal.SIGINT)
    with processes.interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while stopping
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before
