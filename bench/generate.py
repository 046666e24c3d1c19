"""Deterministic benchmark data: batchline input files and the matching OpenAI output files.

`write_input` writes a batchline-format JSONL file of `lines` lines (~2 KB a line on
average, so 50,000 lines are ~100 MB) with a small, known share of blank and invalid
lines, and a JSON sidecar saying which lines are which (for checking the merged output).

`provider_files` plays OpenAI: given one staged chunk payload (the `input.jsonl` batchline
uploads), it returns the output file and the error file the Batch API would produce for
it — the real envelope, lines in shuffled order, a few per cent HTTP errors, a few
expired requests and a few requests with no result at all.

Everything is seeded: the same arguments give the same bytes.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

MODEL = "openai/gpt-4.1-mini"
RESPONSE_MODEL = "gpt-4.1-mini-2025-04-14"

# Shares of the input lines.
BLANK_SHARE = 0.0002
INVALID_SHARE = 0.002
NO_ID_SHARE = 0.05  # no custom_id: batchline generates `line-<n>`
# Shares of the provider results.
HTTP_ERROR_SHARE = 0.025
EXPIRED_SHARE = 0.004
MISSING_SHARE = 0.001

_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his "
    "from at which but have an they you were her she there been one all we their "
    "has would when what will more if no out so said can who its them time about "
    "than into only some could these two may first then do any like my now over "
    "such our man me even most made after also did many before must through back "
    "years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three "
    "summarise classify translate extract invoice customer contract refund "
    "shipment latency throughput regression pipeline embedding token café naïve "
    "Zürich résumé façade Ångström 東京 数据 批处理 résultat größe über «quoted» “smart” "
    '— \u2013 … ½ 42 3.14 1,000 2026-06-01 #12345 user@example.com JSON {"key": '
    '"value"} <div> C:\\path\\file.txt \\n\\t tab\tseparated 🙂 🚀 ✅'
)
_WORDS = _WORD_TEXT.split(" ")


def _corpus(rng: random.Random, size: int) -> str:
    """~size characters of word salad with sentences, newlines, quotes and non-ASCII."""
    parts: list[str] = []
    total = 0
    while total < size:
        n = rng.randint(6, 24)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(n))
        sentence = sentence[:1].upper() + sentence[1:] + rng.choice(".....?!:")
        sentence += "\n\n" if rng.random() < 0.08 else ("\n" if rng.random() < 0.1 else " ")
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts)


@dataclass
class InputMeta:
    """What the merged output of an input file must say, line by line."""

    lines: int
    seed: int
    size: int = 0
    blank: list[int] = field(default_factory=list)
    invalid: dict[int, str] = field(default_factory=dict)  # line -> kind
    custom_ids: dict[int, str] = field(default_factory=dict)  # explicit ids of non-blank lines

    def expected_id(self, line: int) -> str:
        return self.custom_ids.get(line) or f"line-{line}"

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "lines": self.lines,
                "seed": self.seed,
                "size": self.size,
                "blank": self.blank,
                "invalid": {str(k): v for k, v in self.invalid.items()},
                "custom_ids": {str(k): v for k, v in self.custom_ids.items()},
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> InputMeta:
        data = orjson.loads(raw)
        return cls(
            lines=data["lines"],
            seed=data["seed"],
            size=data["size"],
            blank=data["blank"],
            invalid={int(k): v for k, v in data["invalid"].items()},
            custom_ids={int(k): v for k, v in data["custom_ids"].items()},
        )


def _content(rng: random.Random, corpus: str, mean: float) -> str:
    # Log-normal lengths (sigma 0.8): many short prompts, a long tail of long ones.
    sigma = 0.8
    mu = math.log(mean) - sigma * sigma / 2
    n = max(20, min(int(rng.lognormvariate(mu, sigma)), 24_000))
    start = rng.randrange(0, len(corpus) - n)
    return corpus[start : start + n]


def _valid_line(rng: random.Random, corpus: str, custom_id: str | None) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if custom_id is not None:
        obj["custom_id"] = custom_id
    obj["model"] = MODEL
    r = rng.random()
    if r < 0.12:  # a short multi-turn conversation
        messages = [
            {"role": "user", "content": _content(rng, corpus, 600)},
            {"role": "assistant", "content": _content(rng, corpus, 400)},
            {"role": "user", "content": _content(rng, corpus, 700)},
        ]
    else:
        messages = [{"role": "user", "content": _content(rng, corpus, 1730)}]
    obj["messages"] = messages
    if rng.random() < 0.25:
        obj["system"] = _content(rng, corpus, 250)
    obj["max_tokens"] = rng.choice((64, 128, 256, 512, 512, 1024, 1024, 2048))
    if rng.random() < 0.3:
        obj["temperature"] = rng.choice((0, 0.2, 0.7, 1, 1.3))
    if rng.random() < 0.05:
        obj["stop"] = ["\n\n", "END"]
    if rng.random() < 0.1:
        obj["metadata"] = {"source": "bench", "batch": rng.randint(1, 99)}
    return obj


_INVALID_KINDS = (
    "truncated_json",
    "unknown_field",
    "missing_messages",
    "bad_role",
    "bad_max_tokens",
    "provider_not_enabled",
    "duplicate_id",
    "not_an_object",
)


def _invalid_line(
    rng: random.Random, corpus: str, kind: str, custom_id: str, earlier_id: str | None
) -> bytes:
    obj = _valid_line(rng, corpus, custom_id)
    if kind == "truncated_json":
        raw = orjson.dumps(obj)
        return raw[: rng.randint(10, len(raw) - 2)]
    if kind == "unknown_field":
        obj["temprature"] = 0.5
    elif kind == "missing_messages":
        del obj["messages"]
    elif kind == "bad_role":
        obj["messages"][0]["role"] = "robot"
    elif kind == "bad_max_tokens":
        obj["max_tokens"] = 0
    elif kind == "provider_not_enabled":
        obj["model"] = "anthropic/claude-haiku-4-5"
    elif kind == "duplicate_id":
        obj["custom_id"] = earlier_id
    elif kind == "not_an_object":
        return orjson.dumps([obj])
    return orjson.dumps(obj)


def write_input(path: Path, lines: int, seed: int = 42) -> InputMeta:
    """Write `lines` lines (blank ones included) to `path`, and `<path>.meta.json`."""
    rng = random.Random(seed)
    corpus = _corpus(rng, 2_000_000)
    meta = InputMeta(lines=lines, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    first_id: str | None = None
    with tmp.open("wb") as out:
        for number in range(1, lines + 1):
            r = rng.random()
            if number > 1 and r < BLANK_SHARE:
                meta.blank.append(number)
                out.write(b"   \n" if rng.random() < 0.5 else b"\n")
                continue
            custom_id = f"req-{seed}-{number:07d}"
            if number > 1 and r < BLANK_SHARE + INVALID_SHARE:
                kind = rng.choice(_INVALID_KINDS)
                raw = _invalid_line(rng, corpus, kind, custom_id, first_id)
                meta.invalid[number] = kind
                if kind == "duplicate_id":
                    assert first_id is not None
                    meta.custom_ids[number] = first_id
                elif kind not in ("truncated_json", "not_an_object"):
                    meta.custom_ids[number] = custom_id
            else:
                given = None if number > 1 and rng.random() < NO_ID_SHARE else custom_id
                raw = orjson.dumps(_valid_line(rng, corpus, given))
                if given is not None:
                    meta.custom_ids[number] = given
                    first_id = first_id or given
            # A few CRLF line ends: batchline tolerates them.
            out.write(raw + (b"\r\n" if rng.random() < 0.001 else b"\n"))
        meta.size = out.tell()
    tmp.replace(path)
    Path(f"{path}.meta.json").write_bytes(meta.to_json())
    return meta


def ensure_input(data_dir: Path, lines: int, seed: int = 42) -> tuple[Path, InputMeta]:
    """The cached input file for (lines, seed), generated when absent."""
    path = data_dir / f"input-{lines}-s{seed}.jsonl"
    meta_path = Path(f"{path}.meta.json")
    if path.exists() and meta_path.exists():
        meta = InputMeta.from_json(meta_path.read_bytes())
        if meta.size == path.stat().st_size:
            return path, meta
    return path, write_input(path, lines, seed)


# --- the provider's side ------------------------------------------------------------------


@dataclass
class ProviderCounts:
    ok: int = 0
    http_error: int = 0
    expired: int = 0
    missing: int = 0

    def add(self, other: ProviderCounts) -> None:
        self.ok += other.ok
        self.http_error += other.http_error
        self.expired += other.expired
        self.missing += other.missing


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _success(rng: random.Random, corpus: str, rid: str, body: dict[str, Any]) -> dict[str, Any]:
    max_tokens = int(body.get("max_completion_tokens") or 1024)
    text = _content(rng, corpus, 900)
    finish = "stop"
    if len(text) > max_tokens * 4:
        text, finish = text[: max_tokens * 4], "length"
    prompt_chars = sum(len(m.get("content") or "") for m in body["messages"])
    prompt_tokens = max(1, prompt_chars // 4)
    completion_tokens = max(1, len(text) // 4)
    return {
        "id": f"batch_req_{_hex(rng, 32)}",
        "custom_id": rid,
        "response": {
            "status_code": 200,
            "request_id": _hex(rng, 32),
            "body": {
                "id": f"chatcmpl-{_hex(rng, 29)}",
                "object": "chat.completion",
                "created": 1_780_000_000 + rng.randint(0, 86_400),
                "model": RESPONSE_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {
                        "reasoning_tokens": 0,
                        "audio_tokens": 0,
                        "accepted_prediction_tokens": 0,
                        "rejected_prediction_tokens": 0,
                    },
                },
                "service_tier": "default",
                "system_fingerprint": f"fp_{_hex(rng, 10)}",
            },
        },
        "error": None,
    }


_HTTP_ERRORS = (
    (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 1047576 tokens.",
    ),
    (429, "rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests."),
    (500, "server_error", None, "The server had an error while processing your request."),
)


def _http_error(rng: random.Random, rid: str) -> dict[str, Any]:
    status, kind, code, message = rng.choice(_HTTP_ERRORS)
    return {
        "id": f"batch_req_{_hex(rng, 32)}",
        "custom_id": rid,
        "response": {
            "status_code": status,
            "request_id": _hex(rng, 32),
            "body": {"error": {"message": message, "type": kind, "param": None, "code": code}},
        },
        "error": None,
    }


def _expired(rng: random.Random, rid: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{_hex(rng, 32)}",
        "custom_id": rid,
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }


def provider_files(payload: bytes, seed: int) -> tuple[bytes, bytes, ProviderCounts]:
    """(output file, error file, counts) that OpenAI would return for this payload."""
    rng = random.Random(f"{seed}:{hashlib.sha256(payload).hexdigest()}")
    corpus = _corpus(rng, 1_000_000)
    ok: list[bytes] = []
    errors: list[bytes] = []
    counts = ProviderCounts()
    for raw in payload.splitlines():
        request = orjson.loads(raw)
        rid = request["custom_id"]
        r = rng.random()
        if r < MISSING_SHARE:
            counts.missing += 1
        elif r < MISSING_SHARE + EXPIRED_SHARE:
            counts.expired += 1
            errors.append(orjson.dumps(_expired(rng, rid)))
        elif r < MISSING_SHARE + EXPIRED_SHARE + HTTP_ERROR_SHARE:
            counts.http_error += 1
            errors.append(orjson.dumps(_http_error(rng, rid)))
        else:
            counts.ok += 1
            ok.append(orjson.dumps(_success(rng, corpus, rid, request["body"])))
    rng.shuffle(ok)
    rng.shuffle(errors)
    return b"\n".join(ok) + b"\n", (b"\n".join(errors) + b"\n") if errors else b"", counts


def ensure_provider_files(
    data_dir: Path, payload: bytes, seed: int = 42
) -> tuple[Path, Path, ProviderCounts]:
    """The cached (output file, error file, counts) for one chunk payload."""
    key = hashlib.sha256(payload).hexdigest()[:20]
    out, err, meta = (
        data_dir / f"provider-{key}-s{seed}.{ext}" for ext in ("out.jsonl", "err.jsonl", "json")
    )
    if not (out.exists() and err.exists() and meta.exists()):
        data_dir.mkdir(parents=True, exist_ok=True)
        output, errors, counts = provider_files(payload, seed)
        out.write_bytes(output)
        err.write_bytes(errors)
        meta.write_bytes(orjson.dumps(counts.__dict__))
    return out, err, ProviderCounts(**orjson.loads(meta.read_bytes()))


def sample_input_lines(n: int, seed: int = 7) -> list[bytes]:
    """`n` valid input lines, as `write_input` makes them (for micro-benchmarks)."""
    rng = random.Random(seed)
    corpus = _corpus(rng, 300_000)
    return [orjson.dumps(_valid_line(rng, corpus, f"req-{seed}-{i:07d}")) for i in range(1, n + 1)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / ".data")
    args = parser.parse_args()
    path, meta = ensure_input(args.out, args.lines, args.seed)
    print(f"{path}: {meta.lines} lines, {meta.size / 1e6:.1f} MB, {len(meta.invalid)} invalid")
