"""Server.timeline.Timeline.run: the live page's documents are written every SERVER_TIMELINE_EVERY_S."""

from __future__ import annotations

import os
import threading
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from Server.settings import Settings
from Server.timeline import Timeline


class CountedStop(threading.Event):
    """A stop event that records each wait's timeout and is set after ``waits`` waits (no real waiting)."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.left = waits
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        self.left -= 1
        if self.left <= 0:
            self.set()
        return self.is_set()


@given(every_s=st.floats(0.001, 3600), waits=st.integers(1, 20))
def test_the_timeline_writes_once_every_interval_and_once_more_at_the_stop(every_s: float, waits: int) -> None:
    stop = CountedStop(waits)
    timeline = Timeline(store=None, stop=stop, every_s=every_s)  # type: ignore[arg-type]
    flushes: list[bool] = []

    def flush(everything: bool = False) -> int:
        flushes.append(everything)
        return 0

    timeline.flush = flush  # type: ignore[method-assign]
    timeline.run()
    assert stop.timeouts == [every_s] * waits, "each pause between writes is SERVER_TIMELINE_EVERY_S"
    assert flushes == [False] * (waits - 1) + [True], "a write after each pause, then everything at the stop"


REQUIRED = {"MQTT_USERNAME": "u", "MQTT_PASSWORD": "p", "MONGO_URI": "mongodb://u:p@localhost/db"}


@given(every_s=st.one_of(st.floats(allow_nan=True), st.integers(-(10**6), 10**6)))
def test_the_interval_is_above_0_and_at_most_a_minute_else_the_bridge_stops_naming_it(every_s: float) -> None:
    """What waits to be written is held in memory, so the interval is bounded (README, SERVER_TIMELINE_EVERY_S)."""
    env = {**REQUIRED, "SERVER_TIMELINE_EVERY_S": str(every_s)}
    with mock.patch.dict(os.environ, env):
        if 0 < every_s <= 60:
            assert Settings().SERVER_TIMELINE_EVERY_S == float(every_s)
        else:
            with pytest.raises(ValidationError, match="SERVER_TIMELINE_EVERY_S"):
                Settings()
