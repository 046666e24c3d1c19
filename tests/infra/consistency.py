"""Facts about `infra/` and about the code, and the checks that they agree.

`infra_facts()` parses infra/*.tf with python-hcl2; `code_facts()` reads functions/main.py
and the deployed package with `ast` (nothing is imported). `check(infra, code)` returns
every disagreement as a sentence; the tests assert it returns none, and feed it mutated
copies of either side to show that it notices.

What is checked:
- every function's entry point exists in functions/main.py, with the signature its trigger
  needs, and every entry point there is deployed;
- every environment variable infra sets is one the code reads, every required one is set,
  every other one the code reads can be set (a setting or a secret) unless only the local
  stack sets it (LOCAL_ONLY_ENV), which infra must then never set; each bucket and topic
  variable names the resource that plays that part; location settings default to the
  deployment's region;
- providers: infra can enable exactly the providers the code runs (the keys of
  domain/providers/registry.py's PROVIDERS), and var.enabled_providers accepts them; a
  provider whose client (adapters/providers/<name>.py's make_client) reads an API key (a
  `repr=False` field of its settings block) has a secret mounted as that variable, one whose client reads none has no secret; a provider whose adapter calls a
  Google API with the function's own credentials (GOOGLE_APIS) has that API enabled, and
  each function gets the role (GOOGLE_API_ROLES) of the strongest API call in the provider
  methods its code calls, no more; where the adapter has the provider's jobs read and write
  GCS themselves, the API's service agent may read and create objects in the work bucket,
  under the prefix where the code stages chunk payloads if the grants are conditioned;
- triggers: submit on the input bucket, poll and collect on their topics, the scheduler on
  the poll topic, an explicit retry policy on each event function;
- per function, the topics its code publishes to and whether it calls a provider equal
  what infra grants (publisher on the topic, the API key secrets), and the blob operations
  it performs, its own and those of the provider adapters' methods it calls (Vertex AI's
  iter_results lists the job's output), are ones the granted roles allow;
- each Firestore query in the code is served by an index: a composite index declared in
  infra, or single-field indexes, which Firestore keeps automatically for collection
  scope only (unless infra overrides the field); a collection-group query needs a
  collection-group single-field index declared in infra for every field it uses;
- retention: the TTL policies are on the timestamp field the code stamps, on every
  collection group whose documents get it, and exist exactly when infra sets the
  retention variable that makes the code stamp it;
- the work bucket's lifecycle covers every prefix the code writes there;
- no IAM grant uses a primitive role or allUsers/allAuthenticatedUsers, and invoker is
  granted on single services only;
- timeouts: at most 540 s for event functions; the work budget fits in the timeout of
  every function whose code uses it; the longest hold (max_hold_seconds) outlives them all.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = ROOT / "functions" / "main.py"
PACKAGE = ROOT / "shared" / "batchline"
# Not deployed (scripts/package.py leaves them out of the zip).
NOT_DEPLOYED = ("local/", "cli.py")
# The provider registry, the descriptors (each with its settings block) and the clients.
REGISTRY = "batchline.domain.providers.registry"
DESCRIPTORS = "batchline.domain.providers"
ADAPTERS = "batchline.adapters.providers"
_BASE_SOURCE = (PACKAGE / "domain" / "providers" / "base.py").read_text()

PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}
EVENT_TIMEOUT_LIMIT = 540
HTTP_TIMEOUT_LIMIT = 3600
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")

# BlobStore operations and the role each needs on the bucket (infra grants objectViewer
# for "read" and objectCreator for "create"; nothing can overwrite or delete).
BLOB_OPERATIONS = {
    "open_read": "read",
    "read_bytes": "read",
    "exists": "read",
    "describe": "read",
    "list_prefix": "read",  # storage.objects.list, in objectViewer
    "write_bytes": "create",
    "open_write": "create",
    "create": "create",
}
EQUALITY_OPS = {
    "==",
    "in",
    "array_contains",
    "array-contains",
    "array_contains_any",
    "array-contains-any",
}
ARRAY_OPS = {"array_contains", "array-contains", "array_contains_any", "array-contains-any"}
SCOPES = ("COLLECTION", "COLLECTION_GROUP")
INDEX_MODES = ("ASCENDING", "DESCENDING", "CONTAINS")
# The single-field indexes Firestore keeps for a field nobody overrides: collection scope
# only. Collection-group scope must be asked for (google_firestore_field index_config).
AUTOMATIC_INDEXES = frozenset(("COLLECTION", mode) for mode in INDEX_MODES)
# Which model each Firestore collection holds: the collection's constant in
# adapters/firestore.py and the dataclass in domain/models.py.
STORED_MODELS = {"JOBS": "Job", "CHUNKS": "Chunk", "KEYS": "IdempotencyKey"}
# The Settings field whose variable makes the code stamp expiry timestamps.
RETENTION_SETTING = "retention_days"
# Variables the deployed code reads that only the local stack sets, and infra must not:
# the emulators' hosts, and the Vertex AI endpoint (an http:// one is the emulator; unset,
# the code uses Google's regional endpoint for BATCHLINE_VERTEX_LOCATION).
# BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL lets a notify_url be http:// on this machine (the
# local stack's receiver): never in a deployment.
LOCAL_ONLY_ENV = re.compile(
    r"_EMULATOR_HOST$|^BATCHLINE_VERTEX_API_ENDPOINT$|^BATCHLINE_WEBHOOK_ALLOW_INSECURE_LOCAL$"
)
# Google client libraries a provider adapter may call with the function's own credentials
# (no API key), by import prefix, and the API each calls.
GOOGLE_APIS = {"google.cloud.aiplatform": "aiplatform.googleapis.com"}
# Per API, the predefined role each client call the adapters make needs, weakest first
# (each role holds the permissions of those before it). A call not listed is reported.
GOOGLE_API_ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "aiplatform.googleapis.com": {
        "roles/aiplatform.viewer": ("get_batch_prediction_job", "list_batch_prediction_jobs"),
        "roles/aiplatform.user": ("create_batch_prediction_job", "cancel_batch_prediction_job"),
    }
}
# String keys that, in an adapter, mean the provider's jobs read their input from and write
# their output to GCS themselves (as the API's service agent), in the chunk's folder.
AGENT_IO_KEYS = ("gcs_source", "gcs_destination")


# --------------------------------------------------------------------------- HCL helpers


def unquote(value: Any) -> Any:
    """python-hcl2 keeps string literals quoted ('"x"'); expressions come as '${...}'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def expression(value: Any) -> str:
    """The text of an HCL expression or literal, without python-hcl2's ${ }."""
    text = unquote(value) if isinstance(value, str) else str(value)
    if text.startswith("${") and text.endswith("}"):
        return text[2:-1]
    return text


# Keys python-hcl2 adds to a parsed block: not arguments.
HCL_MARKERS = frozenset(("__is_block__", "__comments__", "__inline_comments__"))


def _plain(value: Any) -> Any:
    """A parsed HCL value with its quotes removed and python-hcl2's markers dropped."""
    if isinstance(value, dict):
        return {unquote(k): _plain(v) for k, v in value.items() if k not in HCL_MARKERS}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return unquote(value)


@dataclass
class InfraFacts:
    """infra/*.tf, merged: resources by (type, name), locals, variables."""

    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources.get((kind, name), {})

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}


def parse_hcl(text: str) -> dict[str, Any]:
    return dict(hcl2.loads(text))


def labelled_blocks(parsed: dict[str, Any], keyword: str) -> Iterator[tuple[str, str, Any]]:
    """(type, name, body as python-hcl2 gives it) of each `keyword "type" "name" {}` block
    (resource, data) in a parsed file."""
    for block in parsed.get(keyword, []):
        for kind, named in block.items():
            for name, body in named.items():
                if isinstance(body, dict):
                    yield unquote(kind), unquote(name), body


def infra_facts(directory: Path = INFRA) -> InfraFacts:
    return infra_facts_from({p.name: p.read_text() for p in sorted(directory.glob("*.tf"))})


def infra_facts_from(files: dict[str, str]) -> InfraFacts:
    facts = InfraFacts()
    for name, text in files.items():
        try:
            parsed = parse_hcl(text)
        except Exception as exc:  # python-hcl2 raises lark's exceptions
            raise ValueError(f"infra/{name} does not parse: {exc}") from exc
        for kind, rname, body in labelled_blocks(parsed, "resource"):
            facts.resources[(kind, rname)] = _plain(body)
        for block in parsed.get("locals", []):
            facts.locals.update(_plain(block))
        for block in parsed.get("variable", []):
            for vname, body in block.items():
                facts.variables[unquote(vname)] = body
    return facts


# ---------------------------------------------------------------- HCL type expressions


@dataclass(frozen=True)
class Optional_:
    type: Any
    default: Any


class _TypeParser:
    """Parses a variable's `type` (object/optional/map/list and literals) enough to read
    the optional() defaults: object({...}) -> dict, optional(T, d) -> Optional_."""

    TOKEN = re.compile(
        r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)|(?P<id>[A-Za-z_][A-Za-z0-9_-]*)|(?P<p>[{}()\[\],=:]))'
    )

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            match = self.TOKEN.match(text, pos)
            if not match:
                if text[pos:].strip() == "":
                    break
                raise ValueError(f"cannot read type expression at: {text[pos : pos + 30]!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("eof", "")

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if expected is not None and token[1] != expected:
            raise ValueError(f"expected {expected!r}, got {token[1]!r}")
        self.i += 1
        return token

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if text == "{":
            result: dict[str, Any] = {}
            while self.peek()[1] != "}":
                key = self.take()[1].strip('"')
                self.take("=") if self.peek()[1] == "=" else self.take(":")
                result[key] = self.value()
                if self.peek()[1] == ",":
                    self.take()
            self.take("}")
            return result
        if text == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take()
            self.take("]")
            return items
        if kind == "id":
            if text in ("true", "false"):
                return text == "true"
            if text == "null":
                return None
            if self.peek()[1] != "(":
                return text  # string, number, bool, any
            self.take("(")
            args = [self.value()]
            while self.peek()[1] == ",":
                self.take()
                args.append(self.value())
            self.take(")")
            if text == "optional":
                return Optional_(args[0], args[1] if len(args) > 1 else None)
            if text == "object":
                return args[0]
            return (text, args[0])  # map(T), list(T), set(T)
        raise ValueError(f"unexpected {text!r} in type expression")


def parse_type(text: str) -> Any:
    return _TypeParser(expression(text)).value()


def type_defaults(parsed: Any) -> Any:
    """The value an empty `{}` takes under `parsed`: optional() defaults, recursively."""
    if isinstance(parsed, Optional_):
        if isinstance(parsed.type, dict) and isinstance(parsed.default, dict):
            merged = type_defaults(parsed.type)
            merged.update(parsed.default)
            return merged
        return parsed.default
    if isinstance(parsed, dict):
        return {k: type_defaults(v) for k, v in parsed.items()}
    return None


def variable_defaults(infra: InfraFacts, name: str) -> dict[str, Any]:
    variable = infra.variables.get(name) or {}
    if "type" not in variable:
        return {}
    defaults = type_defaults(parse_type(variable["type"]))
    return defaults if isinstance(defaults, dict) else {}


# ---------------------------------------------------------------------------- code facts


@dataclass(frozen=True)
class Query:
    module: str
    collection: str
    scope: str  # COLLECTION or COLLECTION_GROUP
    filters: tuple[tuple[str, str], ...]  # (field, op)
    orders: tuple[tuple[str, str], ...]  # (field, ASCENDING|DESCENDING)

    def needs_composite(self) -> bool:
        ranged = {f for f, op in self.filters if op not in EQUALITY_OPS} | {
            f for f, _ in self.orders
        }
        fields = {f for f, _ in self.filters} | {f for f, _ in self.orders}
        if not ranged:
            return False  # equality filters only: single-field indexes (merged) serve it
        return len(fields) > 1

    def single_field_needs(self) -> list[tuple[str, tuple[str, ...]]]:
        """For a query single-field indexes serve: each field, with the index modes (any one
        of them, in the query's scope) that serve what the query does with it."""
        ordered = dict(self.orders)
        needs: list[tuple[str, tuple[str, ...]]] = []
        for name, op in self.filters:
            if op in ARRAY_OPS:
                needs.append((name, ("CONTAINS",)))
            elif name in ordered:
                continue  # the order below says which direction
            elif op in EQUALITY_OPS:
                needs.append((name, ("ASCENDING", "DESCENDING")))
            else:
                needs.append((name, ("ASCENDING",)))
        needs += [(name, (direction,)) for name, direction in self.orders]
        return needs


@dataclass(frozen=True)
class FunctionUse:
    """What the code reachable from one entry point does."""

    settings: frozenset[str]  # Settings fields it reads
    published: frozenset[str]  # Settings fields used as the topic of a publish
    blob_operations: frozenset[str]  # BlobStore methods it calls (provider adapters' too)
    uses_providers: bool
    provider_methods: frozenset[str] = frozenset()  # ProviderClient methods it calls


@dataclass(frozen=True)
class ProviderFacts:
    """What one provider's client (adapters/providers/<name>.py) needs from the deployment."""

    adapter: str  # module.Class
    api_key_env: frozenset[str]  # variables of the secret settings its client is built with
    google_api: str | None  # the Google API its adapter calls with the function's credentials
    agent_io: bool  # its jobs read and write GCS themselves (the API's service agent)
    # ProviderClient method -> (BlobStore methods, client calls on self._client) it makes
    methods: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)


@dataclass
class CodeFacts:
    entry_points: dict[str, str]  # name -> "cloudevent" | "http"
    env_read: frozenset[str]  # every environment variable the deployed code reads
    required_env: list[frozenset[str]]  # each group: at least one must be set
    numeric_env: frozenset[str]
    settings_env: dict[str, frozenset[str]]  # Settings field -> variables it comes from
    uses: dict[str, FunctionUse]  # by entry point
    queries: list[Query]
    work_prefixes: frozenset[str]  # first path segments the code writes in the work bucket
    providers: frozenset[str] = frozenset()  # the providers the code runs
    # Firestore collection -> the timestamp fields the code stamps on its documents
    expiry_fields: dict[str, frozenset[str]] = field(default_factory=dict)
    provider_facts: dict[str, ProviderFacts] = field(default_factory=dict)
    payload_prefix: str | None = None  # where chunk payloads are staged in the work bucket
    secret_settings: frozenset[str] = frozenset()  # Settings fields declared repr=False


def deployed_sources(package: Path = PACKAGE, main: Path = MAIN) -> dict[str, str]:
    """Module name -> source, for what the zip holds: main.py and the batchline package."""
    sources = {"main": main.read_text()}
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if "__pycache__" in relative or relative.startswith(NOT_DEPLOYED):
            continue
        parts = ["batchline", *relative[: -len(".py")].split("/")]
        if parts[-1] == "__init__":
            parts.pop()
        sources[".".join(parts)] = path.read_text()
    return sources


def _decorator_kind(node: ast.expr) -> str | None:
    target = node.func if isinstance(node, ast.Call) else node
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return {"cloud_event": "cloudevent", "http": "http"}.get(name)


def entry_points(main_source: str) -> dict[str, str]:
    found = {}
    for node in ast.parse(main_source).body:
        if isinstance(node, ast.FunctionDef):
            kinds = [k for k in map(_decorator_kind, node.decorator_list) if k]
            if kinds:
                found[node.name] = kinds[0]
    return found


def _constant_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def env_reads(sources: dict[str, str]) -> frozenset[str]:
    """Names passed to env.get/os.getenv/os.environ[...]/required()/number()."""
    names: set[str] = set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            candidate = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if fname in ("get", "getenv", "required", "number", "pop", "setdefault"):
                    candidate = _constant_str(node.args[0])
            elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
                candidate = _constant_str(node.slice)
            if candidate and ENV_NAME.match(candidate):
                names.add(candidate)
    return frozenset(names)


def _from_env(config_source: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(config_source)):
        if isinstance(node, ast.FunctionDef) and node.name == "from_env":
            return node
    raise ValueError("config.py has no Settings.from_env")


def _names_in(node: ast.AST) -> frozenset[str]:
    return frozenset(
        c for n in ast.walk(node) if (c := _constant_str(n)) is not None and ENV_NAME.match(c)
    )


def _keyword_env(function: ast.FunctionDef, prefix: str = "") -> dict[str, frozenset[str]]:
    """`cls(field=...)` in `function`: field (with `prefix`) -> the env names its value
    reads (directly, or through a local variable assigned from them)."""
    assigned: dict[str, ast.AST] = {}
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            assigned[node.targets[0].id] = node.value
    fields: dict[str, frozenset[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "cls":
            for keyword in node.keywords:
                value = keyword.value
                if isinstance(value, ast.Name) and value.id in assigned:
                    value = assigned[value.id]
                if keyword.arg and _names_in(value):
                    fields[prefix + keyword.arg] = _names_in(value)
    return fields


def _numeric_names(function: ast.FunctionDef, parsers: frozenset[str]) -> set[str]:
    """Env names passed to a number parser in `function`."""
    numeric: set[str] = set()
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.args
            and node.func.id in parsers
        ):
            numeric.update(c for a in node.args if (c := _constant_str(a)) and ENV_NAME.match(c))
    return numeric


def settings_from_config(
    config_source: str, provider_sources: dict[str, str] | None = None
) -> tuple[dict[str, frozenset[str]], list[frozenset[str]], frozenset[str]]:
    """(Settings field -> env names, required groups, numeric names) from from_env, and
    from each provider's settings block (`provider_sources`: name -> its descriptor
    module's source, its `from_env`), whose fields are keyed `<provider>_<field>`."""
    function = _from_env(config_source)
    assigned: dict[str, ast.AST] = {}
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            assigned[node.targets[0].id] = node.value
    fields = _keyword_env(function)
    required: list[frozenset[str]] = []
    blocks = provider_sources or {}
    parsers = _number_parsers(config_source, *blocks.values())
    numeric = _numeric_names(function, parsers)
    for name, source in sorted(blocks.items()):
        if "def from_env(" not in source:
            continue  # a provider without a descriptor: reported as one without a client
        block = _from_env(source)
        fields.update(_keyword_env(block, f"{name}_"))
        numeric |= _numeric_names(block, parsers)
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            name = _constant_str(node.args[0])
            if name and node.func.id == "required":
                required.append(frozenset({name}))
        # `if not x: raise ...` where x was read from the environment
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.UnaryOp)
            and isinstance(node.test.op, ast.Not)
            and isinstance(node.test.operand, ast.Name)
            and node.test.operand.id in assigned
            and any(isinstance(s, ast.Raise) for s in node.body)
        ):
            names = _names_in(assigned[node.test.operand.id])
            if names:
                required.append(names)
    return fields, required, frozenset(numeric)


def _number_parsers(*sources: str) -> frozenset[str]:
    """Functions (nested ones too) that turn a value into a number: in config.py, the
    providers' base module (the settings helpers) and the given sources."""
    found = set()
    for source in (*sources, _BASE_SOURCE):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(n, ast.Call) and getattr(n.func, "id", "") in ("float", "int")
                for n in ast.walk(node)
            ):
                found.add(node.name)
    return frozenset(found)


class _Module:
    """One module's top-level functions and classes, and what its names import."""

    def __init__(self, name: str, source: str, modules: set[str]) -> None:
        self.name = name
        self.tree = ast.parse(source)
        self.defs: dict[str, ast.AST] = {}
        for node in self.tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                self.defs[node.name] = node
        # Imports anywhere in the module (the code imports lazily inside functions).
        self.imports: dict[str, str] = {}
        package = name if self._is_package(name, modules) else name.rpartition(".")[0]
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*parent, base] if base else parent)
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{base}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.imports[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )

    @staticmethod
    def _is_package(name: str, modules: set[str]) -> bool:
        return any(m.startswith(name + ".") for m in modules)


class CallGraph:
    """Which functions the code reachable from an entry point consists of, by name
    resolution over imports (lazy ones included) and references (calls, and functions
    passed as values). Methods called on objects (deps.store.x) are adapters behind ports
    and are not followed; the services call ports through `deps`, which is what is read."""

    def __init__(self, sources: dict[str, str]) -> None:
        names = set(sources)
        self.modules = {name: _Module(name, source, names) for name, source in sources.items()}

    def _resolve(self, module: _Module, dotted: list[str]) -> tuple[str, str] | None:
        head, rest = dotted[0], dotted[1:]
        if head in module.defs:
            return module.name, head
        target = module.imports.get(head)
        if target is None:
            return None
        parts = target.split(".") + rest
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self.modules:
                remaining = parts[cut:]
                if not remaining:
                    return None
                if remaining[0] in self.modules[prefix].defs:
                    return prefix, remaining[0]
                return (
                    self._resolve(self.modules[prefix], remaining)
                    if remaining[0] in self.modules[prefix].imports
                    else None
                )
        return None

    def reachable(self, module: str, name: str) -> list[tuple[_Module, ast.AST]]:
        seen: set[tuple[str, str]] = set()
        order: list[tuple[_Module, ast.AST]] = []
        stack = [(module, name)]
        while stack:
            key = stack.pop()
            if key in seen or key[0] not in self.modules or key[1] not in self.modules[key[0]].defs:
                continue
            seen.add(key)
            mod = self.modules[key[0]]
            node = mod.defs[key[1]]
            order.append((mod, node))
            for child in ast.walk(node):
                dotted = _dotted(child)
                if dotted:
                    target = self._resolve(mod, dotted)
                    if target:
                        stack.append(target)
        return order


def _dotted(node: ast.AST) -> list[str] | None:
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        return [node.id]
    if isinstance(node, ast.Attribute):
        parts = []
        current: ast.AST = node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        if isinstance(current, ast.Name):
            return [current.id, *reversed(parts)]
    return None


def _settings_field(node: ast.AST) -> str | None:
    """`x.settings.FIELD` or `settings.FIELD` -> FIELD."""
    if isinstance(node, ast.Attribute):
        owner = node.value
        if (isinstance(owner, ast.Attribute) and owner.attr == "settings") or (
            isinstance(owner, ast.Name) and owner.id == "settings"
        ):
            return node.attr
    return None


def _is_provider_lookup(node: ast.AST) -> bool:
    """`<...>.providers.get(...)`: a provider client, by name."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and _owner_name(node.func.value) == "providers"
    )


def _owner_name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _provider_names(node: ast.AST) -> set[str]:
    """Names that hold a provider client in `node`: assigned from a provider lookup, or
    parameters annotated ProviderClient."""
    names: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Assign) and _is_provider_lookup(child.value):
            names.update(t.id for t in child.targets if isinstance(t, ast.Name))
        if (
            isinstance(child, ast.arg)
            and child.annotation is not None
            and "ProviderClient" in ast.unparse(child.annotation)
        ):
            names.add(child.arg)
    return names


def provider_client_methods(sources: dict[str, str]) -> frozenset[str]:
    """The methods of the ProviderClient protocol in ports.py."""
    for node in ast.parse(sources.get("batchline.ports", "")).body:
        if isinstance(node, ast.ClassDef) and node.name == "ProviderClient":
            return frozenset(
                n.name
                for n in node.body
                if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
            )
    return frozenset()


def function_use(
    graph: CallGraph, entry: str, client_methods: frozenset[str] = frozenset()
) -> FunctionUse:
    settings: set[str] = set()
    published: set[str] = set()
    blobs: set[str] = set()
    providers = False
    methods: set[str] = set()
    for _module, node in graph.reachable("main", entry):
        holders = _provider_names(node)
        for child in ast.walk(node):
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in client_methods
                and (
                    _is_provider_lookup(child.func.value)
                    or (isinstance(child.func.value, ast.Name) and child.func.value.id in holders)
                )
            ):
                methods.add(child.func.attr)
            if (name := _settings_field(child)) is not None:
                settings.add(name)
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                owner = child.func.value
                owner_name = (
                    owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                )
                if (
                    child.func.attr == "publish"
                    and child.args
                    and (topic := _settings_field(child.args[0]))
                ):
                    published.add(topic)
                if owner_name == "blobs":
                    blobs.add(child.func.attr)
                if owner_name == "providers" and child.func.attr == "get":
                    providers = True
    return FunctionUse(
        frozenset(settings), frozenset(published), frozenset(blobs), providers, frozenset(methods)
    )


def _secret_settings(source: str, prefix: str = "") -> frozenset[str]:
    """Settings fields declared `field(..., repr=False)`: the secrets (API keys), with
    `prefix` (a provider's settings block: `<provider>_`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Call)
            and any(
                k.arg == "repr" and isinstance(k.value, ast.Constant) and k.value.value is False
                for k in node.value.keywords
            )
        ):
            found.add(prefix + node.target.id)
    return frozenset(found)


def _class_reach(module: _Module, cls: ast.ClassDef, method: str) -> list[ast.AST]:
    """`method` of `cls` and what it reaches in its module: the class's other methods and
    properties through `self.x`, and the module's functions and classes by name."""
    members = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    seen: set[str] = set()
    order: list[ast.AST] = []
    stack = [("self", method)]
    while stack:
        kind, name = stack.pop()
        key = f"{kind}.{name}"
        node = members.get(name) if kind == "self" else module.defs.get(name)
        if key in seen or node is None:
            continue
        seen.add(key)
        order.append(node)
        for child in ast.walk(node):
            if (
                isinstance(child, ast.Attribute)
                and isinstance(child.value, ast.Name)
                and child.value.id == "self"
            ):
                stack.append(("self", child.attr))
            elif isinstance(child, ast.Name) and child.id in module.defs:
                stack.append(("module", child.id))
    return order


def provider_facts(
    sources: dict[str, str],
    graph: CallGraph,
    settings_env: dict[str, frozenset[str]],
    client_methods: frozenset[str],
) -> dict[str, ProviderFacts]:
    """Per provider in the registry: its client factory (`make_client` in
    adapters/providers/<name>.py), the secret settings of its block it reads, and its
    adapter class's methods."""
    found: dict[str, ProviderFacts] = {}
    for name in registry_providers(sources):
        secrets = _secret_settings(sources.get(f"{DESCRIPTORS}.{name}", ""), f"{name}_")
        client_module = graph.modules.get(f"{ADAPTERS}.{name}")
        factory = client_module.defs.get("make_client") if client_module else None
        if client_module is None or factory is None:
            continue
        fields = {f"{name}_{f}" for n in ast.walk(factory) if (f := _settings_field(n))}
        keys = frozenset().union(*(settings_env.get(f, frozenset()) for f in fields & secrets))
        adapter = None
        for node in ast.walk(factory):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                target = graph._resolve(client_module, [node.func.id])
                if target and isinstance(graph.modules[target[0]].defs[target[1]], ast.ClassDef):
                    adapter = target
        if adapter is None:
            continue
        module = graph.modules[adapter[0]]
        cls = module.defs[adapter[1]]
        assert isinstance(cls, ast.ClassDef)
        api = next(
            (
                api
                for prefix, api in GOOGLE_APIS.items()
                for imported in module.imports.values()
                if imported.startswith(prefix)
            ),
            None,
        )
        methods = {}
        for method in sorted(client_methods):
            blob_ops, calls = set(), set()
            for node in _class_reach(module, cls, method):
                for child in ast.walk(node):
                    if not (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)):
                        continue
                    owner = _owner_name(child.func.value)
                    if owner.lstrip("_") == "blobs":
                        blob_ops.add(child.func.attr)
                    if (
                        owner.lstrip("_") == "client"
                        and isinstance(child.func.value, ast.Attribute)
                        and getattr(child.func.value.value, "id", "") == "self"
                    ):
                        calls.add(child.func.attr)
            methods[method] = (frozenset(blob_ops), frozenset(calls))
        agent_io = any(_constant_str(n) in AGENT_IO_KEYS for n in ast.walk(cls))
        found[name] = ProviderFacts(
            f"{adapter[0]}.{adapter[1]}", keys, api, agent_io and api is not None, methods
        )
    return found


def payload_prefix(sources: dict[str, str]) -> str | None:
    """The first path segment of WorkPaths.root in domain/paths.py (payloads live under it)."""
    for node in ast.walk(ast.parse(sources.get("batchline.domain.paths", ""))):
        if isinstance(node, ast.ClassDef) and node.name == "WorkPaths":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "root":
                    found = work_prefixes({"paths": ast.unparse(item)})
                    return next(iter(sorted(found)), None)
    return None


def firestore_queries(sources: dict[str, str]) -> list[Query]:
    queries = []
    for name, source in sources.items():
        tree = ast.parse(source)
        constants = {
            n.targets[0].id: n.value.value
            for n in tree.body
            if isinstance(n, ast.Assign)
            and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Name)
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
        }
        inner: set[int] = set()
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("where", "order_by")
        ]
        for call in calls:
            receiver = call.func.value  # type: ignore[attr-defined]
            if isinstance(receiver, ast.Call):
                inner.add(id(receiver))
        for call in calls:
            if id(call) in inner:
                continue
            queries.append(_query(name, call, constants))
    return queries


def _query(module: str, outer: ast.Call, constants: dict[str, str]) -> Query:
    filters: list[tuple[str, str]] = []
    orders: list[tuple[str, str]] = []
    collection, scope = "?", "COLLECTION"

    def text(node: ast.AST | None) -> str:
        if node is None:
            return "?"
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        return _constant_str(node) or ast.unparse(node)

    current: ast.AST = outer
    while isinstance(current, ast.Call) and isinstance(current.func, ast.Attribute):
        method = current.func.attr
        if method == "where":
            spec = next((k.value for k in current.keywords if k.arg == "filter"), None)
            args = spec.args if isinstance(spec, ast.Call) else current.args
            if len(args) >= 2:
                filters.append((text(args[0]), text(args[1])))
        elif method == "order_by":
            direction = next((k.value for k in current.keywords if k.arg == "direction"), None)
            if direction is None and len(current.args) > 1:
                direction = current.args[1]
            descending = direction is not None and "DESC" in ast.unparse(direction).upper()
            orders.append(
                (
                    text(current.args[0]) if current.args else "?",
                    "DESCENDING" if descending else "ASCENDING",
                )
            )
        elif method in ("collection", "collection_group"):
            collection = text(current.args[0]) if current.args else "?"
            scope = "COLLECTION_GROUP" if method == "collection_group" else "COLLECTION"
            break
        current = current.func.value
    return Query(module, collection, scope, tuple(reversed(filters)), tuple(reversed(orders)))


def work_prefixes(sources: dict[str, str]) -> frozenset[str]:
    """First path segment after `gs://{...work_bucket}/` in the code's f-strings."""
    prefixes: set[str] = set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.JoinedStr):
                continue
            values = node.values
            for i, part in enumerate(values[:-1]):
                if (
                    isinstance(part, ast.FormattedValue)
                    and isinstance(part.value, ast.Attribute)
                    and part.value.attr == "work_bucket"
                    and (after := _constant_str(values[i + 1]))
                ):
                    segment = after.lstrip("/").split("/")[0]
                    if segment:
                        prefixes.add(segment + "/")
    return frozenset(prefixes)


def _module_constants(source: str) -> dict[str, ast.expr]:
    return {
        node.targets[0].id: node.value
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    }


def registry_providers(sources: dict[str, str]) -> frozenset[str]:
    """The keys of domain/providers/registry.py's PROVIDERS: the providers the code runs."""
    value = next(
        (
            node.value
            for node in ast.parse(sources.get(REGISTRY, "")).body
            if isinstance(node, ast.AnnAssign | ast.Assign)
            and "PROVIDERS"
            in [
                getattr(t, "id", "")
                for t in getattr(node, "targets", [getattr(node, "target", None)])
            ]
        ),
        None,
    )
    if not isinstance(value, ast.Dict):
        return frozenset()
    return frozenset(c for k in value.keys if (c := _constant_str(k)) is not None)


def expiry_fields(sources: dict[str, str]) -> dict[str, frozenset[str]]:
    """Firestore collection -> the `datetime` fields of the model stored there that the code
    sets somewhere (a keyword argument of that name outside the models module)."""
    adapter = _module_constants(sources.get("batchline.adapters.firestore", ""))
    models = ast.parse(sources.get("batchline.domain.models", ""))
    timestamps: dict[str, set[str]] = {}
    for node in models.body:
        if isinstance(node, ast.ClassDef) and node.name in STORED_MODELS.values():
            timestamps[node.name] = {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and re.search(r"\bdatetime\b", ast.unparse(item.annotation))
            }
    written = {
        keyword.arg
        for name, source in sources.items()
        if name != "batchline.domain.models"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg
    }
    found = {}
    for constant, model in STORED_MODELS.items():
        collection = _constant_str(adapter.get(constant))
        if collection is not None:
            found[collection] = frozenset(timestamps.get(model, set()) & written)
    return found


def code_facts(sources: dict[str, str] | None = None) -> CodeFacts:
    sources = deployed_sources() if sources is None else sources
    blocks = {
        name: sources.get(f"{DESCRIPTORS}.{name}", "") for name in registry_providers(sources)
    }
    fields, required, numeric = settings_from_config(sources["batchline.config"], blocks)
    graph = CallGraph(sources)
    points = entry_points(sources["main"])
    client_methods = provider_client_methods(sources)
    providers = provider_facts(sources, graph, fields, client_methods)
    uses = {}
    for name in points:
        use = function_use(graph, name, client_methods)
        # What the provider adapters do in the methods this function calls (any provider).
        adapter_ops = {
            op
            for facts in providers.values()
            for method in use.provider_methods
            for op in facts.methods.get(method, (frozenset(), frozenset()))[0]
        }
        uses[name] = replace(use, blob_operations=use.blob_operations | adapter_ops)
    return CodeFacts(
        entry_points=points,
        # Names read through a helper (an optional number, say) are found as settings.
        env_read=env_reads(sources).union(*fields.values()),
        required_env=required,
        numeric_env=numeric,
        settings_env=fields,
        uses=uses,
        queries=firestore_queries(sources),
        work_prefixes=work_prefixes(sources),
        providers=registry_providers(sources),
        expiry_fields=expiry_fields(sources),
        provider_facts=providers,
        payload_prefix=payload_prefix(sources),
        secret_settings=_secret_settings(sources["batchline.config"]),
    )


# -------------------------------------------------------------------------------- checks

FUNCTION = ("google_cloudfunctions2_function", "function")


def _ref(value: Any) -> str:
    return expression(value).strip()


def check_entry_points(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    functions = infra.locals.get("functions", {})
    if not functions:
        yield "infra: local.functions (the functions' table) is missing"
        return
    body = infra.resource(*FUNCTION)
    if _ref(body.get("for_each", "")) != "local.functions":
        yield "infra: google_cloudfunctions2_function.function must iterate over local.functions"
    build = (body.get("build_config") or [{}])[0]
    if _ref(build.get("entry_point", "")) != "each.value.entry_point":
        yield "infra: the functions' build_config.entry_point must be each.value.entry_point"
    deployed = set()
    for name, spec in functions.items():
        entry, trigger = spec.get("entry_point"), spec.get("trigger")
        deployed.add(entry)
        wanted = "http" if trigger == "http" else "cloudevent"
        if trigger not in ("http", "storage", "pubsub"):
            yield f"infra: function {name} has unknown trigger {trigger!r}"
        if entry not in code.entry_points:
            yield f"function {name}: entry point {entry!r} is not a decorated function in functions/main.py (found: {sorted(code.entry_points)})"
        elif code.entry_points[entry] != wanted:
            yield f"function {name}: entry point {entry!r} is {code.entry_points[entry]} in functions/main.py but its {trigger} trigger needs {wanted}"
    for entry in sorted(set(code.entry_points) - deployed):
        yield f"functions/main.py defines entry point {entry!r} that infra does not deploy"


def _environment(infra: InfraFacts) -> dict[str, str]:
    env = dict(infra.locals.get("environment", {}))
    env.update(infra.locals.get("optional_environment", {}))
    return env


def _secret_env(infra: InfraFacts) -> dict[str, str]:
    """Provider with an API key, or `webhook/<name>` -> the variable it is mounted as."""
    found = {
        k: v["api_key_env"]
        for k, v in infra.locals.get("providers", {}).items()
        if v.get("api_key_env")
    }
    found.update({f"webhook/{k}": v["env"] for k, v in _webhook_table(infra).items()})
    return found


def _webhook_table(infra: InfraFacts) -> dict[str, dict[str, Any]]:
    """local.webhooks: name -> {env, functions, enabled} (every one, enabled or not)."""
    table = infra.locals.get("webhooks") or {}
    return {k: v for k, v in table.items() if isinstance(v, dict) and v.get("env")}


def check_webhook_secrets(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    """Each webhook secret (local.webhooks) is a secret setting the code reads, mounted
    into exactly the functions whose code reads that setting, and read by their accounts
    only; and every secret setting of the code is a provider key or one of these."""
    table = _webhook_table(infra)
    functions = infra.locals.get("functions", {})
    by_env = {env: name for name, envs in code.settings_env.items() for env in envs}
    mounted = {v["env"] for v in table.values()}
    provider_keys = {f.api_key_env for f in code.provider_facts.values()}
    for secret in sorted(code.secret_settings):
        envs = code.settings_env.get(secret, frozenset())
        if not envs & mounted and not any(envs & keys for keys in provider_keys):
            yield f"Settings.{secret} is a secret ({' or '.join(sorted(envs))}) that infra neither mounts as a provider key nor lists in local.webhooks"
    for name, entry in sorted(table.items()):
        env = entry["env"]
        setting = by_env.get(env)
        if setting is None or setting not in code.secret_settings:
            yield f"infra: local.webhooks.{name} mounts {env}, which is not a secret setting the code reads (a Settings field with repr=False)"
            continue
        readers = {
            f
            for f, spec in functions.items()
            if setting
            in code.uses.get(
                spec.get("entry_point"), FunctionUse(frozenset(), frozenset(), frozenset(), False)
            ).settings
        }
        given = set(entry.get("functions", []))
        for f in sorted(readers - given):
            yield f"function {f}: its code reads Settings.{setting} ({env}) but local.webhooks.{name} does not mount it there"
        for f in sorted(given - readers):
            yield f"function {f}: local.webhooks.{name} mounts {env} there, but its code never reads Settings.{setting}"
    if (
        _ref(infra.locals.get("webhook_secrets", "")).replace(" ", "")
        != "{fork,winlocal.webhooks:k=>wifw.enabled}"
    ):
        yield "infra: local.webhook_secrets must be the enabled entries of local.webhooks"
    body = infra.resource(*FUNCTION)
    service = (body.get("service_config") or [{}])[0]
    dynamic = {k: v for d in service.get("dynamic", []) for k, v in d.items()}
    mounts = _ref(dynamic.get("secret_environment_variables", {}).get("for_each", ""))
    if "local.webhook_secrets" not in mounts or "contains(v.functions, each.key)" not in mounts:
        yield "infra: each function must mount the webhook secrets whose local.webhook_secrets entry lists it (contains(v.functions, each.key))"
    accessor = infra.resource("google_secret_manager_secret_iam_member", "webhook_accessor")
    grants = _ref(accessor.get("for_each", ""))
    if "local.webhook_secrets" not in grants or "v.functions" not in grants:
        yield "infra: google_secret_manager_secret_iam_member.webhook_accessor must grant each webhook secret to the functions local.webhook_secrets lists, and no others"


def check_environment(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    body = infra.resource(*FUNCTION)
    service = (body.get("service_config") or [{}])[0]
    if _ref(service.get("environment_variables", "")) != "local.function_environment":
        yield "infra: the functions' environment_variables must be local.function_environment"
    env = _environment(infra)
    names = set(env) | set(_secret_env(infra).values())
    for name in sorted(names - code.env_read):
        yield f"infra sets environment variable {name} but the code never reads it"
    for name in sorted(code.env_read - names):
        aliases = [g for g in code.settings_env.values() if name in g and g & names]
        if not LOCAL_ONLY_ENV.search(name) and not aliases:
            yield f"the code reads {name} but infra cannot set it (add it to var.settings and local.optional_environment, or as a secret)"
    for name in sorted(names):
        if LOCAL_ONLY_ENV.search(name):
            yield f"infra sets {name}, which only the local stack may set (it points the code at an emulator)"
    for group in code.required_env:
        if not group & names:
            yield f"the code requires {' or '.join(sorted(group))} but infra does not set it"
    # A provider's location (Vertex AI's region) follows the deployment unless told otherwise.
    for fieldname, variables in sorted(code.settings_env.items()):
        if not fieldname.endswith("_location"):
            continue
        for variable in sorted(variables):
            value = _ref(infra.locals.get("environment", {}).get(variable, ""))
            if "var.region" not in value:
                yield f"{variable} (Settings.{fieldname}) must always be set and default to the deployment's region (var.region) in local.environment; it is {value or 'not set there'}"
    always = set(infra.locals.get("environment", {}))
    for group in code.required_env:
        if group & names and not group & (always | set(_secret_env(infra).values())):
            yield f"{' or '.join(sorted(group))} is required but infra sets it only optionally"
    # Bucket and topic variables must name the resource that plays that part.
    for fieldname, variables in code.settings_env.items():
        for kind, resource in (
            ("_bucket", "google_storage_bucket"),
            ("_topic", "google_pubsub_topic"),
        ):
            if not fieldname.endswith(kind):
                continue
            role = fieldname[: -len(kind)]
            for variable in sorted(variables & set(env)):
                wanted = f"{resource}.{role}.name"
                if _ref(env[variable]) != wanted:
                    yield f"{variable} (Settings.{fieldname}) is {_ref(env[variable])!r} in infra, expected {wanted}"
                if (resource, role) not in infra.resources:
                    yield f"infra has no {resource}.{role} for {variable}"


def check_triggers(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    functions = infra.locals.get("functions", {})
    body = infra.resource(*FUNCTION)
    dynamic = {k: v for d in body.get("dynamic", []) for k, v in d.items()}
    trigger = dynamic.get("event_trigger", {})
    content = (trigger.get("content") or [{}])[0]
    text = " ".join(str(v) for v in content.values())
    if "google.cloud.storage.object.v1.finalized" not in text:
        yield "infra: the storage trigger must use google.cloud.storage.object.v1.finalized"
    if "google.cloud.pubsub.topic.v1.messagePublished" not in text:
        yield "infra: the Pub/Sub triggers must use google.cloud.pubsub.topic.v1.messagePublished"
    retry = _ref(content.get("retry_policy", ""))
    if "RETRY_POLICY_RETRY" not in retry or "RETRY_POLICY_DO_NOT_RETRY" not in retry:
        yield "infra: every event function needs an explicit retry_policy (RETRY or DO_NOT_RETRY)"
    filters = {k: v for d in content.get("dynamic", []) for k, v in d.items()}.get(
        "event_filters", {}
    )
    if "google_storage_bucket.input.name" not in _ref(filters.get("for_each", "")):
        yield "infra: submit's storage trigger must filter on google_storage_bucket.input"
    topic_ids = infra.locals.get("topic_ids", {})
    for name, spec in functions.items():
        if spec.get("trigger") == "pubsub":
            topic = spec.get("topic")
            if _ref(topic_ids.get(topic, "")) != f"google_pubsub_topic.{topic}.id":
                yield f"function {name} is triggered by topic {topic!r}, which local.topic_ids does not map to google_pubsub_topic.{topic}"
        if spec.get("trigger") == "storage" and spec.get("entry_point") != "submit":
            yield f"function {name}: only submit handles object-finalized events"
    # The poll topic is fed by the scheduler and triggers the function whose code polls.
    scheduler = infra.resource("google_cloud_scheduler_job", "poll")
    target = (scheduler.get("pubsub_target") or [{}])[0]
    if _ref(target.get("topic_name", "")) != "google_pubsub_topic.poll.id":
        yield "infra: the scheduler job must publish to google_pubsub_topic.poll"
    consumers = {
        spec.get("topic"): spec.get("entry_point")
        for spec in functions.values()
        if spec.get("trigger") == "pubsub"
    }
    for topic in ("poll", "collect"):
        if consumers.get(topic) != topic:
            yield f"infra: the {topic} topic must trigger the {topic} entry point (it triggers {consumers.get(topic)!r})"
    defaults = variable_defaults(infra, "functions")
    for name, spec in functions.items():
        if spec.get("trigger") != "http" and "retry" not in (defaults.get(name) or {}):
            yield f"infra: var.functions.{name} has no explicit retry setting"


#: The bucket holding jobs' working data, which a function reached over HTTP may not read:
#: a caller could get it to read another job's. Output it may read: serving a job's
#: results is what the API is for (its code follows the job record's own output prefix).
EDGE_UNREADABLE_BUCKETS = frozenset({"work"})
#: Buckets where a function reached over HTTP may create objects only under a prefix.
EDGE_PRIVATE_BUCKETS = frozenset({"work", "output"})


def check_access(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    functions = infra.locals.get("functions", {})
    access = infra.locals.get("access", {})
    for name, spec in functions.items():
        entry = spec.get("entry_point")
        use = code.uses.get(entry)
        grant = access.get(name)
        if use is None:
            continue
        if grant is None:
            yield f"infra: local.access has no entry for function {name}"
            continue
        published = {f[: -len("_topic")] for f in use.published}
        granted = set(grant.get("publish", []))
        for topic in sorted(published - granted):
            yield f"function {name}: its code publishes to the {topic} topic but infra does not let it"
        for topic in sorted(granted - published):
            yield f"function {name}: infra lets it publish to the {topic} topic, which its code never does"
        if bool(grant.get("provider_keys")) != use.uses_providers:
            yield (
                f"function {name}: its code {'calls' if use.uses_providers else 'never calls'} a provider "
                f"but infra {'does not mount' if use.uses_providers else 'mounts'} the API keys"
            )
        read, create = set(grant.get("read", [])), set(grant.get("create", []))
        if spec.get("trigger") == "http":
            # Reached by callers: what it can read, a caller may get it to read.
            for bucket in sorted(read & EDGE_UNREADABLE_BUCKETS):
                yield f"function {name}: reached over HTTP, it must not read the {bucket} bucket (other jobs' data)"
            under = grant.get("create_under") or {}
            for bucket in sorted((create & EDGE_PRIVATE_BUCKETS) - set(under)):
                yield f"function {name}: reached over HTTP, its create access on the {bucket} bucket must be limited to a prefix (local.access.{name}.create_under)"
        named = set(grant.get("names_only", []))
        for bucket in sorted(
            {f[: -len("_bucket")] for f in use.settings if f.endswith("_bucket")}
            - read
            - create
            - named
        ):
            yield f"function {name}: its code uses the {bucket} bucket but infra grants it nothing there"
        for operation in sorted(use.blob_operations):
            need = BLOB_OPERATIONS.get(operation)
            if need is None:
                yield f"function {name}: its code calls BlobStore.{operation}, which the granted roles (objectViewer, objectCreator) may not allow"
            elif need == "read" and not read:
                yield f"function {name}: its code reads blobs ({operation}) but infra grants it no read access"
            elif need == "create" and not create:
                yield f"function {name}: its code writes blobs ({operation}) but infra grants it no create access"
    body = infra.resource(*FUNCTION)
    service = (body.get("service_config") or [{}])[0]
    dynamic = {k: v for d in service.get("dynamic", []) for k, v in d.items()}
    secret = dynamic.get("secret_environment_variables", {})
    content = (secret.get("content") or [{}])[0]
    if _ref(content.get("key", "")) != "secret_environment_variables.value.env":
        yield "infra: secret environment variables must be named by local.providers[*].api_key_env (local.api_key_secrets[*].env)"


def _index_fields(index: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(f[0]), str(f[1])) for f in index.get("fields", [])]


def _field_overrides(
    infra: InfraFacts,
) -> tuple[dict[tuple[str, str], frozenset[tuple[str, str]]], list[str]]:
    """(collection group, field) -> the (scope, mode) single-field indexes it keeps, for
    every field infra overrides (TTL fields as if retention were on); and what the check
    cannot read."""
    overrides: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
    problems = []
    for name, entry in infra.locals.get("firestore_field_indexes", {}).items():
        kept = frozenset((str(i[0]), str(i[1])) for i in entry.get("indexes", []))
        for scope, mode in sorted(kept):
            if scope not in SCOPES or mode not in INDEX_MODES:
                problems.append(
                    f"infra: local.firestore_field_indexes.{name} has index [{scope}, {mode}]; scopes are {SCOPES}, modes {INDEX_MODES}"
                )
        overrides[(str(entry.get("collection")), str(entry.get("field")))] = kept
    ttl = infra.resource("google_firestore_field", "ttl")
    if ttl and "index_config" in ttl:
        if ttl["index_config"] != [{}]:
            problems.append(
                "infra: google_firestore_field.ttl may only turn indexing off (index_config {})"
            )
        ttl_field, collections, _ = _ttl_policies(infra)
        for collection in collections:
            if (collection, ttl_field) in overrides:
                problems.append(
                    f"infra: {collection}.{ttl_field} is both a TTL field and in local.firestore_field_indexes; one google_firestore_field would undo the other"
                )
            overrides[(collection, ttl_field)] = frozenset()
    for name in infra.of_type("google_firestore_field"):
        if name not in ("index", "ttl"):
            problems.append(
                f"infra: google_firestore_field.{name} is neither the index overrides nor the TTL policies, which are all the check can read"
            )
    index = infra.resource("google_firestore_field", "index")
    if overrides and index and _ref(index.get("for_each", "")) != "local.firestore_field_indexes":
        problems.append(
            "infra: google_firestore_field.index must iterate over local.firestore_field_indexes"
        )
    return overrides, problems


def check_indexes(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    indexes = infra.locals.get("firestore_indexes", {})
    overrides, problems = _field_overrides(infra)
    yield from problems
    for query in code.queries:
        if not query.needs_composite():
            # Single-field indexes serve it: Firestore keeps them for collection scope unless
            # the field is overridden, and for collection-group scope only when declared.
            for name, modes in query.single_field_needs():
                kept = overrides.get((query.collection, name), AUTOMATIC_INDEXES)
                if any((query.scope, mode) in kept for mode in modes):
                    continue
                wanted = f"a {query.scope} {' or '.join(modes)} single-field index on {query.collection}.{name}"
                if (query.collection, name) in overrides:
                    yield f"{query.module}: the query on {query.collection} ({query.filters}) needs {wanted}, which infra's override of that field does not keep"
                else:
                    yield f"{query.module}: the collection-group query on {query.collection} ({query.filters}) needs {wanted}, which Firestore does not keep by default and infra does not declare (local.firestore_field_indexes)"
            continue
        equality = {f for f, op in query.filters if op in EQUALITY_OPS}
        ordered = [
            *[
                (f, "ASCENDING")
                for f, op in query.filters
                if op not in EQUALITY_OPS and f not in dict(query.orders)
            ],
            *query.orders,
        ]
        served = False
        for index in indexes.values():
            if (
                index.get("collection") != query.collection
                or index.get("scope", "COLLECTION") != query.scope
            ):
                continue
            fields = _index_fields(index)
            head = {f for f, _ in fields[: len(equality)]}
            tail = [(f, d) for f, d in fields[len(equality) :]]
            if head == equality and tail[: len(ordered)] == ordered:
                served = True
        if not served:
            wanted_fields = [*[(f, "ASCENDING") for f in sorted(equality)], *ordered]
            yield f"{query.module}: the query on {query.collection} ({query.filters}, order {query.orders}) needs a composite index {wanted_fields} that infra does not declare"
    resource = infra.resource("google_firestore_index", "composite")
    if indexes and _ref(resource.get("for_each", "")) != "local.firestore_indexes":
        yield "infra: google_firestore_index.composite must iterate over local.firestore_indexes"


TTL_SWITCH = re.compile(r"(?P<switch>\S+) == null \? \[\] : \[(?P<names>[^\]]*)\]")


def _ttl_policies(infra: InfraFacts) -> tuple[str, list[str], str | None]:
    """local.ttl as (field, collections it puts policies on, the expression that turns
    them on when not null); the expression is None if it is not of that form."""
    ttl = infra.locals.get("ttl") or {}
    match = TTL_SWITCH.fullmatch(_ref(ttl.get("collections", "")))
    if not match:
        return str(ttl.get("field")), [], None
    return str(ttl.get("field")), re.findall(r'"([^"]+)"', match["names"]), match["switch"]


def check_retention(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    stamped = {c: fields for c, fields in code.expiry_fields.items() if fields}
    variables = code.settings_env.get(RETENTION_SETTING, frozenset())
    if "ttl" not in infra.locals:
        if stamped:
            yield f"the code stamps expiry timestamps ({stamped}) but infra declares no TTL policy (local.ttl)"
        return
    ttl_field, collections, switch = _ttl_policies(infra)
    if switch is None:
        yield "infra: local.ttl.collections must be `<retention> == null ? [] : [collections]`, so that the TTL policies follow the retention setting"
        return
    for collection in collections:
        fields = code.expiry_fields.get(collection)
        if fields is None:
            yield f"infra puts a TTL policy on the {collection} collection group, which the code does not store"
        elif ttl_field not in fields:
            yield f"infra's TTL policy on {collection} is on {ttl_field}, but the code stamps {sorted(fields) or 'no timestamp'} on {collection} documents"
    for collection, fields in sorted(stamped.items()):
        if collection not in collections:
            yield f"the code stamps {sorted(fields)} on {collection} documents but infra puts no TTL policy on {collection}"
    # The code stamps expiry only when its retention variable is set: exactly when the
    # policies exist, or finished jobs are kept (or stamped) with nothing to delete them.
    always = infra.locals.get("environment", {})
    optional = infra.locals.get("optional_environment", {})
    set_by_infra = sorted(variables & (set(always) | set(optional)))
    if not variables:
        yield f"infra has TTL policies but the code has no Settings.{RETENTION_SETTING} to stamp {ttl_field}"
    elif not set_by_infra:
        yield f"infra never sets {' or '.join(sorted(variables))}, so the code stamps no {ttl_field} for the TTL policies to act on"
    for name in set_by_infra:
        if name in always:
            yield f"{name} is always set, but the TTL policies exist only when {switch} is not null"
        elif _ref(optional[name]) != switch:
            yield f"{name} is set from {_ref(optional[name])} but the TTL policies exist when {switch} is not null: both must follow one variable"
    resource = infra.resource("google_firestore_field", "ttl")
    if _ref(resource.get("for_each", "")) != "toset(local.ttl.collections)":
        yield "infra: google_firestore_field.ttl must iterate over toset(local.ttl.collections)"
    if _ref(resource.get("field", "")) != "local.ttl.field":
        yield "infra: google_firestore_field.ttl must configure local.ttl.field"
    if resource.get("ttl_config") != [{}]:
        yield "infra: google_firestore_field.ttl needs an empty ttl_config block (the TTL policy)"


def check_providers(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    declared = infra.locals.get("providers", {})
    known = set(declared)
    for provider in sorted(code.providers - known):
        yield f"the code runs provider {provider} but infra cannot enable it (local.providers)"
    for provider in sorted(known - code.providers):
        yield f"infra can enable provider {provider}, which the code does not run"
    for provider in sorted(code.providers - set(code.provider_facts)):
        yield f"the code runs provider {provider} but the check finds no client for it (make_client in {ADAPTERS}.{provider})"
    accepted: set[str] = set()
    for validation in infra.variables.get("enabled_providers", {}).get("validation", []):
        for listed in re.findall(r"contains\(\[([^\]]*)\]", str(validation.get("condition", ""))):
            accepted |= set(re.findall(r'"([^"]+)"', listed))
    if accepted != known:
        yield f"var.enabled_providers accepts {sorted(accepted)}, but infra knows the providers {sorted(known)}"
    # The code's list of enabled providers is infra's var.enabled_providers, always set.
    for variable in sorted(code.settings_env.get("enabled_providers", frozenset())):
        value = _ref(infra.locals.get("environment", {}).get(variable, ""))
        if "var.enabled_providers" not in value:
            yield f"{variable} (Settings.enabled_providers) must always be set from var.enabled_providers in local.environment; it is {value or 'not set there'}"
    secrets = _ref(infra.locals.get("api_key_secrets", ""))
    if "var.enabled_providers" not in secrets or "api_key_env != null" not in secrets:
        yield "infra: local.api_key_secrets must hold the providers in var.enabled_providers that have an api_key_env"
    for provider in sorted(known & set(code.provider_facts)):
        facts, entry = code.provider_facts[provider], declared[provider]
        env, service = entry.get("api_key_env"), entry.get("service")
        if facts.api_key_env and env not in facts.api_key_env:
            yield f"provider {provider}: its client reads its API key from {' or '.join(sorted(facts.api_key_env))}, but infra mounts {env or 'no key'} (local.providers.{provider}.api_key_env)"
        if not facts.api_key_env and env:
            yield f"provider {provider}: its client reads no API key, but infra creates and mounts a {env} secret for it (local.providers.{provider}.api_key_env must be null)"
        if facts.google_api != service:
            yield f"provider {provider}: its adapter calls {facts.google_api or 'no Google API'} with the functions' own credentials, but local.providers.{provider}.service is {service!r}"


def _resolve_locals(text: str, infra: InfraFacts, depth: int = 2) -> str:
    """`text` with each `local.NAME` replaced by that local's expression (`depth` levels)."""
    for _ in range(depth):
        text = re.sub(
            r"\blocal\.(\w+)\b",
            lambda m: f"({_ref(infra.locals[m[1]])})" if m[1] in infra.locals else m[0],
            text,
        )
    return text


def _switch(body: dict[str, Any]) -> str:
    return _ref(body.get("count", "")) + _ref(body.get("for_each", ""))


def _strongest_role(api: str, calls: Iterable[str]) -> tuple[str | None, set[str]]:
    """The role the calls need (the strongest of theirs), and the calls no role lists."""
    ranked = list(GOOGLE_API_ROLES.get(api, {}).items())
    needed, unknown = None, set()
    for call in calls:
        ranks = [i for i, (_, listed) in enumerate(ranked) if call in listed]
        if not ranks:
            unknown.add(call)
        elif needed is None or ranks[0] > needed:
            needed = ranks[0]
    return (ranked[needed][0] if needed is not None else None), unknown


def check_google_providers(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    """Providers that are Google APIs called as the functions' service accounts: the API,
    each function's role, and the service agent's access to the work bucket; all of it
    only when the provider is in var.enabled_providers."""
    declared = infra.locals.get("providers", {})
    for provider, facts in sorted(code.provider_facts.items()):
        api = facts.google_api
        if api is None or provider not in declared:
            continue
        # What a resource's count or for_each holds, locals resolved, when it follows the
        # provider being in var.enabled_providers.
        enabled = f'contains(var.enabled_providers, "{provider}")'
        service = infra.resource("google_project_service", provider)
        if _ref(service.get("service", "")) not in (api, f"local.providers.{provider}.service"):
            yield f"infra does not enable {api} for provider {provider} (google_project_service.{provider})"
        elif enabled not in _resolve_locals(_switch(service), infra):
            yield f"infra: google_project_service.{provider} must exist only when var.enabled_providers holds {provider}"
        # Each function's role: the strongest its provider calls need, exactly.
        roles = GOOGLE_API_ROLES.get(api, {})
        for method, (_, made) in sorted(facts.methods.items()):
            _, unknown = _strongest_role(api, made)
            for call in sorted(unknown):
                yield f"provider {provider}: {facts.adapter}.{method} calls {call}, whose role the check does not know (GOOGLE_API_ROLES)"
        functions = infra.locals.get("functions", {})
        access = infra.locals.get("access", {})
        for name, spec in functions.items():
            use = code.uses.get(spec.get("entry_point"))
            if use is None or name not in access:
                continue
            none: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
            calls = {c for m in use.provider_methods for c in facts.methods.get(m, none)[1]}
            needed, _ = _strongest_role(api, calls)
            level = access[name].get(provider)
            granted = next((r for r in roles if r.rsplit(".", 1)[-1] == level), None)
            if level is not None and granted is None:
                yield f"infra: local.access.{name}.{provider} is {level!r}, not one of {[r.rsplit('.', 1)[-1] for r in roles]}"
            elif granted != needed:
                yield f"function {name}: its code calls {sorted(calls) or 'nothing'} on {api}, which needs {needed or 'no role'}, but infra grants {granted or 'none'} (local.access.{name}.{provider})"
        for role in roles:
            level = role.rsplit(".", 1)[-1]
            grant = infra.resource("google_project_iam_member", f"{provider}_{level}")
            switch = _resolve_locals(_switch(grant), infra)
            if grant.get("role") != role or f'a.{provider} == "{level}"' not in switch:
                yield f"infra: google_project_iam_member.{provider}_{level} must grant {role} to the functions whose local.access.{provider} is {level!r}"
            elif enabled not in switch:
                yield f"infra: google_project_iam_member.{provider}_{level} must exist only when var.enabled_providers holds {provider}"
        if not facts.agent_io:
            continue
        # The jobs read the staged payload and write their output beside it, in the work
        # bucket, as the API's service agent.
        agent = infra.resource("google_project_service_identity", provider)
        if _ref(agent.get("service", "")) not in (api, f"local.providers.{provider}.service"):
            yield f"provider {provider}: its jobs read and write the work bucket as the {api} service agent, which infra does not declare (google_project_service_identity.{provider})"
            continue
        agent_ref = f"google_project_service_identity.{provider}"
        grants = {
            body.get("role"): body
            for body in infra.of_type("google_storage_bucket_iam_member").values()
            if agent_ref in _ref(body.get("member", ""))
            and _ref(body.get("bucket", "")) == "google_storage_bucket.work.name"
        }
        for role, doing in (
            ("roles/storage.objectViewer", "read its input from"),
            ("roles/storage.objectCreator", "write its output to"),
        ):
            body = grants.get(role)
            if body is None:
                yield f"provider {provider}: its jobs {doing} the work bucket as the {api} service agent, but infra does not grant it {role} there"
                continue
            if enabled not in _resolve_locals(_switch(body), infra):
                yield f"infra: the {provider} service agent's {role} must exist only when var.enabled_providers holds {provider}"
            for condition in body.get("condition", []):
                text = _resolve_locals(str(condition.get("expression", "")), infra)
                if code.payload_prefix and f"/objects/{code.payload_prefix}" not in text:
                    yield f"provider {provider}: the service agent's {role} is conditioned on {text!r}, which does not cover {code.payload_prefix}, where the code stages chunk payloads"


def check_work_lifecycle(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    work = infra.resource("google_storage_bucket", "work")
    covered: set[str] = set()
    for rule in work.get("lifecycle_rule", []):
        action = (rule.get("action") or [{}])[0]
        condition = (rule.get("condition") or [{}])[0]
        if action.get("type") == "Delete":
            covered.update(condition.get("matches_prefix", []))
    for prefix in sorted(code.work_prefixes - covered):
        yield f"the code writes under {prefix} in the work bucket but no lifecycle rule deletes it"
    bundle = expression(infra.locals.get("bundle", {}).get("name", ""))
    for prefix in code.work_prefixes:
        if f'"{prefix}' in bundle or bundle.startswith(prefix):
            yield f"the function sources share the {prefix} prefix with job data (the lifecycle would delete them)"


def _literal_members(body: dict[str, Any]) -> list[str]:
    members = body.get("members")
    values = members if isinstance(members, list) else [body.get("member", "")]
    return [str(v) for v in values]


def check_iam(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    for (kind, name), body in infra.resources.items():
        if "_iam_" not in kind:
            continue
        role = body.get("role", "")
        if not isinstance(role, str) or role.startswith("${") or not role.startswith("roles/"):
            yield f"{kind}.{name}: role must be a literal roles/... (got {role!r})"
        elif role in PRIMITIVE_ROLES:
            yield f"{kind}.{name}: grants the primitive role {role}"
        if kind == "google_project_iam_member" and role in (
            "roles/run.invoker",
            "roles/cloudfunctions.invoker",
        ):
            yield f"{kind}.{name}: grants {role} on the whole project instead of one service"
        for member in _literal_members(body):
            for public in PUBLIC_MEMBERS:
                if public in member:
                    yield f"{kind}.{name}: grants {role} to {public}"
            source = re.fullmatch(r"\$\{each\.(value|key)\}", member)
            if source:
                variable = re.fullmatch(r"\$\{toset\(var\.(\w+)\)\}", str(body.get("for_each", "")))
                if not variable:
                    yield f"{kind}.{name}: members come from {body.get('for_each')!r}, which the check cannot vouch for"
                    continue
                yield from _variable_refuses_public(infra, variable.group(1), f"{kind}.{name}")
    api = infra.resource("google_cloud_run_v2_service_iam_member", "api_invoker")
    if api and '["api"]' not in _ref(api.get("name", "")).replace("'", '"'):
        yield "infra: the api invokers must be granted on the api service only"


def _variable_refuses_public(infra: InfraFacts, name: str, where: str) -> Iterator[str]:
    variable = infra.variables.get(name, {})
    patterns = []
    for validation in variable.get("validation", []):
        patterns += re.findall(r'regex\("((?:[^"\\]|\\.)*)"', str(validation.get("condition", "")))
    if not patterns:
        yield f"{where}: var.{name} has no validation that refuses allUsers/allAuthenticatedUsers"
        return
    for public in PUBLIC_MEMBERS:
        if all(re.search(p.replace("\\\\", "\\"), public) for p in patterns):
            yield f"{where}: var.{name} accepts {public}"


def check_timeouts(infra: InfraFacts, code: CodeFacts) -> Iterator[str]:
    functions = infra.locals.get("functions", {})
    defaults = variable_defaults(infra, "functions")
    settings = variable_defaults(infra, "settings")
    timeouts = {}
    for name, spec in functions.items():
        config = defaults.get(name) or {}
        timeout = config.get("timeout")
        if timeout is None:
            yield f"infra: var.functions.{name} has no default timeout"
            continue
        timeouts[name] = timeout
        limit = HTTP_TIMEOUT_LIMIT if spec.get("trigger") == "http" else EVENT_TIMEOUT_LIMIT
        if timeout > limit:
            yield f"function {name}: default timeout {timeout} s is over the {limit} s limit"
    budget, hold = settings.get("work_budget_seconds"), settings.get("max_hold_seconds")
    # Functions whose code works against the budget (submit, poll, and api, which plans
    # and submits a job it accepts) must outlast it.
    planners = [
        timeouts[name]
        for name, spec in functions.items()
        if name in timeouts
        and "work_budget_seconds" in getattr(code.uses.get(spec.get("entry_point")), "settings", ())
    ]
    if budget is None or hold is None:
        yield "infra: var.settings must default work_budget_seconds and max_hold_seconds"
        return
    if planners and budget + 60 > min(planners):
        yield f"work budget {budget} s does not leave 60 s of the shortest timeout of the functions that use it ({min(planners)} s)"
    if timeouts and hold <= max(timeouts.values()):
        yield f"max hold {hold} s does not outlive the longest function timeout ({max(timeouts.values())} s)"
    for name in ("functions", "settings"):
        if not infra.variables.get(name, {}).get("validation"):
            yield f"infra: var.{name} has no validation blocks"


CHECKS = (
    check_entry_points,
    check_webhook_secrets,
    check_environment,
    check_triggers,
    check_access,
    check_providers,
    check_google_providers,
    check_indexes,
    check_retention,
    check_work_lifecycle,
    check_iam,
    check_timeouts,
)


def check(infra: InfraFacts, code: CodeFacts) -> list[str]:
    return [problem for run in CHECKS for problem in run(infra, code)]


#: Environment variables Settings.from_env parses as JSON objects.
JSON_SETTINGS = frozenset({"BATCHLINE_QUOTAS"})


def sample_environment(infra: InfraFacts, numeric: Iterable[str]) -> dict[str, str]:
    """What the functions' environment looks like, with made-up values of the right kind."""
    numbers = set(numeric)
    env = {
        name: ("60" if name in numbers else f"sample-{name.lower()}")
        for name in _environment(infra)
    }
    # A list of providers (from var.enabled_providers): the ones infra can enable.
    providers = ",".join(sorted(infra.locals.get("providers", {})))
    for name, value in _environment(infra).items():
        if "var.enabled_providers" in _ref(value):
            env[name] = providers
    env.update({name: "sk-sample" for name in _secret_env(infra).values()})
    # Settings parsed as JSON at start-up: an empty object (every default).
    env.update({name: "{}" for name in JSON_SETTINGS if name in env})
    return env
