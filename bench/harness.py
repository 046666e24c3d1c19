"""What the benchmark runs batchline on: stores, a fake OpenAI, jobs, and the two phases.

- `DiskBlobStore`: a BlobStore on local files, so that a phase's peak RSS measures the
  pipeline and not an in-memory fake holding every object it was given.
- `BenchOpenAI`, `BenchAnthropic`: ProviderClients serving pre-generated provider files
  (OpenAI's output/error files, Anthropic's results file). Their `iter_results` do what
  the real adapters do after the download: split the streamed bytes into lines (the
  adapters' own `jsonl_lines`) and `normalise(orjson.loads(line))` each one.
- `submit_phase` runs `build_plan` (parse, validate, encode, chunk, stage);
  `collect_phase` runs `collect` (every `collect_chunk`, the ordered merge, the summary);
  `round_phase` runs a `collect` that stages follow-ups (repairs of the answers that
  failed their schema, retries of passing failures, failovers to the job's `fallback`)
  and starts the next round instead of merging; `ready_for_round` then ends that round's
  batches at the bench providers, so that a last `collect_phase` merges runs of both
  rounds.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from generate import InputMeta, ProviderCounts

from batchline.adapters.providers._inline import NoUploads
from batchline.adapters.providers._jsonl import jsonl_lines
from batchline.adapters.providers.vertex import VertexProvider
from batchline.bootstrap import Deps, Providers
from batchline.config import Settings, quota_policies
from batchline.domain.ids import output_prefix
from batchline.domain.models import (
    BatchState,
    BatchTag,
    Chunk,
    ChunkState,
    Job,
    JobOptions,
    JobState,
    ProviderBatch,
    ProviderResult,
    Source,
)
from batchline.domain.paths import WorkPaths
from batchline.domain.providers import anthropic as anthropic_wire
from batchline.domain.providers import openai as wire
from batchline.domain.quotas import parse_quotas
from batchline.errors import NotFound, PreconditionFailed
from batchline.ports import BlobStore, StagedPayload
from batchline.services.collect import collect
from batchline.services.plan_file import Plan, build_plan
from batchline_tools.memory import MemoryBlobStore, MemoryJobStore, RecordingPublisher

INPUT_BUCKET, OUTPUT_BUCKET, WORK_BUCKET = "bench-in", "bench-out", "bench-work"
INPUT_NAME = "bench/input.jsonl"
JOB_ID = "job-bench"
# httpx hands the SDK's `iter_bytes` the body in pieces of about this size.
DOWNLOAD_PART = 64 * 1024


#: Quotas no bench input reaches: the chunks are the providers' own limits (the memory
#: targets are measured against the largest chunk, which a quota would shrink).
UNBOUNDED_QUOTAS = (
    '{"openai": {"enqueued_tokens": 1000000000000}, "anthropic": {"queued_requests": 100000000}}'
)
#: The environment variable a phase process reads its quotas from (unset: the defaults).
QUOTAS_ENV = "BATCHLINE_QUOTAS"


def settings() -> Settings:
    """Default limits: OpenAI 47,500 requests / 190 MB, Anthropic 95,000 / 243.2 MB,
    Vertex 190,000 / 950 MB; and the default quotas (each provider's lowest paid tier),
    which cut the OpenAI input into quota-sized chunks (about 9.5 MB), unless
    BATCHLINE_QUOTAS says otherwise (the memory phases run with `UNBOUNDED_QUOTAS`)."""
    raw = os.environ.get(QUOTAS_ENV)
    extra = {} if raw is None else {"quotas": parse_quotas(raw, quota_policies())}
    return Settings(
        project="bench",
        input_bucket=INPUT_BUCKET,
        output_bucket=OUTPUT_BUCKET,
        work_bucket=WORK_BUCKET,
        **extra,
    )


class FixedClock:
    def now(self) -> float:
        return 1_800_000_000.0


# --- storage ------------------------------------------------------------------------------


class DiskBlobStore:
    """BlobStore on a directory: gs://bucket/name -> root/bucket/name. Create-if-absent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = itertools.count()

    def path(self, uri: str) -> Path:
        assert uri.startswith("gs://"), uri
        return self.root / uri[5:]

    def _generation(self, path: Path) -> str:
        return str(path.stat().st_mtime_ns)

    def put_file(self, uri: str, source: Path) -> str:
        """Place an existing file as an object (a hard link: no copy); its generation."""
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        return self._generation(target)

    @contextmanager
    def open_read(
        self, uri: str, generation: str | None = None, *, buffer_bytes: int | None = None
    ) -> Iterator[BinaryIO]:
        path = self.path(uri)
        try:
            f = path.open("rb")
        except FileNotFoundError as exc:
            raise NotFound(uri) from exc
        with f:
            if generation is not None and self._generation(path) != str(generation):
                raise NotFound(f"{uri} (generation {generation}) does not exist")
            yield f

    def read_bytes(self, uri: str) -> bytes:
        try:
            return self.path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(uri) from exc

    def write_bytes(self, uri: str, data: bytes, content_type: str) -> bool:
        path = self.path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    @contextmanager
    def open_write(self, uri: str, content_type: str) -> Iterator[BinaryIO]:
        path = self.path(uri)
        if path.exists():
            raise PreconditionFailed(f"{uri} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(self._tmp)}")
        with tmp.open("wb") as f:
            yield f
        try:
            os.link(tmp, path)  # fails if it appeared meanwhile, like ifGenerationMatch=0
        except FileExistsError as exc:
            raise PreconditionFailed(f"{uri} already exists") from exc
        finally:
            tmp.unlink()

    def exists(self, uri: str) -> bool:
        return self.path(uri).exists()

    def stat(self, uri: str) -> tuple[str, int]:
        path = self.path(uri)
        if not path.exists():
            raise NotFound(uri)
        return self._generation(path), path.stat().st_size

    def list_prefix(self, prefix: str) -> Iterator[str]:
        base = self.path(prefix)
        folder = base if prefix.endswith("/") else base.parent
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            uri = "gs://" + path.relative_to(self.root).as_posix()
            if path.is_file() and not path.name.startswith(".") and uri.startswith(prefix):
                yield uri


# --- the provider ---------------------------------------------------------------------------


class BenchOpenAI(NoUploads):
    """ProviderClient over pre-generated OpenAI files (bytes in memory, or paths on disk)."""

    name = wire.NAME

    def __init__(self) -> None:
        self.batches: dict[str, ProviderBatch] = {}
        self.files: dict[str, bytes | Path] = {}

    def add(self, batch_id: str, tag: BatchTag, output: bytes | Path, errors: bytes | Path) -> None:
        native = {
            "id": batch_id,
            "status": "completed",
            "output_file_id": f"file-{batch_id}-out",
            "error_file_id": f"file-{batch_id}-err",
        }
        self.files[native["output_file_id"]] = output
        self.files[native["error_file_id"]] = errors
        self.batches[batch_id] = ProviderBatch(
            batch_id, BatchState.COMPLETED, {}, tag=tag, created_at=0.0, native=native
        )

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        raise NotImplementedError("the benchmark serves ended batches only")

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        return [b for b in self.batches.values() if b.tag == tag][:1]

    def get_batch(self, batch_id: str) -> ProviderBatch:
        return self.batches[batch_id]

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        # As adapters/providers/openai.py: output file, then error file, line by line.
        for key in ("output_file_id", "error_file_id"):
            file_id = batch.native.get(key)
            if not file_id:
                continue
            for line in self._file_lines(file_id):
                yield wire.normalise(orjson.loads(line))

    def _file_lines(self, file_id: str) -> Iterator[bytes]:
        # The adapter's own splitting of the streamed download, on parts of DOWNLOAD_PART.
        return jsonl_lines(_download(self.files[file_id]))

    def cancel(self, batch_id: str) -> None:
        raise NotImplementedError


class BenchAnthropic(NoUploads):
    """ProviderClient over pre-generated Anthropic results files (bytes, or paths)."""

    name = anthropic_wire.NAME

    def __init__(self) -> None:
        self.batches: dict[str, ProviderBatch] = {}
        self.files: dict[str, bytes | Path] = {}

    def add(self, batch_id: str, tag: BatchTag, results: bytes | Path) -> None:
        self.files[batch_id] = results
        native = {"id": batch_id, "processing_status": "ended"}
        self.batches[batch_id] = ProviderBatch(
            batch_id, BatchState.COMPLETED, {}, tag=None, created_at=0.0, native=native
        )

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        raise NotImplementedError("the benchmark serves ended batches only")

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        return []

    def get_batch(self, batch_id: str) -> ProviderBatch:
        return self.batches[batch_id]

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        # As adapters/providers/anthropic.py: the streamed results, line by line.
        for line in jsonl_lines(_download(self.files[batch.batch_id])):
            yield anthropic_wire.normalise(orjson.loads(line))

    def cancel(self, batch_id: str) -> None:
        raise NotImplementedError


class BenchVertex(NoUploads):
    """ProviderClient over pre-generated Vertex prediction files, placed in the BlobStore
    where a job writes them; results are read by the real adapter's `iter_results` (list
    the output directory, stream each `predictions*.jsonl`, split lines, normalise)."""

    name = "vertex"

    def __init__(self) -> None:
        self.batches: dict[str, ProviderBatch] = {}
        self.blobs: BlobStore = MemoryBlobStore()
        self.reader = VertexProvider("bench", "us-central1", self.blobs, "http://unused")

    def bind(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.reader = VertexProvider("bench", "us-central1", blobs, "http://unused")

    def add(self, batch_id: str, tag: BatchTag, *files: bytes | Path) -> None:
        directory = WorkPaths(WORK_BUCKET, tag.job_id).chunk(tag.chunk) + "prediction-model-bench"
        for n, source in enumerate(files, start=1):
            uri = f"{directory}/predictions_{n:05d}.jsonl"
            if isinstance(source, Path) and isinstance(self.blobs, DiskBlobStore):
                self.blobs.put_file(uri, source)
            else:
                data = source.read_bytes() if isinstance(source, Path) else source
                self.blobs.write_bytes(uri, data, "application/jsonl")
        native = {"name": batch_id, "outputInfo": {"gcsOutputDirectory": directory}}
        self.batches[batch_id] = ProviderBatch(
            batch_id, BatchState.COMPLETED, {}, tag=tag, created_at=0.0, native=native
        )

    def create_batch(
        self, payload: StagedPayload, tag: BatchTag, model: str, uploaded: str | None = None
    ) -> ProviderBatch:
        raise NotImplementedError("the benchmark serves ended batches only")

    def find_batches(
        self, tag: BatchTag, created_after: float, created_before: float, request_count: int
    ) -> list[ProviderBatch]:
        return [b for b in self.batches.values() if b.tag == tag][:1]

    def get_batch(self, batch_id: str) -> ProviderBatch:
        return self.batches[batch_id]

    def iter_results(self, batch: ProviderBatch) -> Iterator[ProviderResult]:
        return self.reader.iter_results(batch)

    def cancel(self, batch_id: str) -> None:
        raise NotImplementedError


BenchProvider = BenchOpenAI | BenchAnthropic | BenchVertex
BENCH_PROVIDERS: dict[str, type[BenchOpenAI] | type[BenchAnthropic] | type[BenchVertex]] = {
    "openai": BenchOpenAI,
    "anthropic": BenchAnthropic,
    "vertex": BenchVertex,
}


def _download(source: bytes | Path) -> Iterator[bytes]:
    """A file as the SDK's streamed download hands it over: in parts of DOWNLOAD_PART."""
    stream: BinaryIO = source.open("rb") if isinstance(source, Path) else io.BytesIO(source)
    with stream:
        while part := stream.read(DOWNLOAD_PART):
            yield part


# --- jobs and phases -----------------------------------------------------------------------


def make_deps(
    blobs: BlobStore | None = None,
    provider: BenchProvider | None = None,
    *more: BenchProvider,
) -> Deps:
    """Memory stores and the bench providers (`more`: a failover round's targets)."""
    bench_providers = (provider or BenchOpenAI(), *more)
    blobs = blobs if blobs is not None else MemoryBlobStore()
    for bench_provider in bench_providers:
        if isinstance(bench_provider, BenchVertex):
            bench_provider.bind(blobs)
    return Deps(
        settings=settings(),
        store=MemoryJobStore(),
        blobs=blobs,
        publisher=RecordingPublisher(),
        providers=Providers({p.name: _serving(p) for p in bench_providers}),
        clock=FixedClock(),
    )


def _serving(provider: BenchProvider) -> Callable[[], BenchProvider]:
    return lambda: provider


def make_job(
    generation: str,
    size: int,
    max_repair_attempts: int | None = None,
    max_retries: int = 0,
    fallback: tuple[str, ...] = (),
) -> Job:
    """The bench's job. By default no failure is sent again (`max_retries` 0, no
    `fallback`), so collect ends the job in one round; with schemas, `max_repair_attempts`
    0 makes it one round too. `max_retries` and `fallback` let failures start a round."""
    return Job(
        job_id=JOB_ID,
        source=Source(INPUT_BUCKET, INPUT_NAME, generation, size),
        options=JobOptions(
            max_repair_attempts=max_repair_attempts, max_retries=max_retries, fallback=fallback
        ),
        output_prefix=output_prefix(OUTPUT_BUCKET, INPUT_NAME, JOB_ID),
        created_at=1_800_000_000.0,
    )


def input_uri() -> str:
    return f"gs://{INPUT_BUCKET}/{INPUT_NAME}"


def submit_phase(deps: Deps, job: Job) -> Plan:
    """The submit hot path: read, parse, validate, encode, chunk and stage the file."""
    return build_plan(deps, job)


def ready_for_collect(
    deps: Deps,
    job: Job,
    chunks: list[Chunk],
    provider: BenchProvider,
    files: Sequence[tuple[bytes | Path, ...]],
) -> Job:
    """Put the job in `collecting` with every chunk's batch completed at the provider;
    `files` are each chunk's provider files (OpenAI: output, errors; Anthropic: results)."""
    ended = []
    for chunk, chunk_files in zip(chunks, files, strict=True):
        batch_id = f"batch_bench_{chunk.index:05d}"
        provider.add(batch_id, BatchTag(job.job_id, chunk.index), *chunk_files)  # type: ignore[arg-type]
        ended.append(
            replace(
                chunk, state=ChunkState.ENDED, batch_id=batch_id, batch_state=BatchState.COMPLETED
            )
        )
    collecting = replace(job, state=JobState.COLLECTING, chunk_count=len(chunks))
    if not deps.store.create_job(collecting):
        raise RuntimeError("job exists")
    deps.store.update_job(job.job_id, lambda j: j, new_chunks=ended)
    return collecting


def collect_phase(deps: Deps, job: Job) -> Job:
    """The collect step: parse + normalise every result, ordered merge, summary."""
    done = collect(deps, job.job_id)
    if done is None or not done.state.terminal:
        raise RuntimeError(f"collect did not finish the job: {done}")
    return done


def round_phase(deps: Deps, job: Job) -> Job:
    """A collect whose job allows follow-ups (repairs, retries, failover): every
    `collect_chunk` (answers validated; the lines a round can help noted, and staged
    per reason and target model by `follow_ups.Stager`, a failover's stored request
    encoded again for its target), then the next round's chunks cut and committed
    (`rounds.plan_round`, `rounds.start_round`); no merge yet. The job is back to
    `running`."""
    done = collect(deps, job.job_id)
    if done is None or done.state is not JobState.RUNNING or done.chunk_count <= job.chunk_count:
        raise RuntimeError(f"collect did not start a follow-up round: {done}")
    return done


def ready_for_round(
    deps: Deps,
    job: Job,
    chunks: Sequence[Chunk],
    providers: Mapping[str, BenchProvider],
    files: Sequence[tuple[bytes | Path, ...]],
) -> Job:
    """After `round_phase`: end the new round's `chunks` (each at its provider in
    `providers`, with its `files`) and put the job back in `collecting`."""
    ended = []
    for chunk, chunk_files in zip(chunks, files, strict=True):
        batch_id = f"batch_bench_{chunk.index:05d}"
        tag = BatchTag(job.job_id, chunk.index)
        providers[chunk.provider].add(batch_id, tag, *chunk_files)  # type: ignore[arg-type]
        ended.append(
            replace(
                chunk, state=ChunkState.ENDED, batch_id=batch_id, batch_state=BatchState.COMPLETED
            )
        )
    collecting = deps.store.update_job(
        job.job_id, lambda j: replace(j, state=JobState.COLLECTING), new_chunks=ended
    )
    if collecting is None:
        raise RuntimeError("the job is gone")
    return collecting


# --- checking the output -------------------------------------------------------------------


def in_order(lines: Iterator[bytes], meta: InputMeta) -> Iterator[dict[str, Any]]:
    """Each result line of `lines`, checked to be the next non-blank input line (so every
    line comes back once, in order) with its custom_id, `invalid` exactly for the input's
    invalid lines."""
    blank = set(meta.blank)
    expected = (n for n in range(1, meta.lines + 1) if n not in blank)
    n_out = 0
    for raw in lines:
        if not raw.strip():
            continue
        record = orjson.loads(raw)
        want = next(expected, None)
        if record["line"] != want:
            raise AssertionError(f"result {n_out + 1}: line {record['line']}, expected {want}")
        if record["custom_id"] != meta.expected_id(want):
            raise AssertionError(
                f"line {want}: custom_id {record['custom_id']!r}, expected {meta.expected_id(want)!r}"
            )
        status = record["status"]
        if (status == "invalid") != (want in meta.invalid):
            raise AssertionError(f"line {want}: status {status}, invalid={want in meta.invalid}")
        n_out += 1
        yield record
    if (left := next(expected, None)) is not None:
        raise AssertionError(f"the output stops before line {left}")


def verify_results(
    lines: Iterator[bytes], meta: InputMeta, counts: ProviderCounts
) -> dict[str, int]:
    """Every non-blank input line once, in order, with its custom_id and the right status;
    with schemas, `output.parsed` on every success and a `schema_validation` error on
    every answer that broke its schema."""
    seen: dict[str, int] = {}
    schema_failures = 0
    for record in in_order(lines, meta):
        status = record["status"]
        error = record.get("error") or {}
        if error.get("type") == "schema_validation":
            schema_failures += 1
        if (
            meta.schema
            and status == "succeeded"
            and not isinstance(record["output"]["parsed"], dict)
        ):
            raise AssertionError(f"line {record['line']}: succeeded with no parsed answer")
        seen[status] = seen.get(status, 0) + 1
    if schema_failures != counts.schema_invalid:
        raise AssertionError(
            f"{schema_failures} schema_validation failures, expected {counts.schema_invalid}"
        )
    want_counts = {
        "succeeded": counts.ok,
        "failed": counts.http_error + counts.missing + counts.schema_invalid,
        "expired": counts.expired,
        "invalid": len(meta.invalid),
    }
    if {k: v for k, v in seen.items() if v} != {k: v for k, v in want_counts.items() if v}:
        raise AssertionError(f"status counts {seen}, expected {want_counts}")
    return seen


def verify_rounds(
    lines: Iterator[bytes], meta: InputMeta, counts: ProviderCounts, sent: Mapping[str, int]
) -> dict[str, int]:
    """The output of a job whose failures went through a second round that answered every
    line it sent (`sent`: lines per `reason provider/model`): every non-blank input line
    once, in order; each line sent again has two attempts, the first round's and the one
    it was sent for, and succeeded; the lines that could go to no model keep their
    failure. Returns the statuses counted."""
    seen: dict[str, int] = {}
    again: dict[str, int] = {}
    for record in in_order(lines, meta):
        status = record["status"]
        seen[status] = seen.get(status, 0) + 1
        attempts = record.get("attempts") or []
        if len(attempts) < 2:
            continue
        last = attempts[-1]
        key = f"{last['reason']} {last['provider']}/{last['model']}"
        again[key] = again.get(key, 0) + 1
        if len(attempts) != 2 or status != "succeeded":
            raise AssertionError(f"line {record['line']}: {status} after {len(attempts)} attempts")
    if again != {k: v for k, v in sent.items() if v}:
        raise AssertionError(f"lines answered by a second round {again}, sent again {dict(sent)}")
    failures = counts.http_error + counts.expired + counts.missing
    stand = seen.get("failed", 0) + seen.get("expired", 0)
    if stand + sum(again.values()) != failures:
        raise AssertionError(
            f"{stand} failures stand and {sum(again.values())} were answered by a second "
            f"round, of {failures} first-round failures"
        )
    if seen.get("succeeded", 0) != counts.ok + sum(again.values()):
        raise AssertionError(f"status counts {seen}, {counts.ok} answered in the first round")
    return seen
