"""Where a job's intermediate files live in the work bucket. Deterministic names make
every write idempotent (`if_generation_match=0`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkPaths:
    work_bucket: str
    job_id: str

    @property
    def root(self) -> str:
        return f"gs://{self.work_bucket}/jobs/{self.job_id}/"

    @property
    def plan(self) -> str:
        return self.root + "plan.json"

    @property
    def invalid(self) -> str:
        return self.root + "invalid.tsv"

    def chunk(self, index: int) -> str:
        return f"{self.root}chunks/{index:05d}/"

    def payload(self, index: int) -> str:
        return self.chunk(index) + "input.jsonl"

    def manifest(self, index: int) -> str:
        return self.chunk(index) + "manifest.jsonl"

    def results_run(self, index: int, attempt: str, run: int) -> str:
        """One sorted run of a chunk's normalised result lines: `<line>\\t<json>`."""
        return f"{self.chunk(index)}collect-{attempt}/run-{run:04d}.tsv"

    def collected(self, index: int) -> str:
        """Written last: the chunk's tally and the runs it was collected into."""
        return self.chunk(index) + "collected.json"
