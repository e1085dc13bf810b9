"""Server.timeline.Timeline: the hours and days it writes are the totals of every reading touched, however flushed.

Hours and days are added up from each flushed minute (not reading by reading),
and written only every ``rollup_every_s``: whatever the readings, their order,
how they are split between flushes and which flushes write the rollups, each
hour and day must add up to the count, sum, min and max of its readings.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline import contract
from pipeline.periods import DAY, FLOOR, HOUR, period_id
from Server.timeline import Timeline

START = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)

READINGS = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2", "s3"]),
        st.integers(0, 4 * 3600 - 1),  # seconds after START: across midnight, so days differ too
        st.floats(-1e6, 1e6, allow_nan=False),
    ),
    max_size=60,
)


def _written(timeline: Timeline, due: list[bool]) -> list[dict[str, list[tuple[str, dict[str, Any]]]]]:
    """Flush once per item of ``due`` (rollups due or not), then at the stop; every flush's operations."""
    flushes: list[dict[str, list[tuple[str, dict[str, Any]]]]] = []

    def write(operations: dict[str, list[tuple[str, dict[str, Any]]]], write_id: str, retry: bool) -> int:
        flushes.append({name: list(updates) for name, updates in operations.items()})
        return 0

    timeline._write = write  # type: ignore[method-assign]
    for is_due in due:
        timeline._rollups_due = 0.0 if is_due else float("inf")
        timeline.flush()
    timeline.flush(everything=True)
    return flushes


@given(
    readings=READINGS,
    cuts=st.lists(st.integers(0, 60), max_size=5),
    due=st.lists(st.booleans(), max_size=6),
    forecasts=st.lists(st.integers(0, 4 * 3600 - 1), max_size=5),
)
def test_every_hour_and_day_adds_up_to_its_readings_however_they_were_flushed(
    readings: list[tuple[str, int, float]], cuts: list[int], due: list[bool], forecasts: list[int]
) -> None:
    timeline = Timeline(store=None, stop=threading.Event())  # type: ignore[arg-type]
    timeline._anomalies_loaded = True
    # Forecasts alone make a minute too (with no readings): it must add nothing to an hour or a day.
    timeline.touch_predictions(
        {"_id": f"p{i}", "sensor": "s4", "ds": START + timedelta(seconds=at), "yhat": 1.0}
        | {"yhat_lower": 0.0, "yhat_upper": 2.0, "anomaly": False}
        for i, at in enumerate(forecasts)
    )
    parsed = [
        contract.Reading(id=f"{s}-{i}", sensor=s, ts=START + timedelta(seconds=at), v=v, received_at=START)
        for i, (s, at, v) in enumerate(readings)
    ]
    flushes: list[dict[str, list[tuple[str, dict[str, Any]]]]] = []
    bounds = sorted({0, len(parsed), *(min(c, len(parsed)) for c in cuts)})
    for begin, end in zip(bounds, bounds[1:], strict=False):
        timeline.touch(parsed[begin:end])
        flushes += _written(timeline, due)
    flushes += _written(timeline, [])

    rollups = ((HOUR, contract.COLLECTION_AGGREGATES_HOURLY), (DAY, contract.COLLECTION_AGGREGATES_DAILY))
    for step, collection in rollups:
        expected: dict[str, list[float]] = defaultdict(list)
        for r in parsed:
            expected[period_id(r.sensor, FLOOR[step](r.ts))].append(r.v)
        got: dict[str, dict[str, float]] = {}
        for flush in flushes:
            for key, update in flush.get(collection, []):
                totals = got.setdefault(key, {"count": 0, "sum": 0.0, "min": float("inf"), "max": float("-inf")})
                totals["count"] += update["$inc"]["count"]
                totals["sum"] += update["$inc"]["sum"]
                totals["min"] = min(totals["min"], update["$min"]["min"])
                totals["max"] = max(totals["max"], update["$max"]["max"])
                assert update["$inc"]["count"] > 0, "no update for a period without readings (its min would be inf)"
        assert set(got) == set(expected), collection
        for key, values in expected.items():
            assert got[key]["count"] == len(values)
            assert got[key]["min"] == min(values) and got[key]["max"] == max(values)
            assert abs(got[key]["sum"] - sum(values)) <= 1e-6 * max(1.0, sum(abs(v) for v in values))
