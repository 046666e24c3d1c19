"""What a provider is to batchline: the `Provider` descriptor Protocol and the parts every
provider's descriptor shares. Pure: no SDK, no I/O.

A provider's descriptor (`domain/providers/<name>.py`) owns everything batchline knows
about that provider's wire format: which native lines are its own and how they are checked,
what a batchline line may ask of it, which response schemas it refuses, how a request is
encoded and a result normalised, how its input tokens are counted, how a repair turn is
appended, its chunk limits and its settings block. Its client (`adapters/providers/<name>.py`,
`make_client`) is the only part that talks to the provider. The rest of the code looks a
provider up in `domain/providers/registry.py` and never compares a provider's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from batchline.domain.providers.tokens import RequestParts, TokenRule
from batchline.domain.schemas import ResponseSchema
from batchline.errors import ConfigError

if TYPE_CHECKING:
    from batchline.domain.quotas import QuotaPolicy

MAX_CUSTOM_ID_CHARS = 512

#: A model id, after its `provider/` prefix. A model name ends up in provider resource
#: paths (Vertex: `publishers/google/models/<id>`) and URLs, so every provider's ids are
#: held to one strict charset: no `/`, no `..` path, no spaces or control characters.
#: Real ids pass: `gpt-4.1-mini-2025-04-14`, `ft:gpt-4o-mini:org:my_suffix:abc123`,
#: `claude-sonnet-4-5@20250929`, `gemini-2.5-flash`.
MODEL_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
# A file names a few models on many lines: remember some good ids (a lookup is cheaper than
# checking again, on every line), never so many that input could grow them without end.
_GOOD_MODEL_IDS: set[str] = set()
_GOOD_MODEL_IDS_KEPT = 1024


@dataclass(frozen=True)
class ChunkLimits:
    """How much one provider batch may hold. `max_bytes` limits what is sent: the chunk's
    payload plus `envelope_bytes`, the fixed bytes a provider's request wraps around it."""

    max_requests: int
    max_bytes: int
    envelope_bytes: int = 0
    #: The most estimated input tokens one chunk may hold (None: no cap); set where the
    #: provider's quota counts tokens, so that any one chunk fits in it (`domain/quotas`).
    max_input_tokens: int | None = None


def margin_limits(max_requests: int, max_bytes: int, margin: float = 0.95) -> ChunkLimits:
    """A provider's own per-batch limits less a safety margin, so that an encoding detail
    never tips a chunk over."""
    return ChunkLimits(int(max_requests * margin), int(max_bytes * margin))


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request, bound to one provider and model.

    `params` holds the provider-neutral fields of a batchline line; `native` the body of a
    provider-native line, passed to the provider untouched.
    """

    line: int
    custom_id: str | None  # None: none given, one is generated (`line-<n>`)
    provider: str
    model: str
    params: dict[str, Any] | None = None
    native: dict[str, Any] | None = None
    #: The schema the answer must match: batchline lines' `response_schema`/`schema` (or
    #: the job's default), encoded for the provider; native lines' own structured-output
    #: setting, which passes untouched and is only used to validate the answer.
    schema: ResponseSchema | None = None
    #: The models (`provider/model`) to fail over to, in order, when this one cannot
    #: answer; empty: the job's `fallback` option applies.
    fallback: tuple[str, ...] = ()
    #: How the model was chosen: None (named by the line or the job), or "auto".
    selected_by: str | None = None


class InvalidField(Exception):
    """What is wrong with one field of an input line; parsing turns it into an
    `InvalidLine` naming the line, `field` and `reason`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


#: A request as one line of its provider's batch input, as an object.
Encoder = Callable[[Request], dict[str, Any]]
#: (staged request line, previous answer, feedback) -> None, changing the line in place.
RepairTurn = Callable[[dict[str, Any], str, str], None]


class ProviderSettings(Protocol):
    """A provider's settings block, parsed from the environment by its descriptor."""

    @property
    def limits(self) -> ChunkLimits:
        """The most one of its batches may hold (the provider's limits less a margin)."""
        ...


@dataclass(frozen=True)
class NativeContext:
    """What a native line may fall back on: the job's default model.

    `split_model` is `domain.requests.split_model` bound to the deployment's enabled
    providers (it raises `InvalidField` for a bad or disabled `provider/model`).
    """

    default_model: str | None
    split_model: Callable[[Any, str], tuple[str, str]]

    def default_for(self, provider: str, field: str, noun: str) -> str:
        """The model id of the job's default model, which must be `provider`'s; raises
        `InvalidField` on `field` (the line's missing model) when there is none or it is
        another provider's (`noun`: "an OpenAI model")."""
        if not self.default_model:
            raise InvalidField(field, "missing, and the job has no default model")
        owner, model = self.split_model(self.default_model, "model (job default)")
        if owner != provider:
            raise InvalidField(
                field, f"missing, and the job default {self.default_model!r} is not {noun}"
            )
        return model


class Provider(Protocol):
    """One provider's descriptor: everything batchline knows of its wire format.

    Implementations are pure (no SDK, no I/O); `adapters/providers/<name>.py` holds the
    client, built by its `make_client(settings, project=, blobs=)`.
    """

    #: The name in `provider/model` and in the registry.
    name: str
    #: Top-level keys any of which makes a line this provider's native format.
    native_keys: frozenset[str]
    #: Where a native line names its model (`body.model`).
    model_field: str
    #: The field of its own that holds a native line's id when it has no `custom_id`
    #: (Vertex's `key`), or None.
    id_key: str | None
    #: Its quota: what it counts, the lowest paid tier's numbers, how it says "full".
    quota: QuotaPolicy

    def settings_from_env(self, env: Mapping[str, str], /) -> ProviderSettings:
        """Its settings block from the environment; raises ConfigError naming a bad one."""
        ...

    def chunk_limits(self, settings: Any) -> ChunkLimits:
        """What one batch may hold, under `settings` (envelope bytes included)."""
        ...

    def encoder(self, settings: Any) -> Encoder:
        """Its request encoder under `settings`: a `Request` as one line of batch input."""
        ...

    def model_id(self, model: str) -> str:
        """The model id of a `provider/<model>` name's `<model>` (e.g. a path stripped)."""
        ...

    def parse_native(
        self, obj: dict[str, Any], context: NativeContext
    ) -> tuple[str, dict[str, Any]]:
        """(model id, body sent untouched) of a native line; raises `InvalidField`."""
        ...

    def native_schema(self, body: dict[str, Any]) -> tuple[Any, str | None] | None:
        """(JSON Schema, name) of a native body's own structured-output setting, or None;
        raises `InvalidField` for a setting that is not a schema."""
        ...

    def check_message(self, where: str, message: dict[str, Any]) -> None:
        """Raise `InvalidField` if a batchline message (an object) cannot go to it."""
        ...

    def check_temperature(self, temperature: Any) -> None:
        """Raise `InvalidField` if a batchline line's `temperature` cannot go to it."""
        ...

    def check_stop(self, stop: list[str]) -> None:
        """Raise `InvalidField` if a batchline line's `stop` cannot go to it."""
        ...

    def check_schema(self, schema: ResponseSchema) -> None:
        """Raise SchemaError naming the construct if it cannot express `schema`."""
        ...

    def input_modalities(self, messages: Any) -> frozenset[str]:
        """What a batchline line's messages ask of a model besides text, as this provider
        reads their content parts ("image", "pdf"; `pricing.MODALITIES`)."""
        ...

    def strips_nulls(self, schema: ResponseSchema) -> bool:
        """Whether its answers to `schema` may hold nulls the schema does not take, to be
        removed before validation (OpenAI's strict mode for optional properties)."""
        ...

    def add_repair_turn(self, line: dict[str, Any], answer: str, feedback: str) -> None:
        """Append a previous answer and what was wrong with it to a staged request line."""
        ...

    def token_rule(self, model: str) -> TokenRule:
        """How its input tokens are counted for `model` (a tokenizer or a ratio)."""
        ...

    def token_parts(self, line: dict[str, Any]) -> RequestParts:
        """What an encoded request line bills as input, and the output it allows."""
        ...


# ------------------------------------------------------------------- shared line checks


def kind(value: Any) -> str:
    """What `value` is, for an error message ("a string", "an object", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_role(where: str, message: dict[str, Any], roles: Any, takes: str) -> Any:
    """The message's role when it is one of `roles`; else InvalidField on `<where>.role`
    ("`takes` one of [...]"). A list or object where a role goes is unknown, not a crash."""
    role = message.get("role")
    try:
        known = role in roles
    except TypeError:  # unhashable: a list or object where a role goes
        known = False
    if not known:
        raise InvalidField(f"{where}.role", f"{takes} one of {sorted(roles)}, got {role!r}")
    return role


def check_fields(where: str, message: dict[str, Any], fields: Any, what: str) -> None:
    """InvalidField on the first key of `message` not in `fields` ("not a field of `what`")."""
    for key in message:
        if key not in fields:
            raise InvalidField(f"{where}.{key}", f"not a field of {what}")


def content_items(where: str, message: dict[str, Any], items: str) -> list[Any] | None:
    """A message's content as a list of its `items` (blocks, parts); None when it is a
    string. InvalidField on `<where>.content` when it is neither, or an empty list."""
    content = message.get("content")
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        raise InvalidField(
            f"{where}.content", f"expected a string or a list of {items}, got {kind(content)}"
        )
    if not content:
        raise InvalidField(f"{where}.content", "must not be an empty list")
    return content


def shown(value: str, limit: int = 80) -> str:
    """`value` for an error message: quoted, and cut when long (a line may hold anything)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"


def check_custom_id(value: Any, field: str = "custom_id") -> str | None:
    """A line's id as given (None when absent); raises `InvalidField` for a bad one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(field, f"expected a string, got {kind(value)}")
    if not value:
        raise InvalidField(field, "must not be empty")
    if len(value) > MAX_CUSTOM_ID_CHARS:
        raise InvalidField(field, f"longer than {MAX_CUSTOM_ID_CHARS} characters")
    return value


def model_id_problem(model_id: str) -> str | None:
    """Why `model_id` (a model without its `provider/` prefix) is not a model id, or None."""
    if model_id in _GOOD_MODEL_IDS:
        return None
    if _MODEL_ID.fullmatch(model_id):
        if len(_GOOD_MODEL_IDS) < _GOOD_MODEL_IDS_KEPT:
            _GOOD_MODEL_IDS.add(model_id)
        return None
    return (
        f"{shown(model_id)} is not a model id: allowed are {MODEL_ID_PATTERN} (letters, "
        "digits and . _ : @ -, starting with a letter or digit, at most 128 characters)"
    )


def check_model_id(model: str, field: str) -> None:
    """Raise `InvalidField` on `field` unless `model` is a model id (`MODEL_ID_PATTERN`)."""
    problem = model_id_problem(model)
    if problem is not None:
        raise InvalidField(field, problem)


def content_modalities(
    messages: Any, modality: Callable[[dict[str, Any]], str | None]
) -> frozenset[str]:
    """The modalities `modality` finds in the content parts of a batchline line's
    `messages` (each part an object; None: text, or nothing a model is chosen by)."""
    found: set[str] = set()
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            kind = modality(part) if isinstance(part, dict) else None
            if kind is not None:
                found.add(kind)
    return frozenset(found)


def check_messages(messages: Any, check_message: Callable[[str, dict[str, Any]], None]) -> None:
    """A non-empty list of objects, each passing the provider's `check_message`."""
    if not isinstance(messages, list):
        raise InvalidField("messages", f"expected a list, got {kind(messages)}")
    if not messages:
        raise InvalidField("messages", "must not be empty")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidField(where, f"expected an object, got {kind(message)}")
        check_message(where, message)


def check_messages_field(
    body: dict[str, Any], name: str, check_message: Callable[[str, dict[str, Any]], None]
) -> None:
    """A native body's `messages` (checked as a batchline line's), errors under `name`."""
    if "messages" not in body:
        raise InvalidField(f"{name}.messages", "missing")
    try:
        check_messages(body["messages"], check_message)
    except InvalidField as exc:
        raise InvalidField(f"{name}.{exc.field}", exc.reason) from None


def check_known_fields(obj: dict[str, Any], known: frozenset[str], what: str) -> None:
    """Raise `InvalidField` on the first key of `obj` not in `known` ("unknown field in
    `what`")."""
    for key in obj:
        if key not in known:
            raise InvalidField(key, f"unknown field in {what}")


def role_is(role: Any, roles: frozenset[str]) -> bool:
    """Whether `role` is one of `roles` (False for a list or object where a role goes)."""
    try:
        return role in roles
    except TypeError:
        return False


def no_check(_value: Any) -> None:
    """A check that accepts anything (what a provider takes as batchline writes it)."""


# ------------------------------------------------------------------------ settings


def env_text(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, None when unset or empty."""
    return env.get(name) or None


def env_number(env: Mapping[str, str], name: str, default: float) -> float:
    """The variable as a number, `default` when unset or blank; ConfigError otherwise."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc


def env_limits(
    env: Mapping[str, str], requests_name: str, bytes_name: str, default: ChunkLimits
) -> ChunkLimits:
    """Chunk limits from two variables (requests, bytes), each defaulting to `default`'s."""
    return ChunkLimits(
        int(env_number(env, requests_name, default.max_requests)),
        int(env_number(env, bytes_name, default.max_bytes)),
        default.envelope_bytes,
    )
