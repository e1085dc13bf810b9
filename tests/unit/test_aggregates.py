"""The bridge's derived documents: the timeline's minutes, rollups and sensors, and the accuracy totals."""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import bson
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.errors import InvalidOperation

from pipeline import periods
from Server import timeline as timeline_module
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
    # Hours and days are added up from the minutes a flush takes, and kept until they are due.
    timeline._anomalies_loaded, timeline._rollups_due = True, float("inf")
    timeline._write = lambda operations, write_id, retry: 0  # type: ignore[method-assign]
    timeline.flush()
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


def _bson_order(value: Any) -> Any:
    """What $max compares: a document field by field, in order."""
    return list(value.values()) if isinstance(value, dict) else value


class Applied(Timeline):
    """A timeline whose updates are applied to documents in memory ($inc, $min, $max, $push, $set...)."""

    def __init__(self) -> None:
        nothing = SimpleNamespace(find_one=lambda *_a, **_k: None, update_many=lambda *_a, **_k: None)
        store = SimpleNamespace(db=defaultdict(lambda: nothing))
        super().__init__(store=cast(Any, store), stop=threading.Event())
        self.documents: dict[tuple[str, str], dict[str, Any]] = {}

    def _write(self, operations: dict[str, list[tuple[str, dict[str, Any]]]], write_id: str, retry: bool) -> int:
        for name, updates in operations.items():
            for key, update in updates:
                doc = self.documents.setdefault((name, key), {})
                for field, value in update.get("$setOnInsert", {}).items():
                    doc.setdefault(field, value)
                for field, value in update.get("$inc", {}).items():
                    doc[field] = doc.get(field, 0) + value
                for field, value in update.get("$min", {}).items():
                    doc[field] = min(doc.get(field, value), value)
                for field, value in update.get("$max", {}).items():
                    doc[field] = max(
                        doc.get(field, value), value, key=lambda x: list(x.values()) if isinstance(x, dict) else x
                    )
                for field, value in update.get("$push", {}).items():
                    doc.setdefault(field, []).extend(value["$each"])
                doc.update(update.get("$set", {}))
        return sum(map(len, operations.values()))


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["s1", "s2", "s3"]),
                st.integers(min_value=0, max_value=3 * 3600),
                st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
            ),
            max_size=40,
        ),
        min_size=1,
        max_size=8,
    ),
    flushes=st.lists(st.booleans(), min_size=8, max_size=8),
    remembered=st.sampled_from([1, 2, 5, timeline_module.KEYS_REMEMBERED]),
)
def test_minutes_hours_and_days_hold_the_totals_of_every_reading_however_they_are_flushed(
    batches: list[list[tuple[str, int, float]]], flushes: list[bool], remembered: int
) -> None:
    """Readings added in any batches, with flushes between any of them, add up in the stored documents to the
    totals computed from all of them at once: count, sum, min and max per minute, hour and day, every point once,
    and each sensor's latest reading; however few period ids the timeline keeps ready (``KEYS_REMEMBERED``).
    """
    start = datetime(2026, 11, 29, 22, 30, tzinfo=UTC)  # the three hours cross midnight
    with mock.patch.object(timeline_module, "KEYS_REMEMBERED", remembered):
        _totals_of_every_reading(start, batches, flushes)


def _totals_of_every_reading(start: datetime, batches: list[list[tuple[str, int, float]]], flushes: list[bool]) -> None:
    timeline = Applied()
    everything = []
    for number, batch in enumerate(batches):
        readings = [
            reading(sensor, v).model_copy(update={"id": f"{sensor}-{number}-{i}", "ts": start + timedelta(seconds=s)})
            for i, (sensor, s, v) in enumerate(batch)
        ]
        timeline.touch(readings)
        assert len(timeline._keys) <= timeline_module.KEYS_REMEMBERED  # the ids kept ready stay bounded
        everything += readings
        if flushes[number]:
            timeline.flush(everything=number % 2 == 0)
    timeline.flush(everything=True)

    for step in (periods.MINUTE, periods.HOUR, periods.DAY):
        expected: dict[str, list[float]] = defaultdict(list)
        for r in everything:
            expected[periods.period_id(r.sensor, periods.FLOOR[step](r.ts))].append(r.v)
        stored = {key: doc for (name, key), doc in timeline.documents.items() if name == periods.COLLECTION[step]}
        assert stored.keys() == expected.keys()
        for key, values in expected.items():
            doc = stored[key]
            assert (doc["count"], doc["min"], doc["max"]) == (len(values), min(values), max(values))
            assert math.isclose(doc["sum"], math.fsum(values), rel_tol=1e-9, abs_tol=1e-6)
            if step == periods.MINUTE:
                assert sorted(p["id"] for p in periods.points_of(doc)) == sorted(
                    r.id for r in everything if periods.period_id(r.sensor, periods.FLOOR[step](r.ts)) == key
                )
    sensors = {key: doc for (name, key), doc in timeline.documents.items() if name == "sensors"}
    assert sensors.keys() == {r.sensor for r in everything}
    for sensor, doc in sensors.items():
        assert doc["last"]["ts"] == max(r.ts for r in everything if r.sensor == sensor)


_ROWS = st.lists(
    st.tuples(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True),
        st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)),  # noqa: DTZ001 - naive bounds, as hypothesis wants
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    max_size=20,
)


@given(chunks=st.lists(st.tuples(st.booleans(), _ROWS), max_size=6))
def test_a_minutes_points_read_back_as_bson_would_have_kept_them(chunks: list[tuple[bool, list[Any]]]) -> None:
    """Points packed in chunks (or, in older minutes, kept as sub-documents) read back in order, each ``ts`` to the
    millisecond exactly as MongoDB keeps a date, each value exactly."""
    options: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True, tzinfo=UTC)

    def as_bson(value: Any) -> Any:
        return bson.decode(bson.encode({"x": value}), options)["x"]

    stored: list[Any] = []
    for old, rows in chunks:
        if old:
            stored += as_bson([{"id": i, "ts": t, "v": v} for i, t, v in rows])
        else:
            stored.append(periods.pack_points(rows))
    expected = [{"id": i, "ts": as_bson(t), "v": v} for _, rows in chunks for i, t, v in rows]
    assert periods.points_of({"points": stored}) == expected


@given(
    forecasts=st.lists(
        st.fixed_dictionaries(
            {
                "id": st.text(max_size=10),
                "yhat": st.none() | st.floats(allow_nan=False, allow_infinity=False),
                "yhat_lower": st.floats(allow_nan=False, allow_infinity=False),
                "yhat_upper": st.floats(allow_nan=False, allow_infinity=False),
                "anomaly": st.booleans() | st.none(),
            }
        ),
        max_size=20,
    ),
    split=st.integers(min_value=0, max_value=20),
)
def test_a_minutes_forecasts_read_back_exactly(forecasts: list[dict[str, Any]], split: int) -> None:
    chunks = [periods.pack_forecasts(forecasts[:split]), periods.pack_forecasts(forecasts[split:])]
    assert periods.forecasts_of({"forecasts": chunks}) == forecasts
    assert periods.forecasts_of({}) == [] and periods.points_of({"points": None}) == []


_GARBAGE = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=30),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(
        st.lists(st.one_of(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), st.none()), max_size=4),
        max_size=3,
    ).map(lambda rows: orjson.dumps(rows).decode()),
    # Numbers past what the bridge writes: a time before year 1 or past 9999, a 30-digit integer.
    st.sampled_from(
        ['[["a", 123456789012345678901234567890, 1.0]]', '[["a", -99999999999999, 1.0]]', "[[1, 2, 3e400]]"]
    ),
)


@given(good=_ROWS, garbage=st.lists(_GARBAGE, min_size=1, max_size=4), at=st.integers(min_value=0, max_value=4))
def test_a_chunk_edited_by_hand_is_left_out_and_the_rest_read(good: list[Any], garbage: list[Any], at: int) -> None:
    """Whatever a hand-edited minute holds, reading it never fails, and the chunks the bridge wrote still read."""
    good = [(f"good-{n}-{i}", t, v) for n, (i, t, v) in enumerate(good)]  # never an id the garbage makes
    chunks: list[Any] = [periods.pack_points(good)]
    chunks[min(at, 1) : min(at, 1)] = garbage
    found = periods.points_of({"_id": "s|m", "points": chunks})
    ids = [p["id"] for p in found]
    good_ids = [i for i, _, _ in good]
    start = ids.index(good_ids[0]) if good_ids else 0
    assert ids[start : start + len(good_ids)] == good_ids, "the bridge's chunk, whole and in order"
    assert all(isinstance(p["v"], float) and p["ts"].tzinfo is not None for p in found)
    forecasts = periods.forecasts_of({"_id": "s|m", "forecasts": [*garbage, periods.pack_forecasts([])]})
    assert isinstance(forecasts, list)


def test_a_failed_read_back_of_recent_anomalies_does_not_stop_the_flush() -> None:
    """A one-time read back (or clean-up) that fails for good, not transiently: logged, and the minutes are written."""

    def refuse(*_a: Any, **_k: Any) -> None:
        raise InvalidOperation("refused for good")

    timeline = Applied()
    refusing = SimpleNamespace(find_one=refuse, update_many=refuse)
    timeline.store = cast(Any, SimpleNamespace(db=defaultdict(lambda: refusing)))
    timeline.touch([reading("s1", 1.0)])
    assert timeline.flush(everything=True) > 0
    assert any(name == "aggregates" for name, _ in timeline.documents)
