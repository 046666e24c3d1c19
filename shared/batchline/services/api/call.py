"""What a route's handler gets and answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from flask import Request


@dataclass(frozen=True)
class Call:
    """One request to one operation: the request and the path's parameters."""

    request: Request
    params: Mapping[str, str]

    @property
    def job_id(self) -> str:
        """The path's job id (checked against the job id pattern before the handler)."""
        return self.params["job_id"]


@dataclass(frozen=True)
class Raw:
    """A body sent as it is (already JSON, or another media type)."""

    data: bytes
    media_type: str = "application/json"


@dataclass(frozen=True)
class Stream:
    """A body sent in blocks as they are made."""

    blocks: Iterator[bytes]
    media_type: str


#: What a handler answers: a status and a model, a Raw or a Stream body.
Answer = tuple[int, BaseModel | Raw | Stream]
Handler = Callable[[Call], Answer]
