"""Checking answers against their schema, for the repair of those that fail it.

While a chunk is collected, each answer with a schema is validated (`SchemaChecks`). An
invalid one is written as `failed` (`schema_validation`) like any other line and, while
the job allows more repairs at that model, noted for a `repair` round
(`round_rules.RoundRules`): staging (`follow_ups`) writes its request again with its
previous answer and what was wrong with it appended to the conversation, and the next
collect replaces the line with the new answer (the result line lists every attempt).
"""

from __future__ import annotations

from batchline.bootstrap import Deps
from batchline.domain.models import ProviderResult
from batchline.domain.paths import WorkPaths
from batchline.domain.providers import registry
from batchline.domain.schemas import ResponseSchema, SchemaCheck, Validator
from batchline.domain.workfiles.schemas import read_schema


class SchemaChecks:
    """Compiled validators of one job's schemas, loaded from the work bucket on first use."""

    def __init__(self, deps: Deps, paths: WorkPaths) -> None:
        self._deps = deps
        self._paths = paths
        self._validators: dict[tuple[str, str], Validator] = {}
        self._schemas: dict[str, ResponseSchema] = {}

    def check(self, digest: str, provider: str, result: ProviderResult) -> SchemaCheck:
        """Validate `result`'s answer against the job's schema of digest `digest`."""
        validator = self._validators.get((digest, provider))
        if validator is None:
            validator = self._load(digest, provider)
        return validator.check(result.text, result.structured)

    def schema(self, digest: str) -> ResponseSchema:
        """The job's schema of digest `digest` (read once)."""
        found = self._schemas.get(digest)
        if found is None:
            found = self._schemas[digest] = read_schema(self._deps.blobs, self._paths, digest)
        return found

    def _load(self, digest: str, provider: str) -> Validator:
        schema = self.schema(digest)
        # OpenAI strict mode answers `null` for optional properties: drop those again.
        strict = registry.provider(provider).strips_nulls(schema)
        validator = self._validators[digest, provider] = Validator(schema, strip_nulls=strict)
        return validator
