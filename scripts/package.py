"""Build the Cloud Functions source zip: `make package`.

The zip holds what Cloud Functions' Python build expects at its root:

    main.py            functions/main.py, the four entry points
    batchline/         the package from shared/batchline, whole: the CLI, the local stack and
                       the provider emulators are packages of their own (batchline_tools,
                       batchline_emulators) that the functions never import,
                       with tiktoken's BPE files (batchline/domain/_tokenizers/*.tiktoken.gz)
                       so that the deployed functions never download them, and the
                       jobs page's templates and static files (batchline/web/)
    requirements.txt   pyproject's [project].dependencies, every one pinned with ==

It is reproducible (sorted entries, fixed timestamps and modes), so its MD5 changes only
when its content does; it is written as dist/batchline-functions-<md5>.zip, the name
Terraform uploads it under, and its path is printed on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "batchline-functions"
# Data files the functions read at run time: the zip is refused without them.
REQUIRED_DATA = (
    "batchline/domain/_tokenizers/cl100k_base.tiktoken.gz",
    "batchline/domain/_tokenizers/o200k_base.tiktoken.gz",
    # The jobs page (the api function serves it).
    "batchline/web/templates/layout.html",
    "batchline/web/templates/jobs.html",
    "batchline/web/templates/job.html",
    "batchline/web/assets/page.js",
    "batchline/web/assets/page.css",
)
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9.+!-]+$")


class PackageError(Exception):
    """The package cannot be built as it is (an unpinned dependency, a missing file)."""


def requirements(pyproject: Path) -> str:
    """requirements.txt from [project].dependencies; refuses anything not pinned with ==."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = []
    for spec in project.get("dependencies", []):
        spec = spec.replace(" ", "")
        if not PINNED.match(spec):
            raise PackageError(f"dependency {spec!r} is not pinned with ==")
        lines.append(spec)
    if not lines:
        raise PackageError(f"{pyproject} lists no [project].dependencies")
    return "".join(f"{line}\n" for line in sorted(lines, key=str.lower))


def members(root: Path = ROOT) -> Iterator[tuple[str, bytes]]:
    """(name in the zip, content) for every file, sorted by name."""
    main = root / "functions" / "main.py"
    package = root / "shared" / "batchline"
    if not main.is_file() or not (package / "__init__.py").is_file():
        raise PackageError(f"expected {main} and {package}/__init__.py")
    files: dict[str, bytes] = {
        "main.py": main.read_bytes(),
        "requirements.txt": requirements(root / "pyproject.toml").encode(),
    }
    for path in package.rglob("*"):
        name = "batchline/" + path.relative_to(package).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files[name] = path.read_bytes()
    missing = [name for name in REQUIRED_DATA if name not in files]
    if missing:
        raise PackageError(f"missing data files: {', '.join(missing)}")
    for name in sorted(files):
        yield name, files[name]


def build_zip(root: Path = ROOT) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members(root):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that the mode below is honoured
            info.external_attr = 0o100644 << 16
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def write(out_dir: Path, root: Path = ROOT) -> Path:
    """Write dist/batchline-functions-<md5>.zip, remove older builds, return its path."""
    data = build_zip(root)
    digest = hashlib.md5(data).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{NAME}-{digest}.zip"
    for old in out_dir.glob(f"{NAME}-*.zip"):
        if old != target:
            old.unlink()
    if not target.exists() or target.read_bytes() != data:
        partial = target.with_suffix(".zip.partial")
        partial.write_bytes(data)
        partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory")
    args = parser.parse_args(argv)
    try:
        path = write(args.out)
    except PackageError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
