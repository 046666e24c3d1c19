"""batchline: run large LLM workloads through the providers' batch APIs on Google Cloud.

`read_results`, `BatchSuccess`, `BatchError` and `ResultsFileError` (from
`batchline.reader`) load on first use: `import batchline` is on the functions' cold-start
path and stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batchline.reader import BatchError, BatchSuccess, ResultsFileError, read_results

__all__ = ["BatchError", "BatchSuccess", "ResultsFileError", "__version__", "read_results"]

_LAZY = {
    "BatchError": "batchline.reader",
    "BatchSuccess": "batchline.reader",
    "ResultsFileError": "batchline.reader",
    "read_results": "batchline.reader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchline' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
