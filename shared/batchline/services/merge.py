"""Merging a job's sorted runs of result lines into its results.jsonl, in input order."""

from __future__ import annotations

import heapq
from contextlib import ExitStack

from batchline.bootstrap import Deps
from batchline.domain.workfiles.runs import open_rows


def merge_runs(deps: Deps, results_uri: str, runs: list[str]) -> None:
    """k-way merge of sorted runs into `results_uri`, streamed in and out; one line per
    input line. Raises PreconditionFailed when the results exist already.

    A repaired line is in the runs of every round that asked it; `runs` are in chunk order
    and repair chunks come after the chunks they repair, and of equal lines the one from
    the later run sorts last: the newest, the one written.
    """
    with ExitStack() as stack:
        readers = [
            stack.enter_context(open_rows(deps.blobs, uri, run)) for run, uri in enumerate(runs)
        ]
        out = stack.enter_context(deps.blobs.open_write(results_uri, "application/jsonl"))
        held_line, held = -1, b""
        for line, _, record in heapq.merge(*readers):
            if line != held_line and held:
                out.write(held)
            held_line, held = line, record
        if held:
            out.write(held)
