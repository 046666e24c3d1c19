"""tiktoken's BPE files for OpenAI models, shipped with batchline: nothing is downloaded.

tiktoken fetches `<name>.tiktoken` from openaipublic.blob.core.windows.net the first time
an encoding is used. That host is unreachable here and in CI, and a download is an
unwelcome network call (and cold-start cost) in a Cloud Function. The files in this folder
are those files, byte for byte, gzip-compressed; each is checked when loaded against the
sha256 that tiktoken itself pins for it (`tiktoken_ext/openai_public.py`), with tiktoken's
own `check_hash`, and the encoding is built from it with tiktoken's regex and special
tokens (copied below from tiktoken 0.14.0; tests/unit/test_estimate.py checks both against
the installed tiktoken).

Where they came from: the npm package `tiktoken` (1.0.22) ships the same ranks as
`encoders/<name>.json`; `refresh.py` (`make tokenizers`) rebuilds the .tiktoken files from
it and refuses any whose sha256 is not tiktoken's. tiktoken pins these files by hash, so
they never change: a refresh is only for adding an encoding.
"""

from __future__ import annotations

import binascii
import gzip
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

#: tiktoken's expected sha256 of each file (tiktoken_ext/openai_public.py).
EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
#: Where tiktoken downloads each file from (and, sha1-hashed, its cache file's name).
SOURCE_URLS = {
    name: f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    for name in EXPECTED_SHA256
}

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_SPECS: dict[str, dict[str, Any]] = {
    "o200k_base": {
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    },
    "cl100k_base": {
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "special_tokens": {
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    },
}

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


class TokenizerDataError(RuntimeError):
    """A shipped BPE file is missing or is not the file tiktoken expects."""


def data_file(name: str) -> str:
    """The name of `name`'s compressed BPE file in this package."""
    return f"{name}.tiktoken.gz"


def bpe_file(name: str) -> bytes:
    """The official `<name>.tiktoken` file, checked against tiktoken's expected sha256."""
    from tiktoken.load import check_hash

    if name not in EXPECTED_SHA256:
        raise TokenizerDataError(f"no BPE file is shipped for {name!r}")
    try:
        compressed = resources.files(__name__).joinpath(data_file(name)).read_bytes()
        data = gzip.decompress(compressed)
    except (OSError, EOFError) as exc:
        raise TokenizerDataError(f"cannot read {data_file(name)}: {exc}") from exc
    if not check_hash(data, EXPECTED_SHA256[name]):
        raise TokenizerDataError(
            f"{data_file(name)} is not tiktoken's {name} (sha256 differs from "
            f"{EXPECTED_SHA256[name]})"
        )
    return data


def mergeable_ranks(name: str) -> dict[bytes, int]:
    """`name`'s ranks, as tiktoken's `load_tiktoken_bpe` reads them (base64 token, rank)."""
    parts = bpe_file(name).split()
    # Lines are "<base64 token> <rank>": decoding every token in C keeps this ~0.1 s.
    return dict(zip(map(binascii.a2b_base64, parts[0::2]), map(int, parts[1::2]), strict=True))


def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` (o200k_base or cl100k_base), built once per process."""
    found = _encodings.get(name)
    if found is not None:
        return found
    with _lock:
        found = _encodings.get(name)
        if found is None:
            import tiktoken

            if name not in _SPECS:
                raise TokenizerDataError(f"no BPE file is shipped for {name!r}")
            spec = _SPECS[name]
            found = tiktoken.Encoding(
                name,
                pat_str=spec["pat_str"],
                mergeable_ranks=mergeable_ranks(name),
                special_tokens=dict(spec["special_tokens"]),
            )
            _encodings[name] = found
    return found
