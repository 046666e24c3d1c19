"""`batchline estimate FILE`: the file planned here, with no cloud, showing the same
`model: "auto"` choices planning makes (tests/unit/test_selection.py's file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from batchline_tools.cli import main

from .test_selection import EXPECTED, FLASH, HAIKU, MINI, NOT_FOR_GEMINI, auto_file

SETTINGS = (
    "BATCHLINE_ENABLED_PROVIDERS",
    "BATCHLINE_AUTO_CANDIDATES",
    "BATCHLINE_PRICES",
    "BATCHLINE_DEFAULT_MODEL",
)


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    """The planning test's file, its lines naming no model: `--model auto` chooses."""
    lines = [orjson.loads(raw) for raw in auto_file().splitlines()]
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({k: v for k, v in obj.items() if k != "model"}) + b"\n" for obj in lines
        )
    )
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["estimate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_shows_the_choices_planning_makes(
    input_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run([str(input_file), "--model", "auto", "--json"], capsys)
    assert code == 0
    view = orjson.loads(out)
    assert (view["lines"], view["requests"], view["invalid"]) == (5, 4, 1)
    assert [(i["line"], i["field"]) for i in view["invalid_lines"]] == [(5, "model")]
    counts: dict[str, int] = {}
    for model, _ in EXPECTED.values():
        counts[model] = counts.get(model, 0) + 1
    assert {c["model"]: c["requests"] for c in view["auto"]} == counts
    assert {f"{c['provider']}/{c['model']}": c["requests"] for c in view["chunks"]} == counts
    haiku = next(c for c in view["auto"] if c["model"] == HAIKU)
    assert haiku["reasons"] == {
        f"cheapest of 1; ruled out: {MINI} (context window), {FLASH} (schema)": 1
    }
    cost = view["cost_usd"]
    assert 0 < cost["low"] < cost["high"] < cost["realtime_high"]


def test_text_shows_lines_invalid_lines_chunks_choices_and_cost(
    input_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run([str(input_file), "--model", "auto"], capsys)
    assert code == 0
    text = out.splitlines()
    assert text[0] == "in.jsonl: 5 lines (0 blank lines skipped), 4 requests, 1 invalid"
    assert text[2].startswith("  line 5: model: 'auto': no candidate can take this line (")
    assert f"  {MINI}: 2 chunks, 2 requests" not in out  # one chunk per model
    assert f"  {MINI}: 1 chunks, 2 requests, " in out
    assert f"  {FLASH}: 1 chunks, 1 requests, " in out
    assert "model auto chose:" in text
    assert f"  {MINI}: 2 lines" in text
    assert "    1 cheapest of 3" in text
    assert f"    1 cheapest of 2; ruled out: {FLASH} (schema)" in text
    assert text[-1].startswith("estimated cost: $")


def test_the_flags_choose_as_the_job_options_do(
    tmp_path: Path, input_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "answer.json"
    schema.write_bytes(orjson.dumps(NOT_FOR_GEMINI["schema"]))
    args = [str(input_file), "--model", "auto", "--candidates", f"{FLASH},{HAIKU}"]
    code, out, _ = run([*args, "--prefer", "speed", "--schema", str(schema), "--json"], capsys)
    assert code == 0
    view = orjson.loads(out)
    # The job's schema is on every line now, and Gemini, the faster, cannot express it:
    # Haiku takes every line it can (not line 5's temperature).
    assert {c["model"]: c["requests"] for c in view["auto"]} == {HAIKU: 4}
    assert [i["line"] for i in view["invalid_lines"]] == [5]


def test_bad_options_name_the_option(input_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([str(input_file), "--candidates", "openai/gpt-9"], capsys)
    assert code == 1
    assert "option 'candidates': unknown model 'openai/gpt-9'" in err
    with pytest.raises(SystemExit):
        main(["estimate", str(input_file), "--prefer", "fast"])
    assert "--prefer: invalid choice: 'fast'" in capsys.readouterr().err


def test_the_installed_command_runs_without_a_stack_or_a_cloud(input_file: Path) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "batchline"),
            "estimate",
            str(input_file),
            "--model",
            "auto",
            "--json",
        ],
        capture_output=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["requests"] == 4
