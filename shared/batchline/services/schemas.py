"""The registry of JSON Schemas that lines and jobs name (`schema`): one object per name
in the work bucket (`domain.paths.registered_schema_uri`), read and written through the
BlobStore port. `batchline schema push|list|show` use it; planning reads it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from batchline.domain.paths import registered_schema_uri
from batchline.ports import BlobStore


@dataclass(frozen=True)
class RegisteredSchema:
    """A registered schema as `batchline schema list` shows it."""

    name: str
    uri: str
    size: int
    updated: str | None  # ISO 8601, UTC
    source: str | None  # what it was pushed from (`module:Class` or a file)

    def to_dict(self) -> dict[str, Any]:
        """As JSON (`schema list --json`)."""
        return {
            "name": self.name,
            "uri": self.uri,
            "size": self.size,
            "updated": self.updated,
            "source": self.source,
        }


def push(
    blobs: BlobStore, work_bucket: str, name: str, schema: Any, source: str
) -> tuple[str, int]:
    """Register (or replace) `schema` under `name`; returns its URI and size in bytes.
    Key order is kept: property order is the order models write the answer in."""
    uri = registered_schema_uri(work_bucket, name)
    data = orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n"
    blobs.put(uri, data, "application/json", {"source": source})
    return uri, len(data)


def registered(blobs: BlobStore, work_bucket: str) -> list[RegisteredSchema]:
    """Every registered schema, by name."""
    folder = registered_schema_uri(work_bucket, "NAME").removesuffix("NAME.json")
    found = []
    for uri in blobs.list_prefix(folder):
        name = uri.removeprefix(folder)
        if "/" in name or not name.endswith(".json"):
            continue
        info = blobs.describe(uri)
        updated = (
            None if info.updated is None else datetime.fromtimestamp(info.updated, UTC).isoformat()
        )
        found.append(
            RegisteredSchema(
                name.removesuffix(".json"), uri, info.size, updated, info.metadata.get("source")
            )
        )
    return found


def read(blobs: BlobStore, work_bucket: str, name: str) -> bytes:
    """A registered schema as stored; raises NotFound."""
    return blobs.read_bytes(registered_schema_uri(work_bucket, name))
