"""Submitters that really die: processes killed with SIGKILL at a chosen point of a
provider create, started fast enough to crash dozens of times in one test.

A process that imports batchline, the Google clients and the provider SDKs takes seconds
to start on a loaded machine. `CrashServer` starts one such process (in its own process
group, stopped at the end) that imports everything once and then forks a child per
command; the child builds its clients afresh (the server never opens a connection, so the
children share none), runs submitters, and is killed by SIGKILL at its hook:

- `after_create`: right after the provider accepted the create, before Firestore heard
  of the batch (the create gap);
- `before_create`: as the create is about to be sent (the provider never gets it).

A command names the jobs to advance (one thread each, as concurrent submit invocations
of one instance would) and an offset added to the wall clock, so that a test can move
time past a dead holder's lease without waiting for it. Its answer is the child's exit
code: -9 when it was killed at its hook, 0 when it finished without reaching it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

SERVER = r"""
import json, os, signal, sys, threading, time, traceback

import anthropic  # noqa: F401  (imported once, before any fork)
import google.cloud.firestore  # noqa: F401
import google.cloud.pubsub_v1  # noqa: F401
import google.cloud.storage  # noqa: F401
import openai  # noqa: F401

from batchline import bootstrap
from batchline.adapters.providers.anthropic import AnthropicProvider
from batchline.adapters.providers.openai import OpenAIProvider
from batchline.services.advance import advance_job
from batchline.services.plan import new_owner


class OffsetClock:
    def __init__(self, offset):
        self.offset = offset

    def now(self):
        return time.time() + self.offset


def die_at(hook):
    def killer(cls):
        real = cls.create_batch

        def create_batch(self, payload, tag, model, uploaded=None):
            if hook == "before_create":
                os.kill(os.getpid(), signal.SIGKILL)
            batch = real(self, payload, tag, model, uploaded)
            if hook == "after_create":
                os.kill(os.getpid(), signal.SIGKILL)
            return batch

        cls.create_batch = create_batch

    for cls in (AnthropicProvider, OpenAIProvider):
        killer(cls)


def child(command):
    os.environ.update(command["env"])
    die_at(command["hook"])
    deps = bootstrap.build()
    deps.clock = OffsetClock(command["offset"])
    failures = []

    def advance(job_id):
        try:
            job = deps.store.get_job(job_id)
            advance_job(deps, job, new_owner(), deps.clock.now() + 300)
        except BaseException:
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=advance, args=(j,)) for j in command["jobs"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.stderr.write("\n".join(failures))
        os._exit(3)
    os._exit(0)


for line in sys.stdin:
    command = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(command)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class CrashServer:
    """The fork server (see the module docstring); `run` one command at a time."""

    def __init__(self, log_dir: Path) -> None:
        self._log = (log_dir / "crash-server.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "0"},
        )
        self.pid = self._process.pid

    def run(
        self,
        env: Mapping[str, str],
        jobs: Sequence[str],
        *,
        offset: float,
        hook: str = "after_create",
        timeout: float = 180.0,
    ) -> int:
        """Fork a child that advances `jobs` with the clock `offset` seconds ahead and dies
        at `hook`; its exit code (-9: killed at the hook)."""
        command = {"env": dict(env), "jobs": list(jobs), "offset": offset, "hook": hook}
        stdin, stdout = self._pipes()
        stdin.write((json.dumps(command) + "\n").encode())
        stdin.flush()
        answer = _read_line(stdout, timeout)
        code: int = json.loads(answer)["exit"]
        return code

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        assert self._process.stdin is not None and self._process.stdout is not None
        return self._process.stdin, self._process.stdout

    def close(self) -> None:
        """Stop the server (and any child left) by its process group."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # its own group: the server and a child
            self._process.wait(timeout=10)
        self._log.close()


def _read_line(stream: IO[bytes], timeout: float) -> str:
    """The next line of `stream`, waiting at most `timeout` seconds for it."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"the crash server gave no answer in {timeout:.0f} s")
    line = stream.readline()
    if not line:
        raise RuntimeError("the crash server exited (see crash-server.log)")
    return line.decode()
