"""The job's response schemas (`schemas/<digest>.json`), by digest.

Planning writes each schema its requests use once, named by its digest (which manifests
and stored requests refer to); collect reads them to validate answers, a later round to
rebuild a request. The job keeps its own copy: a registered schema may change meanwhile.
"""

from __future__ import annotations

import orjson

from batchline.domain.paths import WorkPaths
from batchline.domain.schemas import ResponseSchema
from batchline.domain.workfiles._io import JSON, Fields, WorkBlobs, WorkFileError


def write_schema(blobs: WorkBlobs, paths: WorkPaths, schema: ResponseSchema) -> bool:
    """Create the job's copy of `schema`; False when it exists already."""
    return blobs.write_bytes(paths.schema(schema.digest), orjson.dumps(schema.to_dict()), JSON)


def read_schema(blobs: WorkBlobs, paths: WorkPaths, digest: str) -> ResponseSchema:
    """The job's schema of digest `digest`; raises `WorkFileError` when the file is not
    that schema (another digest, or not a schema at all)."""
    uri = paths.schema(digest)
    try:
        data = orjson.loads(blobs.read_bytes(uri))
    except orjson.JSONDecodeError as exc:
        raise WorkFileError(uri, "file", f"not JSON ({exc})") from None
    fields = Fields(data, uri)
    found = ResponseSchema(fields.text("name"), fields.mapping("schema"), fields.text("digest"))
    if found.digest != digest:
        raise fields.error("digest", f"expected {digest!r}, got {found.digest!r}")
    return found
