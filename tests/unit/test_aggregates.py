"""The bridge's derived documents: the timeline's minutes, rollups and sensors, and the accuracy totals."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from pipeline import periods
from Server.aggregates import Aggregator
from Server.timeline import MINUTE_POINTS_MAX, Timeline
from tests.helpers import reading


def test_periods_are_utc_minutes_hours_and_days() -> None:
    moment = datetime(2026, 11, 27, 12, 34, 56, 789000, tzinfo=timezone(timedelta(hours=2)))
    assert periods.FLOOR[periods.MINUTE](moment) == datetime(2026, 11, 27, 10, 34, tzinfo=UTC)
    assert periods.FLOOR[periods.HOUR](moment) == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert periods.FLOOR[periods.DAY](moment) == datetime(2026, 11, 27, tzinfo=UTC)
    assert periods.period_id("s1", datetime(2026, 11, 27, 10, 34, tzinfo=UTC)) == "s1|2026-11-27T10:34:00.000Z"


@given(
    since=st.datetimes(datetime(2001, 1, 1), datetime(2090, 1, 1), timezones=st.just(UTC)),  # noqa: DTZ001 - naive bounds, as hypothesis wants
    span=st.timedeltas(timedelta(0), timedelta(days=3)),
    step=st.sampled_from([periods.MINUTE, periods.HOUR, periods.DAY]),
)
def test_the_periods_of_a_range_cover_it_once_each(since: datetime, span: timedelta, step: timedelta) -> None:
    found = periods.starts(since, since + span, step)
    assert found[0] <= since < found[0] + step, "the first period holds the start"
    assert found[-1] <= since + span < found[-1] + step, "the last holds the end"
    assert all(later - earlier == step for earlier, later in zip(found, found[1:], strict=False))


def test_a_flush_adds_each_minute_hour_day_and_sensor_once() -> None:
    timeline = Timeline(store=None, stop=threading.Event())  # type: ignore[arg-type]
    at = datetime(2026, 11, 27, 10, 34, 5, tzinfo=UTC)
    first = [
        reading("s1", v).model_copy(update={"ts": at + timedelta(seconds=i), "received_at": at + timedelta(seconds=9)})
        for i, v in enumerate((3.0, 1.0, 8.0))
    ]
    timeline.touch(first[:2])
    timeline.touch([*first[2:], reading("s2", 5.0).model_copy(update={"ts": at})])
    minutes, seen = timeline._minutes, timeline._seen
    s1 = minutes[periods.period_id("s1", datetime(2026, 11, 27, 10, 34, tzinfo=UTC))]
    assert (s1.totals.count, s1.totals.total, s1.totals.low, s1.totals.high) == (3, 12.0, 1.0, 8.0)
    assert [p["id"] for p in s1.points] == [r.id for r in first]
    assert seen["s1"].last == {"ts": first[2].ts, "v": 8.0, "id": first[2].id}
    assert seen["s1"].received == {periods.epoch_minute(at + timedelta(seconds=9)): 3}
    hours = {key: totals.count for (name, key), (_, _, totals) in timeline._rollups.items() if name.endswith("hourly")}
    assert hours == {"s1|2026-11-27T10:00:00.000Z": 3, "s2|2026-11-27T10:00:00.000Z": 1}


def test_a_minute_keeps_at_most_minute_points_max_points_and_counts_the_rest() -> None:
    timeline = Timeline(store=None, stop=threading.Event())  # type: ignore[arg-type]
    at = datetime(2026, 11, 27, 10, 34, tzinfo=UTC)
    many = [reading("s1", 1.0).model_copy(update={"ts": at}) for _ in range(MINUTE_POINTS_MAX + 3)]
    timeline.touch(many)
    (minute,) = timeline._minutes.values()
    assert (len(minute.points), minute.dropped, minute.totals.count) == (MINUTE_POINTS_MAX, 3, MINUTE_POINTS_MAX + 3)


def _prediction(sensor: str, v: float) -> dict[str, object]:
    at = datetime(2026, 11, 27, 10, 34, 5, tzinfo=UTC)
    model = {"name": "m", "hash": "h"}
    return {"_id": f"{sensor}-{v}", "sensor": sensor, "model": model, "ds": at, "v": v, "yhat": 0.0} | {
        "yhat_lower": -1.0,
        "yhat_upper": 1.0,
        "anomaly": abs(v) > 1.0,
    }


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
