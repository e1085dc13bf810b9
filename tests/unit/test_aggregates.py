"""Per-minute windows by event time, and merging what batches add to them."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

from Server.aggregates import Aggregator, Window, aggregate_id, window_of
from tests.helpers import reading


def test_window_is_the_utc_minute() -> None:
    moment = datetime(2026, 11, 27, 12, 34, 56, 789000, tzinfo=timezone(timedelta(hours=2)))
    assert window_of(moment) == datetime(2026, 11, 27, 10, 34, tzinfo=UTC)
    assert aggregate_id("s1", window_of(moment)) == "s1|2026-11-27T10:34:00.000Z"


def test_contributions_merge_per_sensor_and_minute() -> None:
    aggregator = Aggregator(store=None, stop=threading.Event())  # type: ignore[arg-type]
    at = datetime(2026, 11, 27, 10, 34, 5, tzinfo=UTC)
    first = [
        reading("s1", v).model_copy(update={"ts": at + timedelta(seconds=i)}) for i, v in enumerate((3.0, 1.0, 8.0))
    ]
    aggregator.touch(first[:2])
    aggregator.touch(first[2:] + [reading("s2", 5.0)])
    windows = aggregator._windows
    assert windows[("s1", window_of(first[0].ts))] == Window(count=3, total=12.0, low=1.0, high=8.0)
    assert sum(w.count for (sensor, _), w in windows.items() if sensor == "s2") == 1


def test_a_window_is_written_once_it_has_settled() -> None:
    aggregator = Aggregator(store=None, stop=threading.Event(), settle_s=10.0, max_open=2)  # type: ignore[arg-type]
    at = datetime(2026, 11, 27, 10, 34, 5, tzinfo=UTC)
    aggregator.touch([reading("s1", 1.0).model_copy(update={"ts": at})])
    aggregator.touch([reading("s2", 1.0).model_copy(update={"ts": at})])
    now = time.monotonic()
    assert aggregator._settled(aggregator._windows, now, everything=False) == {}, "still being added to"
    aggregator._touched[("s1", window_of(at))] -= 11.0
    assert list(aggregator._settled(aggregator._windows, now, everything=False)) == [("s1", window_of(at))]
    assert list(aggregator._windows) == [("s2", window_of(at))]
    # Past max_open, the windows added to longest ago go first, settled or not.
    for sensor in ("s3", "s4"):
        aggregator.touch([reading(sensor, 1.0).model_copy(update={"ts": at})])
    assert list(aggregator._settled(aggregator._windows, time.monotonic(), everything=False)) == [("s2", window_of(at))]
    assert len(aggregator._settled(aggregator._windows, time.monotonic(), everything=True)) == 2
    assert aggregator._windows == {} and aggregator._touched == {}


def _prediction(sensor: str, v: float) -> dict[str, object]:
    at = datetime(2026, 11, 27, 10, 34, 5, tzinfo=UTC)
    model = {"name": "m", "hash": "h"}
    return {"sensor": sensor, "model": model, "ds": at, "v": v, "yhat": 0.0, "yhat_lower": -1.0, "yhat_upper": 1.0}


def test_running_totals_are_written_at_most_every_totals_every_s() -> None:
    aggregator = Aggregator(store=None, stop=threading.Event(), totals_every_s=30.0)  # type: ignore[arg-type]
    aggregator.touch_accuracy([_prediction("s1", 0.5)])
    assert list(aggregator._due_totals(100.0, everything=False)) == ["s1|h"], "a new total at once"
    next_due = aggregator._totals_written["s1|h"] + 30.0
    assert 100.0 < next_due <= 130.0, "then within one interval"
    aggregator.touch_accuracy([_prediction("s1", 2.0), _prediction("s2", 0.0)])
    assert list(aggregator._due_totals(next_due - 0.1, everything=False)) == ["s2|h"], "s1 is not due yet"
    due = aggregator._due_totals(next_due, everything=False)
    assert list(due) == ["s1|h"] and (due["s1|h"].n, due["s1|h"].abs_error) == (1, 2.0), "only what came since"
    assert aggregator._totals_written["s1|h"] == next_due, "from then on every 30 s"
    aggregator.touch_accuracy([_prediction("s2", 3.0)])
    assert list(aggregator._due_totals(next_due + 0.1, everything=True)) == ["s2|h"]


def test_totals_that_start_together_are_written_spread_over_the_interval() -> None:
    aggregator = Aggregator(store=None, stop=threading.Event(), totals_every_s=30.0)  # type: ignore[arg-type]
    sensors = [f"sensor-{i}" for i in range(100)]
    aggregator.touch_accuracy([_prediction(s, 0.5) for s in sensors])
    assert len(aggregator._due_totals(0.0, everything=False)) == 100, "all new: all at once"
    per_flush = []
    for flush in range(1, 7):  # a flush every 5 s for the next 30 s
        aggregator.touch_accuracy([_prediction(s, 0.5) for s in sensors])
        per_flush.append(len(aggregator._due_totals(flush * 5.0, everything=False)))
    assert sum(per_flush) == 100, "each written once in the interval"
    assert max(per_flush) <= 30, f"a share per flush, not all at once: {per_flush}"
