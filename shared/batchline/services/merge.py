"""Merging a job's sorted runs of result lines into its results.jsonl, in input order."""

from __future__ import annotations

import heapq
from contextlib import ExitStack

from batchline.bootstrap import Deps
from batchline.domain.workfiles.runs import open_rows

#: What the merge's readers may hold at once, shared between its runs (a job of many
#: chunks has hundreds: at the store's default 8 MiB a fetch, 85 runs held 680 MiB).
MERGE_READ_BYTES = 64 * 1024 * 1024
#: The least one run's reader fetches at a time.
MIN_RUN_READ_BYTES = 256 * 1024


def run_read_bytes(runs: int) -> int:
    """How much each of `runs` readers may fetch at a time (`MERGE_READ_BYTES` shared)."""
    return max(MIN_RUN_READ_BYTES, MERGE_READ_BYTES // max(1, runs))


def merge_runs(deps: Deps, results_uri: str, runs: list[str]) -> None:
    """k-way merge of sorted runs into `results_uri`, streamed in and out; one line per
    input line. Raises PreconditionFailed when the results exist already.

    A repaired line is in the runs of every round that asked it; `runs` are in chunk order
    and repair chunks come after the chunks they repair, and of equal lines the one from
    the later run sorts last: the newest, the one written.
    """
    with ExitStack() as stack:
        each = run_read_bytes(len(runs))
        readers = [
            stack.enter_context(open_rows(deps.blobs, uri, run, each))
            for run, uri in enumerate(runs)
        ]
        out = stack.enter_context(deps.blobs.open_write(results_uri, "application/jsonl"))
        held_line, held = -1, b""
        for line, _, record in heapq.merge(*readers):
            if line != held_line and held:
                out.write(held)
            held_line, held = line, record
        if held:
            out.write(held)
