"""The scale run (issue 14): one big OpenAI file through submit, poll and collect on the
whole local stack, paced by an enqueued-token quota.

    .venv/bin/python bench/scale.py                  # 1,000,000 lines (`make bench`)
    .venv/bin/python bench/scale.py --lines 50000    # a quick run

What it does:

1. Writes (and caches under bench/.data/) a seeded input of small OpenAI lines: a
   `custom_id`, `openai/gpt-4.1-mini`, one user message of 8-40 plain words, `max_tokens`
   16 (~200 bytes a line).
2. Starts the local stack in its own run dir (`--run-dir`, default a fresh directory
   under /tmp) with the default chunk limits, `BATCHLINE_QUOTAS` giving gpt-4.1-mini an
   enqueued-token quota of `--quota-share` (default 1/4) of the file's estimated input
   tokens, and the OpenAI emulator answering `--lines-per-second` lines a second a batch
   with an enqueued-token limit of the same quota in the emulator's own count (its ~4
   characters a token; the ratio of the two counts is measured on the file's first
   lines) plus `EMULATOR_MARGIN`, so that batchline's admission, not the emulator's
   refusals, paces the job (a refusal would still show: `over_quota` in the table).
3. Uploads the file to the input bucket and follows the job to its end, sampling every
   `--sample-seconds`: the emulator's `GET /_emulator/quota`, the quota pool's document,
   the job's chunks and state (Firestore), and each function's processes (/proc).
4. Checks results.jsonl: every input line once (line numbers and custom_ids), each
   `succeeded`.
5. Measures wall time (upload start -> job ended, with the phases), peak RSS of each
   function (VmHWM of its gunicorn worker plus its master: the container's processes),
   Firestore reads and writes per 1,000 lines (counted in the functions by
   `bench/scale_hook/sitecustomize.py`, put first on their PYTHONPATH: it wraps the
   Firestore GAPIC client's RPCs; see there how it counts), and quota utilisation: the
   share of the samples in which work was waiting (a chunk `pending`, i.e. planned and
   not admitted) that found the provider's queue (the emulator's enqueued tokens) at 90%
   or more of the quota; the same from the pool's holds is shown beside it.
6. Puts its section and targets into bench/RESULTS.md (`run.splice_results`), leaving the
   rest as the last full run wrote it. Exits 1 when a target is missed or a line is lost.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import run
from run import Report, Target, load_average, splice_results

from batchline.adapters.firestore import FirestoreJobStore
from batchline.adapters.firestore import make_client as firestore_client
from batchline.adapters.gcs import make_client as gcs_client
from batchline.config import Settings
from batchline.domain.estimate import estimate_input_tokens
from batchline.domain.ids import job_id_for_object
from batchline.domain.models import ChunkState, Job
from batchline_emulators.openai import _prompt_tokens
from batchline_tools.local.stack import FUNCTIONS, LocalStack, StackConfig

BENCH = Path(__file__).resolve().parent
DATA = BENCH / ".data"
HOOK = BENCH / "scale_hook"
MODEL = "gpt-4.1-mini"
ENDPOINT = "/v1/chat/completions"
RSS_TARGET_MIB = 512  # issue 14's target (infra gives 1Gi to all but notify, 256Mi)
UTILISATION_TARGET = 0.90
OPENAI_CHUNK_REQUESTS = 47_500  # the default chunk limit
FULL = 0.90  # "the queue held at least 90% of its quota"
#: The emulator's limit over the quota in its own count: room for the two counts not
#: being in the same ratio in every chunk (a refusal costs a 60 s backoff).
EMULATOR_MARGIN = 1.05
SECTION = "Scale run"
#: The emulator's pace, lines a second a batch: a full chunk's batch (47,500 requests)
#: lasts ~190 s. Real batches take minutes to hours (OpenAI's window is 24 h), and what a
#: turnover costs (the webhook, poll's round, the create: ~1-2 s here) is about the same
#: whatever the batch's length, so the shorter the batch, the more that cost weighs; at
#: 2,500 lines/s (19 s batches) it weighs ~10x what it does here, and ~100x what it does
#: against a real batch of half an hour.
LINES_PER_SECOND = 250.0
GENERATOR_VERSION = 1

_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "what will more if no out so said can who its them time about than into only some "
    "could these two may first then do any like my now over such our man me even most "
    "made after also did many before must through back years where much your way well "
    "down should because each just those people how too little state good very make "
    "world still own see men work long get here between both life being under never day "
    "summarise classify translate extract invoice customer contract refund shipment "
    "latency throughput regression pipeline embedding token 42 3.14 2026-06-01 #12345"
)
_WORDS = _WORD_TEXT.split(" ")

METHOD = """**Scale run** (`bench/scale.py`): the whole local stack (emulators, the five
functions under functions-framework, each as `--instances` (2) worker processes serving
one request at a time, as infra's concurrency 1 does, the event bridge, a scheduler tick
every `--tick-seconds`), default chunk limits (OpenAI 47,500 requests / 190 MB a chunk), one
input of small OpenAI lines (one user message of 8-40 words, `max_tokens` 16) uploaded to
the input bucket. Quota: `BATCHLINE_QUOTAS` gives `openai/gpt-4.1-mini` an enqueued-token
quota of a quarter of the file's estimated input tokens; the OpenAI emulator enforces the
same quota in its own token count (plus 5%), so admission paces the job, and answers
`--lines-per-second` (250) lines a second a batch: a full chunk's batch lasts ~190 s,
still far shorter than a real one (a turnover's fixed cost, ~1-2 s here from the batch's
end to the next batch in the queue, weighs more the shorter the batch). Wall time: upload
start to the job's end state. Peak RSS: `VmHWM` of each function's largest gunicorn worker
plus its master (the processes of one instance), against the issue's 512 MiB (infra's
default `memory` is 1Gi for submit, poll, collect and api, 256Mi for notify). Firestore
reads and writes: counted in the function processes by wrapping the Firestore GAPIC
client's RPCs (`bench/scale_hook/sitecustomize.py`: a document a get, batch get, query or
listing returns is a read, an empty query or a missing document one; each write of a
commit a write), from upload to the end, idle ticks included (poll's reads grow with the
run's length: each tick reads the job's chunks). Utilisation: sampled every 0.5 s at most
(under load one every ~0.9 s: the sampler reads the pool, job and chunks); of the samples in which a chunk of the job was `pending` (planned, not admitted),
the share in which the emulator's enqueued tokens were at least 90% of the quota (in the
emulator's count); the pool's holds (batchline's own count) alongside."""


# --- input --------------------------------------------------------------------------------


def write_input(path: Path, lines: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        batch: list[bytes] = []
        for n in range(1, lines + 1):
            words = rng.choices(_WORDS, k=rng.randint(8, 40))
            line = {
                "custom_id": f"scale-{n:07d}",
                "model": f"openai/{MODEL}",
                "messages": [{"role": "user", "content": " ".join(words)}],
                "max_tokens": 16,
            }
            batch.append(orjson.dumps(line))
            if len(batch) == 10_000:
                out.write(b"\n".join(batch) + b"\n")
                batch = []
        if batch:
            out.write(b"\n".join(batch) + b"\n")
    tmp.replace(path)


def ensure_input(lines: int, seed: int) -> Path:
    path = DATA / f"scale-{lines}-s{seed}-v{GENERATOR_VERSION}.jsonl"
    if not path.exists():
        print(f"writing {lines:,} lines to {path}...", flush=True)
        write_input(path, lines, seed)
    return path


def token_counts(path: Path, lines: int, sample: int = 5_000) -> tuple[int, float]:
    """batchline's estimate of the file's input tokens (from its first `sample` lines),
    and the emulator's count over batchline's on those lines."""
    ours = theirs = seen = 0
    with path.open("rb") as f:
        for raw in f:
            obj = orjson.loads(raw)
            body = {"model": MODEL, "messages": obj["messages"], "max_tokens": obj["max_tokens"]}
            encoded = {"custom_id": obj["custom_id"], "method": "POST", "url": ENDPOINT}
            ours += estimate_input_tokens("openai", MODEL, orjson.dumps({**encoded, "body": body}))
            theirs += _prompt_tokens(body, ENDPOINT)
            seen += 1
            if seen == sample:
                break
    return round(ours / seen * lines), theirs / ours


# --- sampling -----------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp
            pids.append(int(entry))
    return pids


@dataclass
class Sample:
    t: float
    job_state: str | None
    chunks: Counter[str]
    enqueued: int | None
    emulator_limit: int | None
    over_quota: int | None
    pool_in_use: int | None


@dataclass
class Sampler:
    stack: LocalStack
    store: FirestoreJobStore
    pool_key: str
    interval: float
    job_id: str | None = None
    samples: list[Sample] = field(default_factory=list)
    #: function -> pid -> the highest VmHWM seen; function -> its leader (master) pid
    hwm: dict[str, dict[int, int]] = field(default_factory=dict)
    leaders: dict[str, int] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        for name in FUNCTIONS:
            self.leaders[name] = self.stack.components[name].process.pgid
            self.hwm[name] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.memory()

    def memory(self) -> None:
        for name, pgid in self.leaders.items():
            for pid in group_pids(pgid):
                hwm = proc_status(pid).get("VmHWM", 0)
                seen = self.hwm[name]
                seen[pid] = max(seen.get(pid, 0), hwm)

    def _loop(self) -> None:
        quota_url = self.stack.openai_base_url.removesuffix("/v1") + "/_emulator/quota"
        while not self._stop.wait(self.interval):
            t = time.perf_counter()
            self.memory()
            enqueued = limit = over = in_use = None
            state: str | None = None
            chunks: Counter[str] = Counter()
            try:
                with urllib.request.urlopen(quota_url, timeout=5) as reply:
                    quota = json.loads(reply.read())
                model = quota.get("openai", {}).get(MODEL, {})
                enqueued, limit = model.get("enqueued_tokens", 0), model.get("limit")
                over = quota.get("over_quota")
            except (OSError, ValueError) as exc:
                self.errors[f"emulator quota: {type(exc).__name__}"] += 1
            try:
                in_use = self.store.get_pool(self.pool_key).in_use
                if self.job_id:
                    job = self.store.get_job(self.job_id)
                    state = job.state.value if job else None
                    chunks = Counter(c.state.value for c in self.store.get_chunks(self.job_id))
            except Exception as exc:
                self.errors[f"firestore: {type(exc).__name__}"] += 1
            self.samples.append(Sample(t, state, chunks, enqueued, limit, over, in_use))


def firestore_counts(directory: Path) -> dict[int, Counter[str]]:
    counts: dict[int, Counter[str]] = {}
    for log in directory.glob("*.log"):
        c: Counter[str] = Counter()
        for line in log.read_text().splitlines():
            kind, n = line.split()
            c[kind] += int(n)
        counts[int(log.stem)] = c
    return counts


# --- the run ------------------------------------------------------------------------------


@dataclass
class Figures:
    lines: int
    input_bytes: int
    quota: int
    emulator_quota: int
    emulator_limit: int
    chunks: int
    chunk_tokens: list[int]
    job: Job
    wall: float
    upload: float
    phases: dict[str, float]
    checked: str
    lines_ok: bool
    statuses: Counter[str]
    rss: dict[str, tuple[int, int]]  # function -> (worker peak, master peak)
    reads: dict[str, int]
    writes: dict[str, int]
    utilisation: float | None
    pool_utilisation: float | None
    waiting_samples: int
    #: Of the waiting samples below FULL at the emulator, why: a chunk admitted and being
    #: sent (`submitting`), the pool still full by batchline's count (a batch ended at the
    #: provider whose hold poll has not released yet), or neither.
    short: Counter[str]
    #: Waiting samples by the full chunks' worth of tokens the provider held.
    held: Counter[int]
    samples: int
    over_quota: int
    sampler_errors: Counter[str]


def check_results(gcs: Any, uri: str, lines: int) -> tuple[bool, str, Counter[str]]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    statuses: Counter[str] = Counter()
    seen = bytearray(lines + 1)
    dupes = strays = count = 0
    with tempfile.NamedTemporaryFile(dir=DATA, suffix=".results.jsonl") as tmp:
        gcs.bucket(bucket).blob(name).download_to_filename(tmp.name)
        with open(tmp.name, "rb") as f:
            for raw in f:
                obj = orjson.loads(raw)
                count += 1
                n = obj.get("line")
                if not isinstance(n, int) or not 1 <= n <= lines:
                    strays += 1
                    continue
                if obj.get("custom_id") != f"scale-{n:07d}":
                    strays += 1
                if seen[n]:
                    dupes += 1
                seen[n] = 1
                statuses[str(obj.get("status"))] += 1
    missing = lines - sum(seen[1:])
    ok = count == lines and not dupes and not strays and not missing
    text = f"{count:,} result lines: {missing} missing, {dupes} twice, {strays} not matching"
    return ok, text, statuses


def scale_run(args: argparse.Namespace) -> Figures:
    path = ensure_input(args.lines, args.seed)
    size = path.stat().st_size
    tokens, ratio = token_counts(path, args.lines)
    quota = int(tokens * args.quota_share)
    emulator_quota = int(quota * ratio)
    emulator_limit = int(emulator_quota * EMULATOR_MARGIN)
    print(
        f"input {path.name}: {size / 1e6:,.1f} MB, ~{tokens:,} input tokens (batchline's "
        f"estimate); quota {quota:,} tokens, emulator's count x{ratio:.3f} -> limit "
        f"{emulator_limit:,}",
        flush=True,
    )
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="batchline-scale-"))
    counts_dir = run_dir / "firestore-counts"
    shutil.rmtree(counts_dir, ignore_errors=True)
    counts_dir.mkdir(parents=True)
    shared = str(Path(run.ROOT) / "shared")
    config = StackConfig(
        run_dir=run_dir,
        tick_seconds=args.tick_seconds,
        function_env={
            "BATCHLINE_QUOTAS": orjson.dumps(
                {f"openai/{MODEL}": {"enqueued_tokens": quota}}
            ).decode(),
            "BATCHLINE_BENCH_FIRESTORE_COUNTS": str(counts_dir),
            "PYTHONPATH": os.pathsep.join([str(HOOK), shared]),
            # functions-framework's gunicorn: WORKERS processes of THREADS threads. Infra
            # runs submit, poll, collect and notify one request an instance (concurrency
            # 1), so one request a process makes a process's peak one instance's; the
            # local stack's default (one process, 4 threads a core) adds the requests a
            # process serves at once (collect's fan-out) into one peak.
            **({"WORKERS": str(args.instances), "THREADS": "1"} if args.instances else {}),
        },
        openai_emulator_config={
            "lines_per_second": args.lines_per_second,
            "enqueued_token_limit": {MODEL: emulator_limit},
            "batch_creates_per_hour": None,
        },
        start_timeout=180.0,
    )
    stack = LocalStack(config)
    print(f"starting the local stack in {run_dir}...", flush=True)
    stack.start()
    try:
        env = {k: v for k, v in stack.client_env().items() if k != "PYTHONPATH"}
        os.environ.update(env)
        settings = Settings.from_env(env)
        store = FirestoreJobStore(firestore_client(settings.project))
        gcs = gcs_client(settings.project)
        sampler = Sampler(stack, store, f"openai/{MODEL}", args.sample_seconds)
        sampler.start()
        before = firestore_counts(counts_dir)
        name = f"scale/{path.name}"
        print(f"uploading {name}...", flush=True)
        started = time.perf_counter()
        blob = gcs.bucket(settings.input_bucket).blob(name)
        blob.upload_from_filename(str(path), content_type="application/jsonl")
        uploaded = time.perf_counter()
        job_id = job_id_for_object(settings.input_bucket, name, str(blob.generation))
        sampler.job_id = job_id
        print(f"uploaded in {uploaded - started:.1f} s; job {job_id}", flush=True)
        deadline = started + args.timeout
        job: Job | None = None
        last = ""
        while time.perf_counter() < deadline:
            job = store.get_job(job_id)
            if job is not None and job.state.terminal:
                break
            s = sampler.samples[-1] if sampler.samples else None
            line = f"  {job.state.value if job else 'no job yet'}" + (
                f"; chunks {dict(s.chunks)}; emulator {s.enqueued}/{emulator_quota}" if s else ""
            )
            if line != last:
                print(f"{time.perf_counter() - started:7.1f} s {line}", flush=True)
                last = line
            time.sleep(1.0)
        ended = time.perf_counter()
        sampler.stop()
        if job is None or not job.state.terminal:
            raise RuntimeError(f"job {job_id} not ended in {args.timeout:.0f} s: {job}")
        print(f"job {job.state.value} after {ended - started:.1f} s; checking results...")
        time.sleep(2.0)  # the last counts of the functions' final calls
        after = firestore_counts(counts_dir)
        chunk_records = store.get_chunks(job_id)
        assert job.results_uri
        ok, checked, statuses = check_results(gcs, job.results_uri, args.lines)
    finally:
        report = stack.stop()
        print(f"stack stopped ({report})" if report else "stack stopped", flush=True)

    pid_function = {pid: fn for fn, pids in sampler.hwm.items() for pid in pids}
    reads: Counter[str] = Counter()
    writes: Counter[str] = Counter()
    for pid, c in after.items():
        fn = pid_function.get(pid, "other")
        was = before.get(pid, Counter())
        reads[fn] += c["r"] - was["r"]
        writes[fn] += c["w"] - was["w"]
    rss = {}
    for fn, pids in sampler.hwm.items():
        leader = sampler.leaders[fn]
        workers = [h for pid, h in pids.items() if pid != leader]
        rss[fn] = (max(workers, default=0), pids.get(leader, 0))

    samples = [s for s in sampler.samples if s.t >= started]
    waiting = [s for s in samples if s.chunks.get(ChunkState.PENDING.value, 0) > 0]
    full = [s for s in waiting if s.enqueued is not None and s.enqueued >= FULL * emulator_quota]
    pool_full = [s for s in waiting if s.pool_in_use is not None and s.pool_in_use >= FULL * quota]
    short: Counter[str] = Counter()
    full_ids, pool_full_ids = {id(s) for s in full}, {id(s) for s in pool_full}
    for s in waiting:
        if id(s) in full_ids or s.enqueued is None:
            continue
        if s.chunks.get(ChunkState.SUBMITTING.value, 0):
            short["a chunk admitted, being sent (submitting)"] += 1
        elif id(s) in pool_full_ids:
            short["pool full, provider not: an ended batch's hold not yet released"] += 1
        else:
            short["neither (room free, no chunk admitted yet)"] += 1
    # Full chunks' worth of tokens at the provider in each waiting sample (how many of
    # the quota's chunk slots were really in the queue).
    chunk_at_emulator = max(c.input_tokens or 0 for c in chunk_records) * emulator_quota / quota
    held = Counter(round(s.enqueued / chunk_at_emulator) for s in waiting if s.enqueued is not None)
    phases = phase_times(samples, started)
    (run_dir / "samples.json").write_bytes(
        orjson.dumps(
            {
                "started": started,
                "quota": quota,
                "emulator_quota": emulator_quota,
                "samples": [{**s.__dict__, "chunks": dict(s.chunks)} for s in samples],
            }
        )
    )
    return Figures(
        lines=args.lines,
        input_bytes=size,
        quota=quota,
        emulator_quota=emulator_quota,
        emulator_limit=emulator_limit,
        chunks=len(chunk_records),
        chunk_tokens=[c.input_tokens or 0 for c in chunk_records],
        job=job,
        wall=ended - started,
        upload=uploaded - started,
        phases=phases,
        checked=checked,
        lines_ok=ok,
        statuses=statuses,
        rss=rss,
        reads=dict(reads),
        writes=dict(writes),
        utilisation=len(full) / len(waiting) if waiting else None,
        pool_utilisation=len(pool_full) / len(waiting) if waiting else None,
        waiting_samples=len(waiting),
        short=short,
        held=held,
        samples=len(samples),
        over_quota=max((s.over_quota or 0 for s in samples), default=0),
        sampler_errors=sampler.errors,
    )


def phase_times(samples: list[Sample], started: float) -> dict[str, float]:
    """Seconds from the upload's start to the first sample that saw each milestone."""
    out: dict[str, float] = {}

    def first(name: str, seen: bool, t: float) -> None:
        if seen and name not in out:
            out[name] = t - started

    for s in samples:
        total = sum(s.chunks.values())
        first("chunks planned", total > 0, s.t)
        first("no chunk pending", total > 0 and not s.chunks.get("pending"), s.t)
        first("every batch ended", total > 0 and s.chunks.get("ended", 0) == total, s.t)
        first("collecting", s.job_state == "collecting", s.t)
    return out


# --- the report ---------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def put_in_report(report: Report, f: Figures, args: argparse.Namespace) -> None:
    per_k = f.lines / 1000
    total_reads, total_writes = sum(f.reads.values()), sum(f.writes.values())
    rows = [
        ["input", f"{f.lines:,} lines, {f.input_bytes / 1e6:,.1f} MB, OpenAI {MODEL}"],
        [
            "quota",
            f"{f.quota:,} enqueued tokens (1/{round(1 / args.quota_share)} of the file's "
            f"~{f.quota / args.quota_share:,.0f}); emulator: {f.emulator_quota:,} in its count, "
            f"limit {f.emulator_limit:,}",
        ],
        [
            "chunks",
            f"{f.chunks}, {min(f.chunk_tokens):,}-{max(f.chunk_tokens):,} tokens each "
            f"(at most {f.quota // max(max(f.chunk_tokens), 1)} fit the quota at once)",
        ],
        [
            "emulator",
            f"{args.lines_per_second:,.0f} lines/s a batch (a full chunk's batch "
            f"{OPENAI_CHUNK_REQUESTS / args.lines_per_second:,.0f} s); tick every "
            f"{args.tick_seconds:g} s",
        ],
        [
            "functions",
            f"{args.instances} one-request worker processes each (WORKERS, THREADS=1)"
            if args.instances
            else "one worker process each, 4 threads a core (functions-framework's default)",
        ],
        ["job", f"{f.job.state.value}; {f.checked}; {dict(f.statuses)}"],
        ["wall time", f"{f.wall:,.1f} s (upload {f.upload:.1f} s)"],
    ]
    rows += [[f"  {name}", f"at {t:,.1f} s"] for name, t in f.phases.items()]
    for fn, (worker, master) in f.rss.items():
        rows.append(
            [
                f"peak RSS: {fn}",
                f"{mib(worker + master)} (its largest worker {mib(worker)}, master {mib(master)})",
            ]
        )
    rows.append(
        [
            "Firestore per 1,000 lines",
            f"{total_reads / per_k:,.2f} reads, {total_writes / per_k:,.2f} writes "
            f"({total_reads:,} / {total_writes:,} in all)",
        ]
    )
    for fn in sorted(set(f.reads) | set(f.writes)):
        rows.append([f"  {fn}", f"{f.reads.get(fn, 0):,} reads, {f.writes.get(fn, 0):,} writes"])
    util = "n/a" if f.utilisation is None else f"{f.utilisation:.1%}"
    pool = "n/a" if f.pool_utilisation is None else f"{f.pool_utilisation:.1%}"
    rows += [
        [
            "quota utilisation",
            f"{util} of {f.waiting_samples} samples with work waiting (of {f.samples}); "
            f"by the pool's holds: {pool}",
        ],
        ["emulator refusals (token_limit_exceeded)", str(f.over_quota)],
    ]
    rows += [[f"  below {FULL:.0%}: {why}", f"{n} samples"] for why, n in f.short.most_common()]
    rows.append(
        [
            "  chunks' worth held at the provider while work waited",
            ", ".join(f"{k}: {f.held[k]}" for k in sorted(f.held, reverse=True)) + " samples",
        ]
    )
    if f.sampler_errors:
        rows.append(["sampler errors", str(dict(f.sampler_errors))])
    report.table(f"{SECTION} ({f.lines:,} lines, local stack)", ["", ""], rows)
    worst = max(f.rss.items(), key=lambda kv: sum(kv[1]))
    report.targets += [
        Target(
            f"scale run: every line back once ({f.lines:,} lines)",
            f"{f.job.state.value}, {f.wall:,.0f} s",
            "every line once",
            f.lines_ok,
            f.checked,
        ),
        Target(
            "scale run: quota utilisation while work waits",
            util,
            f">= {UTILISATION_TARGET:.0%}",
            f.utilisation is not None and f.utilisation >= UTILISATION_TARGET,
            f"pool's holds: {pool}",
        ),
        Target(
            "scale run: peak RSS of every function",
            f"{mib(sum(worst[1]))} ({worst[0]})",
            f"<= {RSS_TARGET_MIB} MiB",
            all(sum(v) <= RSS_TARGET_MIB * 2**20 for v in f.rss.values()),
            f"{RSS_TARGET_MIB * 2**20 / max(sum(worst[1]), 1):.1f}x under"
            if sum(worst[1]) <= RSS_TARGET_MIB * 2**20
            else f"{sum(worst[1]) / (RSS_TARGET_MIB * 2**20):.1f}x over",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="batchline's scale run on the local stack")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--quota-share", type=float, default=0.25)
    parser.add_argument(
        "--lines-per-second",
        type=float,
        default=LINES_PER_SECOND,
        help="the OpenAI emulator's pace, a batch (default: a full chunk's batch ~3 min)",
    )
    parser.add_argument("--tick-seconds", type=float, default=2.0)
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument(
        "--instances",
        type=int,
        default=2,
        help="each function as this many one-request processes (infra's concurrency 1); "
        "0: the local stack's default, one process of 4 threads a core",
    )
    parser.add_argument("--timeout", type=float, default=3 * 3600.0)
    parser.add_argument("--run-dir", help="the local stack's run dir (default: a new temp dir)")
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    report = Report(args, dt.datetime.now(dt.UTC))
    print(f"load average at start: {load_average()}", flush=True)
    figures = scale_run(args)
    put_in_report(report, figures, args)
    for t in report.targets:
        print(f"  {'PASS' if t.ok else 'FAIL'}  {t.name}: {t.figure} (goal {t.goal}; {t.margin})")
    if str(args.output) != "-":
        command = ".venv/bin/python bench/scale.py" + "".join(f" {shlex.quote(a)}" for a in argv)
        splice_results(report, args.output, command, METHOD)
        print(f"put into {args.output}")
    return 0 if all(t.ok for t in report.targets) else 1


if __name__ == "__main__":
    sys.exit(main())
