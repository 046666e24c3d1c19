"""`make package`: the zip Cloud Functions builds from.

The acceptance test installs the zip's requirements.txt into a new virtual environment
(from PyPI, through pip's cache), unpacks the zip as Cloud Functions' build does, and in
that environment alone (not this repository, not this venv) loads each function the way
functions-framework does at start-up: `create_app(target, source)`, then the registry's
signature type for it, which must be the one its trigger in infra/ needs.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from . import consistency as c

ROOT = c.ROOT
SCRIPT = ROOT / "scripts" / "package.py"
INSTALL_TIMEOUT = 600

# Runs in the clean venv, in the unpacked source directory, once per entry point.
LOAD_FUNCTION = """
import json, sys
from functions_framework import _function_registry as registry, create_app

target = sys.argv[1]
app = create_app(target=target, source="main.py")
function = registry.get_user_function("main.py", sys.modules["main"], target)
print(json.dumps({
    "target": target,
    "signature": registry.get_func_signature_type(target, None),
    "qualname": function.__qualname__,
    "module_file": sys.modules["main"].__file__,
    "batchline_file": sys.modules["batchline"].__file__,
    "app": type(app).__name__,
}))
"""

IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import batchline
failed = {}
names = [m.name for m in pkgutil.walk_packages(batchline.__path__, "batchline.")]
for name in names + sys.argv[1:]:
    try:
        module, _, attribute = name.partition(":")
        imported = importlib.import_module(module)
        if attribute and not hasattr(imported, attribute):
            importlib.import_module(f"{module}.{attribute}")
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"imported": len(names), "failed": failed}))
"""


# The pre-submit estimator counts OpenAI tokens with the BPE files shipped in the zip: with
# the network and tiktoken's downloader blocked, it must still work.
ESTIMATE_OFFLINE = """
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network blocked by the test")

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import tiktoken.load

def no_download(*args, **kwargs):
    raise AssertionError("tiktoken tried to fetch its BPE file")

tiktoken.load.read_file = no_download
tiktoken.load.read_file_cached = no_download

from batchline.domain import _tokenizers
from batchline.domain.estimate import estimate_input_tokens

line = sys.argv[1]
print(json.dumps({
    "tokens": {m: estimate_input_tokens("openai", m, line) for m in ("gpt-4.1", "gpt-4")},
    "data_dir": _tokenizers.__file__,
}))
"""


def load_packager() -> ModuleType:
    spec = importlib.util.spec_from_file_location("batchline_package_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def package_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip, built as `make package` builds it (the script, in a subprocess)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.parent == out and path.exists()
    return path


@pytest.fixture(scope="session")
def deployed_source(package_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip unpacked, as Cloud Functions' build sees the source."""
    target = tmp_path_factory.mktemp("source")
    with zipfile.ZipFile(package_zip) as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="session")
def clean_python(deployed_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv with only the zip's requirements.txt installed."""
    home = tmp_path_factory.mktemp("clean-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    python = home / "bin" / "python"
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "-r",
            str(deployed_source / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"pip install -r requirements.txt failed:\n{result.stderr[-4000:]}"
    )
    yield python
    shutil.rmtree(home, ignore_errors=True)


def run_clean(python: Path, source: Path, script: str, *args: str) -> dict[str, object]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(source),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [str(python), "-c", script, *args],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr[-4000:]}"
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------- the zip itself


def test_zip_is_named_by_its_md5(package_zip: Path) -> None:
    digest = hashlib.md5(package_zip.read_bytes()).hexdigest()
    assert package_zip.name == f"batchline-functions-{digest}.zip"


def test_zip_holds_main_the_package_and_pinned_requirements(package_zip: Path) -> None:
    with zipfile.ZipFile(package_zip) as archive:
        names = archive.namelist()
        main = archive.read("main.py")
        requirements = archive.read("requirements.txt").decode().split()
    assert names == sorted(names)
    assert main == (ROOT / "functions" / "main.py").read_bytes()
    assert "batchline/__init__.py" in names and "batchline/config.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # The product package only: the CLI, the local stack and the emulators are packages of
    # their own (batchline_tools, batchline_emulators), out of the zip without an exclusion list.
    assert [n for n in names if not n.startswith("batchline/")] == ["main.py", "requirements.txt"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(requirements) == sorted(d.replace(" ", "") for d in pyproject["dependencies"])
    assert all("==" in r for r in requirements)
    # The Vertex AI adapter's client library is deployed with it.
    assert any(r.startswith("google-cloud-aiplatform==") for r in requirements)


def test_zip_carries_the_tokenizer_data(package_zip: Path) -> None:
    """tiktoken's BPE files go with the functions (they never download them); the tool
    that rebuilds them does not."""
    folder = "batchline/domain/_tokenizers/"
    with zipfile.ZipFile(package_zip) as archive:
        names = archive.namelist()
        for name in ("o200k_base.tiktoken.gz", "cl100k_base.tiktoken.gz"):
            shipped = ROOT / "shared" / folder / name
            assert archive.read(folder + name) == shipped.read_bytes()
        requirements = archive.read("requirements.txt").decode().split()
    assert folder + "refresh.py" not in names
    assert any(r.startswith("tiktoken==") for r in requirements)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The files the package is built from, copied so that a test may change them."""
    tree = tmp_path / "repo"
    shutil.copytree(ROOT / "functions", tree / "functions")
    shutil.copytree(
        ROOT / "shared" / "batchline",
        tree / "shared" / "batchline",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_zip_is_reproducible(repo_copy: Path) -> None:
    packager = load_packager()
    first = packager.build_zip(repo_copy)
    assert first == packager.build_zip(ROOT)
    os.utime(repo_copy / "functions" / "main.py", (1, 1))  # another mtime is not a change
    assert packager.build_zip(repo_copy) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert {i.date_time for i in archive.infolist()} == {packager.FIXED_TIME}


def test_a_content_change_changes_the_name(repo_copy: Path, tmp_path: Path) -> None:
    packager = load_packager()
    before = packager.write(tmp_path / "dist", repo_copy)
    assert packager.write(tmp_path / "dist", repo_copy) == before
    main = repo_copy / "functions" / "main.py"
    main.write_text(main.read_text() + "\n")
    after = packager.write(tmp_path / "dist", repo_copy)
    assert after != before and after.exists() and not before.exists()


def test_unpinned_dependency_is_refused(tmp_path: Path) -> None:
    packager = load_packager()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["orjson>=3"]\n')
    with pytest.raises(packager.PackageError, match="not pinned"):
        packager.requirements(pyproject)


def test_deployed_modules_import_nothing_left_out(package_zip: Path) -> None:
    """Every `batchline.*` module the zip imports (lazily too) is in the zip."""
    with zipfile.ZipFile(package_zip) as archive:
        sources = {n: archive.read(n) for n in archive.namelist() if n.endswith(".py")}
    modules = {n[: -len(".py")].replace("/", ".").removesuffix(".__init__") for n in sources}
    missing = set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("batchline") and module not in modules:
                missing.add(module)
            if isinstance(node, ast.Import):
                missing.update(
                    a.name
                    for a in node.names
                    if a.name.startswith("batchline") and a.name not in modules
                )
    assert not missing, f"imported but not in the zip: {sorted(missing)}"


# ------------------------------------------------------- the acceptance test: clean venv


def third_party_imports(source: Path) -> list[str]:
    """Every non-stdlib, non-batchline import of the deployed code, lazy ones included:
    "module" for `import module`, "module:name" for `from module import name`."""
    found = set()
    for path in [source / "main.py", *sorted((source / "batchline").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.update(f"{node.module}:{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
    return sorted(
        m
        for m in found
        if m.split(".")[0].split(":")[0] not in sys.stdlib_module_names
        and m.split(".")[0].split(":")[0] not in ("batchline", "__future__")
    )


def test_every_module_and_dependency_imports_in_a_clean_venv(
    clean_python: Path, deployed_source: Path
) -> None:
    imports = third_party_imports(deployed_source)
    assert "google.cloud:firestore" in imports and "openai" in imports
    assert "google.cloud.aiplatform_v1.services.job_service:JobServiceClient" in imports
    report = run_clean(clean_python, deployed_source, IMPORT_EVERYTHING, *imports)
    assert report["failed"] == {}
    assert int(str(report["imported"])) > 10


def test_the_estimator_counts_tokens_offline_in_a_clean_venv(
    clean_python: Path, deployed_source: Path
) -> None:
    from batchline.domain.estimate import estimate_input_tokens

    line = json.dumps(
        {
            "custom_id": "c",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello world"}]},
        }
    )
    report = run_clean(clean_python, deployed_source, ESTIMATE_OFFLINE, line)
    assert report["tokens"] == {
        model: estimate_input_tokens("openai", model, line) for model in ("gpt-4.1", "gpt-4")
    }
    assert str(report["data_dir"]).startswith(str(deployed_source))


@pytest.mark.parametrize("function", sorted(c.infra_facts().locals["functions"]))
def test_entry_point_loads_with_functions_framework(
    clean_python: Path, deployed_source: Path, function: str
) -> None:
    spec = c.infra_facts().locals["functions"][function]
    expected = "http" if spec["trigger"] == "http" else "cloudevent"
    loaded = run_clean(clean_python, deployed_source, LOAD_FUNCTION, spec["entry_point"])
    assert loaded["signature"] == expected
    assert loaded["qualname"] == spec["entry_point"]
    assert loaded["app"] == "Flask"
    # Loaded from the unpacked zip, not from this repository or its venv.
    assert str(loaded["module_file"]).startswith(str(deployed_source))
    assert str(loaded["batchline_file"]).startswith(str(deployed_source))
