"""Per-minute windows by event time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from Server.aggregates import aggregate_id, summarize, window_of


def test_window_is_the_utc_minute() -> None:
    moment = datetime(2026, 11, 27, 12, 34, 56, 789000, tzinfo=timezone(timedelta(hours=2)))
    assert window_of(moment) == datetime(2026, 11, 27, 10, 34, tzinfo=UTC)


def test_summary_of_a_window() -> None:
    minute = datetime(2026, 11, 27, 10, 34, tzinfo=UTC)
    document = summarize("s1", minute, [3.0, 1.0, 8.0])
    assert document == {
        "_id": "s1|2026-11-27T10:34:00.000Z",
        "sensor": "s1",
        "minute": minute,
        "count": 3,
        "sum": 12.0,
        "mean": 4.0,
        "min": 1.0,
        "max": 8.0,
    }
    assert aggregate_id("s1", minute) == document["_id"]
