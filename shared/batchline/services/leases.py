"""Holding leases: heartbeats while a holder works, and races lost without failing.

A lease says how long its holder may go without renewing it (`lease_seconds`: how soon a
dead holder is noticed). While the holder is alive, a `Keeper` renews it every
`heartbeat_seconds`, for at most `max_hold_seconds` (how long a call may take), so a slow
holder (a long provider create, a large upload) keeps its claim and a dead one loses it
within a lease. Renewals go through the claim rules (`claims.renew_*`): a renewal that
finds the claim taken over sets `lost`, and the worker stops at its next step
(`check`). The thread is a daemon, stopped and joined when the `with` block ends; after
that it renews nothing.

A transaction that keeps losing to concurrent ones gives up (`Contention`); where the
winner does the work (taking a lease, asking again), `contended` takes that as "someone
else is at it" rather than failing the invocation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import ParamSpec, TypeVar

from batchline.bootstrap import Deps
from batchline.errors import BatchlineError, Contention
from batchline.log import fields, get_logger

log = get_logger(__name__)

#: One renewal: True while the claim is still mine.
Renewal = Callable[[], bool]

#: The longest the thread sleeps at a time (it follows `deps.clock`, which tests move).
TICK_SECONDS = 0.2
#: How long leaving the block waits for a renewal in flight.
JOIN_SECONDS = 30.0


class LeaseLost(BatchlineError):
    """Another invocation took over an expired lease: stop, it carries on."""


class Keeper:
    """Renews `renewals` every `settings.heartbeat_every` seconds of `deps.clock` while
    the `with` block runs (not at all when heartbeats are off)."""

    def __init__(self, deps: Deps, what: str, renewals: Sequence[Renewal]) -> None:
        self._deps = deps
        self._what = what
        self._renewals = list(renewals)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        #: Renewal rounds done (every renewal of a round succeeded): tests wait on it.
        self.beats = 0

    def add(self, renewal: Renewal) -> None:
        """Renew one more claim from the next beat on (a lock taken after the block began)."""
        self._renewals.append(renewal)

    @property
    def lost(self) -> bool:
        """A renewal found a claim taken over, or the hold ran past `max_hold_seconds`."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raise LeaseLost if the claim was lost: the worker stops here."""
        if self.lost:
            raise LeaseLost(f"{self._what}: lease lost")

    def __enter__(self) -> Keeper:
        if self._deps.settings.heartbeat_every > 0:
            self._thread = threading.Thread(
                target=self._run, name=f"keeper {self._what}", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)

    def _run(self) -> None:
        clock, settings = self._deps.clock, self._deps.settings
        started = last = clock.now()
        while not self._stop.wait(TICK_SECONDS):
            now = clock.now()
            if now - started >= settings.max_hold_seconds:
                log.warning(
                    "held longer than max_hold_seconds; no longer renewed",
                    extra=fields(what=self._what),
                )
                self._lost.set()
                return
            if now - last < settings.heartbeat_every:
                continue
            if self._beat():
                last = now
                self.beats += 1
            if self._lost.is_set():
                return

    def _beat(self) -> bool:
        for renew in list(self._renewals):
            if self._stop.is_set():
                return False
            try:
                if not renew():
                    log.warning("lease taken over; stopping", extra=fields(what=self._what))
                    self._lost.set()
                    return False
            except Exception as exc:  # the lease may still be live: try again next tick
                log.warning("lease not renewed", extra=fields(what=self._what, error=str(exc)))
                return False
        return True


P = ParamSpec("P")
T = TypeVar("T")


def contended(update: Callable[P, T | None], *args: P.args, **kwargs: P.kwargs) -> T | None:
    """Run a store update whose transaction may lose a race (taking a lease others want
    too); one that gave up is taken as "someone else is at it": None, as when the rule
    leaves the record, never a failure of the invocation."""
    try:
        return update(*args, **kwargs)
    except Contention as exc:
        log.info("lost a race; the winner carries on", extra=fields(error=str(exc)))
        return None
