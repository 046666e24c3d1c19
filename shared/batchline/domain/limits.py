"""How much one provider batch may hold: the value the chunk planner cuts by.

A value of the domain, so that planning depends on no configuration: the settings build
one per provider (`config.Settings`) and hand it in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkLimits:
    """How much one provider batch may hold. `max_bytes` limits what is sent: the chunk's
    payload plus `envelope_bytes`, the fixed bytes a provider's request wraps around it."""

    max_requests: int
    max_bytes: int
    envelope_bytes: int = 0

    @property
    def room(self) -> int:
        """The payload bytes one chunk may hold: `max_bytes` less the envelope."""
        return self.max_bytes - self.envelope_bytes
