"""Where a job's intermediate files live in the work bucket. Deterministic names make
every write idempotent (`if_generation_match=0`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkPaths:
    """The names of one job's files in the work bucket (their formats: `domain/workfiles`)."""

    work_bucket: str
    job_id: str

    @property
    def root(self) -> str:
        """The job's prefix: every file of the job is under it."""
        return f"gs://{self.work_bucket}/jobs/{self.job_id}/"

    @property
    def plan(self) -> str:
        """What planning found (`workfiles.plan`)."""
        return self.root + "plan.json"

    @property
    def invalid(self) -> str:
        """The invalid lines' result lines, sorted by line (`workfiles.runs`)."""
        return self.root + "invalid.tsv"

    def chunk(self, index: int) -> str:
        """The folder of chunk `index`."""
        return f"{self.root}chunks/{index:05d}/"

    def payload(self, index: int) -> str:
        """Chunk `index`'s requests as its provider's batch input."""
        return self.chunk(index) + "input.jsonl"

    def manifest(self, index: int) -> str:
        """Which input line each request of chunk `index` is (`workfiles.manifest`)."""
        return self.chunk(index) + "manifest.jsonl"

    def requests(self, repair_round: int, first_line: int) -> str:
        """The stored requests of the chunk of round `repair_round` whose first request is
        input line `first_line` (`workfiles.requests`). Named by its first line, not its
        index, because the file streams out while the chunk fills, before it has one."""
        return f"{self.root}requests/{repair_round:02d}/{first_line:010d}.jsonl"

    def results_run(self, index: int, attempt: str, run: int) -> str:
        """One sorted run of a chunk's normalised result lines: `<line>\\t<json>`."""
        return f"{self.chunk(index)}collect-{attempt}/run-{run:04d}.tsv"

    def schema(self, digest: str) -> str:
        """A response schema the job's requests use, by digest (manifests refer to it)."""
        return f"{self.root}schemas/{digest}.json"

    def follow_ups(self, index: int, attempt: str, group: int) -> str:
        """The request lines of a chunk's staged follow-ups, group `group` (one reason
        and model), written by one collect attempt."""
        return f"{self.chunk(index)}collect-{attempt}/follow-ups-{group}.jsonl"

    def follow_ups_manifest(self, index: int, attempt: str, group: int) -> str:
        """The manifest rows of a chunk's staged follow-ups, group `group`."""
        return f"{self.chunk(index)}collect-{attempt}/follow-ups-{group}-manifest.jsonl"

    def follow_ups_requests(self, index: int, attempt: str, group: int) -> str:
        """The stored requests of a chunk's staged follow-ups, group `group`."""
        return f"{self.chunk(index)}collect-{attempt}/follow-ups-{group}-requests.jsonl"

    def collected(self, index: int) -> str:
        """Written last: the chunk's tally and the runs it was collected into."""
        return self.chunk(index) + "collected.json"


#: The objects batchline takes as input, by the bucket trigger and by `input_uri` alike.
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz")


#: A registered schema's name: what `schema` on a line or in the job options refers to.
SCHEMA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def registered_schema_uri(work_bucket: str, name: str) -> str:
    """Where a registered JSON Schema lives: `gs://WORK/schemas/<name>.json`."""
    return f"gs://{work_bucket}/schemas/{name}.json"
