"""The session-end check in tests/conftest.py: a process a test started and left running
is reported, killed, and fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LEAKY_TEST = """
import subprocess
from pathlib import Path

def test_leaks_a_process():
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    Path("leaked.pid").write_text(str(child.pid))
"""


def test_a_leftover_process_fails_the_session_and_is_killed(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_configure, pytest_sessionfinish  # noqa: F401\n"
    )
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)  # an outer --basetemp would be wiped by the nested run
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    nested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = nested.stdout + nested.stderr
    pid = int((tmp_path / "leaked.pid").read_text())
    assert nested.returncode == 1, output
    assert "outlived the session" in output and "sleep 600" in output, output
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    assert state == "Z", f"leaked process {pid} is still running"
