"""The layout rules of ARCHITECTURE.md, checked on the source: small modules and functions,
a promise on every public name of the domain and the services, and the domain free of I/O
and SDKs. A change that breaks one fails here, naming the place."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
PRODUCT = SHARED / "batchline"
MAX_FUNCTION_LINES = 60
MAX_SERVICE_MODULE_LINES = 250
# Imports the pure domain must never make: SDKs, clients, the network, processes.
FORBIDDEN_IN_DOMAIN = (
    "openai",
    "anthropic",
    "google",
    "vertexai",
    "requests",
    "urllib.request",
    "http.client",
    "socket",
    "subprocess",
    "flask",
    "functions_framework",
    "batchline.adapters",
    "batchline.services",
    "batchline.bootstrap",
    "batchline_tools",
    "batchline_emulators",
)


def modules(root: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_no_function_over_60_lines_outside_the_emulators() -> None:
    long = [
        f"{path.relative_to(SHARED)}:{node.lineno} {node.name} ({size} lines)"
        for root in (PRODUCT, SHARED / "batchline_tools")
        for path, tree in modules(root)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (size := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)


def test_no_service_module_over_250_lines() -> None:
    big = [
        f"{path.relative_to(SHARED)} ({n} lines)"
        for path in sorted((PRODUCT / "services").rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_SERVICE_MODULE_LINES
    ]
    assert not big, "\n".join(big)


def test_every_public_name_of_the_domain_and_services_says_what_it_promises() -> None:
    missing = []
    for folder in ("domain", "services"):
        for path, tree in modules(PRODUCT / folder):
            todo: list[tuple[str, ast.AST]] = [("", n) for n in tree.body]
            while todo:
                prefix, node = todo.pop()
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    continue
                if node.name.startswith("_"):
                    continue
                if not ast.get_docstring(node):
                    missing.append(f"{path.relative_to(SHARED)}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    todo += [(f"{prefix}{node.name}.", n) for n in node.body]
    assert not missing, "no docstring:\n" + "\n".join(sorted(missing))


def test_the_domain_does_no_io_and_imports_no_sdk() -> None:
    found = []
    for path, tree in modules(PRODUCT / "domain"):
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and not node.level
                else []
            )
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_DOMAIN):
                    found.append(f"{path.relative_to(SHARED)}:{node.lineno} imports {name}")
    assert not found, "\n".join(found)


def test_the_product_never_imports_its_tooling() -> None:
    found = [
        f"{path.relative_to(SHARED)}:{node.lineno}"
        for path, tree in modules(PRODUCT)
        for node in ast.walk(tree)
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("batchline_"))
        or (
            isinstance(node, ast.Import)
            and any(a.name.startswith("batchline_") for a in node.names)
        )
    ]
    assert not found, "\n".join(found)
