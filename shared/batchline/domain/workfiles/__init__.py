"""The files under a job's work prefix (`gs://WORK/jobs/<job>/`, named by `WorkPaths`),
each owned by one module here: its typed record, its writer and its reader. Nothing else
in batchline formats or parses them.

| file (under the job's prefix)                        | module       | record            |
|------------------------------------------------------|--------------|-------------------|
| `plan.json`                                          | `plan`       | `PlanRecord`      |
| `invalid.tsv`, `chunks/<n>/collect-<a>/run-<k>.tsv`  | `runs`       | rows `<line>\\t<result line>` |
| `chunks/<n>/manifest.jsonl` (and a repair's)         | `manifest`   | `ManifestEntry`   |
| `requests/<round>/<first line>.jsonl` (and a repair's) | `requests` | `NeutralRequest`, `NativeRequest` |
| `chunks/<n>/collected.json`                          | `collected`  | `CollectedRecord`, `Repairs` |
| `schemas/<digest>.json`                              | `schemas`    | `ResponseSchema`  |
| `chunks/<n>/input.jsonl` (and a repair's `repairs.jsonl`) | `payload` | the provider's lines |

A chunk's payload is its provider's batch input, one encoded request a line, in the
provider's own format (`domain/providers/`). Vertex AI writes its output beside it
(`chunks/<n>/prediction-model-<time>/`), which its client reads.

Readers raise `WorkFileError` (permanent: reading again cannot help), naming the file
and the field, on a file that is not what they read.
"""

from batchline.domain.workfiles._io import StreamedFile, WorkBlobs, WorkFileError

__all__ = ["StreamedFile", "WorkBlobs", "WorkFileError"]
