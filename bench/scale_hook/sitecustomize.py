"""Counts a function's Firestore reads and writes for `bench/scale.py`; nothing else.

`bench/scale.py` puts this directory first on the functions' PYTHONPATH and sets
BATCHLINE_BENCH_FIRESTORE_COUNTS to a directory; Python imports `sitecustomize` at start-up,
and this wraps the Firestore GAPIC client's RPCs (the layer every `google.cloud.firestore`
call ends in, transactions included) to append, per process, one line per RPC to
`<dir>/<pid>.log`: `r <documents read>` or `w <writes committed>`, counted as Firestore
bills them: a document a get, a batch get, a query or a listing returns is one read (a
query that returns nothing, or a get of a missing document, still one), each write of a
commit one write. Begin and rollback of a transaction are neither. Without the variable
it does nothing (and the product's code is untouched either way).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

_DIR = os.environ.get("BATCHLINE_BENCH_FIRESTORE_COUNTS")


_TARGET = "google.cloud.firestore_v1.services.firestore.client"


class _Hook(importlib.abc.MetaPathFinder):
    """Wraps the client's RPCs right after its module is first imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            _install(module.FirestoreClient, _DIR or "")

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _install(FirestoreClient: Any, directory: str) -> None:

    def record(kind: str, n: int) -> None:
        fd = os.open(
            os.path.join(directory, f"{os.getpid()}.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o644,
        )
        try:
            os.write(fd, f"{kind} {n}\n".encode())
        finally:
            os.close(fd)

    def counted_stream(name: str, found: Callable[[Any], int]) -> None:
        original = getattr(FirestoreClient, name)

        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            responses = original(self, *args, **kwargs)

            def counting() -> Iterator[Any]:
                n = 0
                try:
                    for response in responses:
                        n += found(response)
                        yield response
                finally:
                    record("r", max(n, 1))

            return counting()

        setattr(FirestoreClient, name, wrapper)

    def has(field: str) -> Callable[[Any], int]:
        def found(response: Any) -> int:
            try:
                return 1 if response._pb.HasField(field) else 0
            except (AttributeError, ValueError):
                return 1

        return found

    counted_stream(
        "batch_get_documents", lambda r: 1 if has("found")(r) or has("missing")(r) else 0
    )
    counted_stream("run_query", has("document"))
    counted_stream("run_aggregation_query", lambda r: 1)

    original_get = FirestoreClient.get_document

    @functools.wraps(original_get)
    def get_document(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original_get(self, *args, **kwargs)
        finally:
            record("r", 1)

    FirestoreClient.get_document = get_document  # type: ignore[method-assign]

    original_list = FirestoreClient.list_documents

    @functools.wraps(original_list)
    def list_documents(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        n = 0
        try:
            for document in original_list(self, *args, **kwargs):
                n += 1
                yield document
        finally:
            record("r", max(n, 1))

    FirestoreClient.list_documents = list_documents  # type: ignore[method-assign,assignment]

    def writes_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        request = kwargs.get("request", args[0] if args else None)
        writes = (
            request.get("writes") if isinstance(request, dict) else getattr(request, "writes", None)
        )
        return len(writes or ())

    for name in ("commit", "batch_write"):
        original = getattr(FirestoreClient, name)

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(original)
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                response = original(self, *args, **kwargs)
                record("w", writes_of(args, kwargs))
                return response

            return wrapper

        setattr(FirestoreClient, name, make(original))


if _DIR:
    sys.meta_path.insert(0, _Hook())
