"""batchline: run large LLM workloads through the providers' batch APIs on Google Cloud."""

from __future__ import annotations

__version__ = "0.1.0"
