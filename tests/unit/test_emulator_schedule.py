"""The schedule the emulators' batches run on (`batchline_emulators._common`): a test's
hold on a batch and its early expiry, at the clock values the emulators' tests use."""

from __future__ import annotations

import math

import pytest

from batchline_emulators._common import Expiry, Hold, early_expiry

START = 1_800_000_000.0  # ManualClock's start: floats this large round at ~1e-7 s
RATE = 10.0


@pytest.mark.parametrize("n", range(11))
def test_the_lines_done_when_a_line_finishes_include_it(n: int) -> None:
    hold = Hold()
    if n:
        assert hold.done(hold.finished_at(n - 1, START, RATE, 10), START, RATE, 10) == n
    assert hold.done(START + n / RATE - 1e-3, START, RATE, 10) == max(0, n - 1)


def test_a_held_batch_counts_its_lines_by_the_release() -> None:
    hold = Hold(after=3)
    assert hold.done(START + 3600, START, RATE, 10) == 3
    hold.released_at = START + 3600
    for i in range(3, 10):
        assert hold.done(hold.finished_at(i, START, RATE, 10), START, RATE, 10) == i + 1
    assert hold.finished_at(3, START, RATE, 10) == pytest.approx(START + 3600 + 0.1)


def test_an_expiry_after_lines_falls_when_that_line_finishes() -> None:
    hold = Hold()
    expiry = Expiry(after_lines=4)
    at = expiry.at(hold, START, RATE, 10)
    assert at == hold.finished_at(3, START, RATE, 10)
    assert hold.done(at, START, RATE, 10) == 4
    assert Expiry(after_lines=0).at(hold, START, RATE, 10) == START
    # A batch of no more lines than that runs to its end; no expiry asked: none.
    assert math.isinf(Expiry(after_lines=10).at(hold, START, RATE, 10))
    assert math.isinf(Expiry().at(hold, START, RATE, 10))


def test_an_expiry_waits_for_a_hold_short_of_it_and_a_request_wins_when_earlier() -> None:
    hold = Hold(after=2)
    expiry = Expiry(after_lines=4)
    assert math.isinf(expiry.at(hold, START, RATE, 10))  # held at 2 lines, not yet 4
    expiry.requested_at = START + 60
    assert expiry.at(hold, START, RATE, 10) == START + 60
    hold.released_at = START + 30
    assert expiry.at(hold, START, RATE, 10) == pytest.approx(START + 30 + 0.2)


def test_early_expiry_counts_down_the_next_batches() -> None:
    assert early_expiry(None, None) == (Expiry(), None)
    assert early_expiry(None, 2) == (Expiry(), 2)  # nothing to expire: nothing taken
    assert early_expiry(3, None) == (Expiry(after_lines=3), None)  # every batch
    assert early_expiry(3, 2) == (Expiry(after_lines=3), 1)
    assert early_expiry(3, 1) == (Expiry(after_lines=3), 0)
    assert early_expiry(3, 0) == (Expiry(), 0)  # the K batches have had theirs
