"""infra/*.tf against the Google provider's own schema, offline.

`terraform validate` needs the provider's binary, which this machine cannot download. Its
schema is on npm all the same: @cdktf/provider-google and @cdktf/provider-google-beta
(PACKAGES, generated from provider 6.50.0) ship a jsii assembly, `.jsii`, a JSON file
describing every resource, data source and the provider's own configuration.

How the assembly maps to Terraform (read from it, not guessed):
- a class whose base is cdktf.TerraformResource, TerraformDataSource or TerraformProvider
  is one resource type, data source or the provider; its summary links to its registry
  page and names it: `Represents a {@link .../6.50.0/docs/resources/storage_bucket
  google_storage_bucket}`;
- its initializer's `config` parameter is an interface with one property per argument and
  nested block; the Terraform name is the anchor of the property's registry link
  (`...storage_bucket#uniform_bucket_level_access StorageBucket#uniform_bucket_level_access`),
  in its summary, remarks or custom docs (camelCase does not say: `detectMd5Hash` is
  detect_md5hash, `buildAttribute` is build);
- a property typed by another struct interface (`StorageBucketLifecycleRule`) is a nested
  block: that struct alone is a block written at most once (max_items 1), a list of them
  a repeatable block; a property of any other type is an argument;
- required means the property is not `optional`. Attributes Terraform computes and the
  user cannot set are in no config interface, so setting one is reported.

`check(files, schemas)` reports, for every resource and data block whose provider (its
`provider` meta-argument, else the type's prefix, through required_providers) is one of
PACKAGES, and for those providers' own blocks: a type the provider does not have, an
argument or block (literal or `dynamic`, whose content is checked as the block) it does
not know, an argument written as a block or a block as an argument, a max-one block
written twice, and a missing required argument or block. Meta-arguments are skipped.

`load_schemas()` runs `npm pack` for each package (exact version, --ignore-scripts), checks
the tarball's sha512 against the pinned one, and keeps only `.jsii` under CACHE (ignored by
git). It reduces each assembly to what the check needs, about 1 MB of JSON named by this
file's digest (a change here rebuilds it), so that a warm run reads only those.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import consistency as c

CACHE = c.ROOT / ".cache" / "provider-schema"
NPM_TIMEOUT = 600
PROVIDER_VERSION = "6.50.0"


@dataclass(frozen=True)
class Package:
    source: str  # the provider's source address in required_providers
    npm_name: str
    version: str
    integrity: str  # the tarball's sha512, as the npm registry records it

    @property
    def name(self) -> str:
        """The provider's type name: google, google-beta."""
        return self.source.rpartition("/")[2]

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}"


# 16.12.1 is the last release of both (cdktf's prebuilt providers stopped at provider 6.50.0).
PACKAGES = (
    Package(
        "hashicorp/google",
        "@cdktf/provider-google",
        "16.12.1",
        "sha512-KqNA/5RiFT07r0PSZ6/07cJ2zESUgbj1JchVj21iBFBZVUbD+578xA/k8eq/r0cbyEgLmg9eYWeVslaYah4DCQ==",
    ),
    Package(
        "hashicorp/google-beta",
        "@cdktf/provider-google-beta",
        "16.12.1",
        "sha512-ip0dXu0ZrsyMgcoGNfkJCYG8PFjNtfb2wkz4Sw7IU09rQMK/A6++SwkmFHl8wJ8KlwMvd2w4tNXfErIbWWWqag==",
    ),
)

# Terraform's, not the provider's: never in a schema. `alias` and `version` on a provider.
META_ARGUMENTS = {
    "resource": frozenset(
        ("count", "for_each", "provider", "depends_on", "lifecycle", "provisioner", "connection")
    ),
    "data": frozenset(("count", "for_each", "provider", "depends_on", "lifecycle")),
    "provider": frozenset(("alias", "version")),
}
KINDS = {
    "cdktf.TerraformResource": "resource",
    "cdktf.TerraformDataSource": "data",
    "cdktf.TerraformProvider": "provider",
}
REGISTRY = r"\{@link https://registry\.terraform\.io/providers/hashicorp/([a-z-]+)/([0-9.]+)/docs"
TYPE_LINK = re.compile(REGISTRY + r"(?:/(resources|data-sources)/[a-z0-9_]+)? ([a-z0-9_-]+)\}")
ARGUMENT_LINK = re.compile(REGISTRY + r"[a-z0-9_/-]*#([a-z0-9_]+) \w+#[a-z0-9_]+\}")


class SchemaUnavailable(RuntimeError):
    """npm is missing, or could not fetch a package, or the package is not the pinned one."""


# ------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Block:
    """A block's schema: its arguments (name -> required) and nested blocks."""

    arguments: Mapping[str, bool]
    blocks: Mapping[str, NestedBlock]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Block:
        return cls(
            arguments=data["arguments"],
            blocks={
                name: NestedBlock(Block.from_json(b["block"]), b["required"], b["single"])
                for name, b in data["blocks"].items()
            },
        )


@dataclass(frozen=True)
class NestedBlock:
    block: Block
    required: bool
    single: bool  # at most one (max_items 1)


@dataclass(frozen=True)
class Schema:
    """One provider's schema, as reduced from its assembly (`reduce`)."""

    name: str  # google, google-beta
    version: str  # the provider's, 6.50.0
    reduced: Mapping[str, Any]

    def block(self, keyword: str, kind: str) -> Block | None:
        """The schema of a `resource` or `data` type, or of the `provider` block."""
        if keyword == "provider":
            return Block.from_json(self.reduced["provider"])
        data = self.reduced[keyword].get(kind)
        return None if data is None else Block.from_json(data)

    def has(self, keyword: str, kind: str) -> bool:
        return kind in self.reduced[keyword]


def _struct(types: Mapping[str, Any], type_ref: Mapping[str, Any]) -> tuple[str, bool] | None:
    """(fqn, single) when a property's type is a struct interface (a nested block): alone
    (single), or in a list (the union with cdktf.IResolvable that cdktf gives lists)."""
    if "fqn" in type_ref:
        found = types.get(type_ref["fqn"], {})
        return (type_ref["fqn"], True) if found.get("datatype") else None
    if "collection" in type_ref:
        inner = _struct(types, type_ref["collection"]["elementtype"])
        return (inner[0], False) if inner else None
    if "union" in type_ref:
        found = [s for t in type_ref["union"]["types"] if (s := _struct(types, t))]
        return found[0] if found else None
    return None


def _doc_texts(docs: Any) -> Iterator[str]:
    if isinstance(docs, str):
        yield docs
    elif isinstance(docs, dict):
        for value in docs.values():
            yield from _doc_texts(value)


def _reduce_block(types: Mapping[str, Any], fqn: str, package: Package) -> dict[str, Any]:
    interface = types[fqn]
    if set(interface.get("interfaces", ())) - {"cdktf.TerraformMetaArguments"}:
        raise ValueError(f"{fqn} inherits properties this reduction does not read")
    arguments: dict[str, bool] = {}
    blocks: dict[str, Any] = {}
    for prop in interface.get("properties", []):
        links = {
            m.groups()
            for text in _doc_texts(prop.get("docs", {}))
            for m in ARGUMENT_LINK.finditer(text)
        }
        if not links and re.fullmatch(r"[a-z]+", prop["name"]):
            # A `*/` in the provider's description cut the docs short (pubsub's
            # javascript_udf `code`); a one-word lowercase name is the same in both.
            name = prop["name"]
        elif len(links) == 1 and next(iter(links))[:2] == (package.name, PROVIDER_VERSION):
            name = next(iter(links))[2]
        else:
            raise ValueError(f"{fqn}.{prop['name']}: expected one {package.name} link, got {links}")
        required = not prop.get("optional", False)
        nested = _struct(types, prop["type"])
        if nested is None:
            arguments[name] = required
        else:
            block = _reduce_block(types, nested[0], package)
            blocks[name] = {"required": required, "single": nested[1], "block": block}
    return {"arguments": arguments, "blocks": blocks}


def reduce(assembly: Mapping[str, Any], package: Package) -> dict[str, Any]:
    """What the check needs from a jsii assembly: each resource's and data source's
    block schema by Terraform type, and the provider block's."""
    if (assembly.get("name"), assembly.get("version")) != (package.npm_name, package.version):
        raise ValueError(f"the assembly is {assembly.get('name')}@{assembly.get('version')}")
    types = assembly["types"]
    reduced: dict[str, Any] = {"resource": {}, "data": {}, "provider": None}
    for fqn, found in types.items():
        keyword = KINDS.get(found.get("base", ""))
        if keyword is None:
            continue
        link = TYPE_LINK.search(found["docs"]["summary"])
        if not link or link.group(1, 2) != (package.name, PROVIDER_VERSION):
            raise ValueError(f"{fqn}: no {package.name} {PROVIDER_VERSION} registry link")
        (config,) = (p for p in found["initializer"]["parameters"] if p["name"] == "config")
        block = _reduce_block(types, config["type"]["fqn"], package)
        if keyword == "provider":
            reduced["provider"] = block
        else:
            reduced[keyword][link.group(4)] = block
    if not reduced["resource"] or not reduced["data"] or reduced["provider"] is None:
        raise ValueError(f"{package.npm_name}: found no resources, data sources or provider")
    return reduced


# ------------------------------------------------------------------------- npm and cache


def fetch_assembly(package: Package, cache: Path = CACHE) -> Path:
    """The package's `.jsii`, from the cache or else `npm pack`ed into it."""
    target = cache / f"{package.stem}.jsii"
    if target.exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise SchemaUnavailable("npm is not installed (it fetches the provider's schema)")
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{package.npm_name}@{package.version}"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [npm, "pack", spec, "--ignore-scripts", "--loglevel=error"]
        try:
            subprocess.run(
                [*command, "--pack-destination", tmp],
                check=True,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = (getattr(exc, "stderr", None) or "").strip()[-2000:]
            raise SchemaUnavailable(f"npm pack {spec} failed: {exc}\n{detail}") from exc
        (tarball,) = Path(tmp).glob("*.tgz")
        digest = hashlib.sha512()
        with tarball.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        integrity = "sha512-" + base64.b64encode(digest.digest()).decode()
        if integrity != package.integrity:
            raise SchemaUnavailable(f"{spec}: tarball {integrity}, pinned {package.integrity}")
        extracted = Path(tmp) / "assembly.jsii"
        with tarfile.open(tarball) as archive:
            member = archive.extractfile("package/.jsii")
            if member is None:
                raise SchemaUnavailable(f"{spec} has no .jsii")
            with extracted.open("wb") as out:
                shutil.copyfileobj(member, out)
        extracted.replace(target)
    return target


def _code_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def load_schema(package: Package, cache: Path = CACHE) -> Schema:
    """The package's reduced schema, from the cache or else from its assembly."""
    reduced_path = cache / f"{package.stem}.{_code_digest()}.json"
    if not reduced_path.exists():
        assembly = orjson.loads(fetch_assembly(package, cache).read_bytes())
        reduced = reduce(assembly, package)
        for stale in cache.glob(f"{package.stem}.*.json"):
            stale.unlink()
        partial = reduced_path.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(reduced))
        partial.replace(reduced_path)
    return Schema(package.name, PROVIDER_VERSION, orjson.loads(reduced_path.read_bytes()))


def load_schemas(cache: Path = CACHE) -> dict[str, Schema]:
    """Each package's schema by provider source address (hashicorp/google, ...)."""
    return {package.source: load_schema(package, cache) for package in PACKAGES}


# ------------------------------------------------------------------------------ checking


@dataclass(frozen=True)
class Finding:
    file: str  # under infra/
    address: str  # google_storage_bucket.work, data.google_project.this, provider.google
    argument: str  # dotted path of the argument or block, "" for the block itself
    message: str

    def __str__(self) -> str:
        argument = f" {self.argument}:" if self.argument else ""
        return f"infra/{self.file}: {self.address}:{argument} {self.message}"


@dataclass(frozen=True)
class ProviderBlock:
    """A resource, data or provider block of a provider in PACKAGES."""

    file: str
    keyword: str  # resource, data or provider
    kind: str  # its type, or the provider's local name for a provider block
    address: str
    source: str  # the provider's source address
    local_name: str
    body: Mapping[str, Any]


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> dict[str, Any]:
    """python-hcl2 is slow (~0.4 s for infra/): the tests check many copies that differ
    from infra/ in one file. Read only, never changed."""
    return c.parse_hcl(text)


def _sources(parsed_files: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """required_providers: local name -> source address."""
    sources: dict[str, str] = {}
    for parsed in parsed_files.values():
        for terraform in parsed.get("terraform", []):
            for required in terraform.get("required_providers", []):
                for local, spec in required.items():
                    if isinstance(spec, dict) and "source" in spec:
                        sources[local] = c.unquote(spec["source"])
    return sources


def provider_blocks(files: Mapping[str, str]) -> Iterator[ProviderBlock]:
    """Every block in `files` (name -> text) that belongs to a provider in PACKAGES."""
    parsed = {name: _parsed(text) for name, text in files.items()}
    sources = _sources(parsed)
    wanted = {package.source for package in PACKAGES}

    def source_of(local: str) -> str:
        # Terraform's own default for a local name required_providers does not list.
        return sources.get(local, f"hashicorp/{local}")

    for file, blocks in parsed.items():
        for keyword in ("resource", "data"):
            for kind, name, body in c.labelled_blocks(blocks, keyword):
                meta = c.expression(body.get("provider", kind.split("_", 1)[0]))
                local = meta.split(".", 1)[0]
                address = f"{kind}.{name}" if keyword == "resource" else f"data.{kind}.{name}"
                if source_of(local) in wanted:
                    yield ProviderBlock(file, keyword, kind, address, source_of(local), local, body)
        for block in blocks.get("provider", []):
            for local, body in block.items():
                local = c.unquote(local)
                if source_of(local) in wanted and isinstance(body, dict):
                    yield ProviderBlock(
                        file, "provider", local, f"provider.{local}", source_of(local), local, body
                    )


def _is_block(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and v.get("__is_block__") for v in value)
    )


def _check_body(
    body: Mapping[str, Any], schema: Block, path: str, skip: frozenset[str]
) -> Iterator[tuple[str, str]]:
    """(argument path, problem) for one block's body against its schema."""

    def at(name: str) -> str:
        return f"{path}.{name}" if path else name

    present: set[str] = set()
    for key, value in body.items():
        if key in c.HCL_MARKERS or key in skip:
            continue
        if key == "dynamic":
            for dynamic in value:
                for label, spec in dynamic.items():
                    if label in c.HCL_MARKERS:
                        continue
                    name = c.unquote(label)
                    nested = schema.blocks.get(name)
                    if nested is None:
                        known = "is an argument, not a block" if name in schema.arguments else ""
                        yield at(name), known or "no such block (dynamic)"
                        continue
                    present.add(name)
                    contents = spec.get("content", [])
                    if not _is_block(contents):
                        yield at(name), "dynamic block without a content block"
                    for content in contents:
                        yield from _check_body(content, nested.block, at(name), frozenset())
            continue
        if key in schema.arguments:
            present.add(key)
            if _is_block(value):
                yield at(key), f"is an argument: write `{key} = ...`, not a block"
        elif key in schema.blocks:
            present.add(key)
            nested = schema.blocks[key]
            if not _is_block(value):
                yield at(key), f"is a block: write `{key} {{ ... }}`, not `{key} = ...`"
                continue
            if nested.single and len(value) > 1:
                yield at(key), f"at most one {key} block is allowed, found {len(value)}"
            for item in value:
                yield from _check_body(item, nested.block, at(key), frozenset())
        else:
            yield at(key), "no such argument or block"
    for name, required in schema.arguments.items():
        if required and name not in present:
            yield at(name), "required argument is missing"
    for name, nested in schema.blocks.items():
        if nested.required and name not in present:
            yield at(name), "required block is missing"


def check(files: Mapping[str, str], schemas: Mapping[str, Schema]) -> list[Finding]:
    """Every disagreement between `files` (infra/*.tf by name) and the providers' schemas."""
    findings: list[Finding] = []
    for found in provider_blocks(files):
        schema = schemas[found.source]
        where = f"{schema.name} {schema.version}"
        block = schema.block(found.keyword, found.kind)
        if block is None:
            others = [s.name for s in schemas.values() if s.has(found.keyword, found.kind)]
            hint = f" ({others[0]} has it: `provider = {others[0]}`)" if others else ""
            what = "resource type" if found.keyword == "resource" else "data source"
            message = f"{where} has no {what} {found.kind}{hint}"
            findings.append(Finding(found.file, found.address, "", message))
            continue
        for argument, problem in _check_body(found.body, block, "", META_ARGUMENTS[found.keyword]):
            findings.append(Finding(found.file, found.address, argument, f"{problem} ({where})"))
    return findings


def check_directory(directory: Path, schemas: Mapping[str, Schema]) -> list[Finding]:
    return check({p.name: p.read_text() for p in sorted(directory.glob("*.tf"))}, schemas)


if __name__ == "__main__":  # a look at the findings by hand: python -m tests.infra.provider_schema
    for finding in check_directory(c.INFRA, load_schemas()):
        print(finding)
