"""The dashboard's pure logic: sensor states, the login check, metrics parsing, rates, settings."""

from __future__ import annotations

import base64
import csv
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from Dashboard import lookups
from Dashboard import probe as probe_module
from Dashboard.app import CSV_COLUMNS, credentials_match, csv_lines
from Dashboard.model_panel import WEEK, backtest_of, naive_tolerance, pair_week_earlier, weekly_naive
from Dashboard.probe import MIN_RATE_SPAN_S, RATE_WINDOW_S, ServiceProbe, parse_metrics, rate
from Dashboard.queries import PAYLOAD_PREVIEW, Reader, per_minute, preview, resolution, sensor_state
from pipeline import contract, periods

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("age_s", "interval_s", "state"),
    [
        (0.0, None, "live"),
        (29.9, None, "live"),
        (30.0, None, "stale"),
        (30.0, 10.0, "stale"),
        (50.0, 30.0, "live"),  # under two of its usual intervals
        (60.0, 30.0, "stale"),
        (299.0, 1.0, "stale"),
        (300.0, 1.0, "silent"),
        (900.0, 600.0, "live"),  # a slow sensor is live between its readings
    ],
)
def test_sensor_state(age_s: float, interval_s: float | None, state: str) -> None:
    assert sensor_state(age_s, interval_s) == state


def test_row_of_a_sensor() -> None:
    now = NOW + timedelta(seconds=5)
    minute = int(NOW.timestamp() // 60)
    doc = {
        "_id": "s1",
        "last": {"ts": NOW, "v": 0.0, "id": "r4"},
        "last_seen": NOW,
        "interval_s": 20.0,
        # 3 readings in this minute and the four before; those 5 and 7 minutes ago do not count.
        "received": {str(minute): 1, str(minute - 2): 2, str(minute - 5): 1, str(minute - 7): 9},
    }
    row = Reader.row(doc, now)
    assert row == {
        "sensor": "s1",
        "last_ts": "2026-11-27T12:00:00.000Z",
        "last_value": 0.0,
        "last_seen": "2026-11-27T12:00:00.000Z",
        "age_s": 5.0,
        "interval_s": 20.0,
        "per_minute": 0.6,
        "state": "live",
    }
    assert Reader.row(doc, NOW + timedelta(minutes=6))["state"] == "silent"


def test_rate_is_readings_per_minute_over_the_last_five() -> None:
    start = int(NOW.timestamp() // 60)
    assert per_minute({str(start - m): 10 for m in range(5)}, NOW) == 50 / 5
    assert per_minute({}, NOW) == 0.0


def test_long_ranges_are_drawn_from_rollups() -> None:
    assert resolution(timedelta(hours=3)) == timedelta(minutes=1)
    assert resolution(timedelta(hours=3, minutes=1)) == timedelta(hours=1)
    assert resolution(timedelta(days=14)) == timedelta(hours=1)
    assert resolution(timedelta(days=15)) == timedelta(days=1)


def test_preview_cuts_long_payloads_only() -> None:
    assert preview("short") == ("short", False)
    cut, truncated = preview("x" * 1000)
    assert truncated and cut == "x" * PAYLOAD_PREVIEW + "…"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (basic("admin", "pa:ss"), True),
        (basic("admin", "pa:ss").replace("Basic", "basic"), True),
        (basic("admin", "pa:sx"), False),
        (basic("admim", "pa:ss"), False),
        (basic("admin", ""), False),
        ("Basic not-base64!", False),
        ("Bearer " + basic("admin", "pa:ss")[6:], False),
        ("", False),
        (None, False),
    ],
)
def test_credentials_match(header: str | None, ok: bool) -> None:
    assert credentials_match(header, "admin", "pa:ss") is ok


METRICS = """\
# HELP pipeline_readings_received_total MQTT messages the bridge received
# TYPE pipeline_readings_received_total counter
pipeline_readings_received_total 42.0
pipeline_readings_received_created 1.7e+09
# HELP pipeline_consumer_lag Kafka records not yet consumed by this replica
# TYPE pipeline_consumer_lag gauge
pipeline_consumer_lag{topic="a"} 3.0
pipeline_consumer_lag{topic="b"} 4.0
"""


def test_parse_metrics_sums_labels_and_leaves_what_is_missing() -> None:
    assert parse_metrics(METRICS) == {"received": 42.0, "scored": None, "lag": 7.0}
    assert parse_metrics("") == {"received": None, "scored": None, "lag": None}


def test_rate() -> None:
    assert rate([(0.0, 10.0), (1.0, None), (2.0, 30.0)]) == 10.0
    assert rate([(0.0, 10.0), (0.5, 30.0)]) is None, "too short a span"
    assert rate([(0.0, 10.0), (5.0, 2.0)]) is None, "the counter was reset (a restart)"
    assert rate([(0.0, None), (5.0, 2.0)]) is None
    assert rate([(0.0, 0.0), (60.0, 600.0), (60.3, 603.0)]) == 10.0, "two quick polls after a quiet minute"
    assert rate([(0.0, 0.0), (50.0, 100.0), (60.0, 600.0)]) == 50.0, "the window's oldest, not the older one"


@settings(max_examples=200)
@given(
    gaps=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=12),
    per_s=st.floats(0.0, 1e5),
)
def test_polled_at_any_moments_a_steady_counter_reads_its_rate_once_a_second_has_passed(
    gaps: list[float], per_s: float
) -> None:
    """However the page (or several) polls, each answer after the first second is the counter's rate."""
    clock = [1000.0]
    probe = ServiceProbe({"server": "http://unused"})
    with mock.patch.object(probe_module.time, "monotonic", lambda: clock[0]):
        assert probe._rates("server", {"received": 0.0, "scored": None, "lag": 0.0})["received_per_s"] is None
        elapsed = 0.0
        for gap in gaps:
            clock[0] += gap
            elapsed += gap
            got = probe._rates("server", {"received": per_s * elapsed, "scored": None, "lag": 0.0})
            if elapsed < MIN_RATE_SPAN_S:
                assert got["received_per_s"] is None
            else:
                assert got["received_per_s"] == pytest.approx(per_s, rel=1e-6, abs=0.01)
            assert got["scored_per_s"] is None
            assert len(probe._samples["server"]) <= 2 + RATE_WINDOW_S / 0.01, "bounded"
    probe.close()


def start_dashboard(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "DASHBOARD_"))}
    return subprocess.run(
        [sys.executable, "-m", "Dashboard"], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DASHBOARD_USERNAME": "u"}, "DASHBOARD_PASSWORD is not set (required)"),
        ({"DASHBOARD_PASSWORD": "s3cr3t-pw"}, "DASHBOARD_USERNAME is not set (required)"),
        (
            {"DASHBOARD_USERNAME": "u", "DASHBOARD_PASSWORD": "s3cr3t-pw", "DASHBOARD_SERVICES": "server:8000"},
            "DASHBOARD_SERVICES: Value error, 'server:8000' is not name=http(s)://host:port",
        ),
    ],
)
def test_bad_settings_stop_the_dashboard_with_the_name(env: dict[str, str], message: str) -> None:
    result = start_dashboard(MONGO_URI="mongodb://u:s3cr3t-uri@localhost/db", **env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert message in output
    assert "s3cr3t" not in output


def test_services_setting_keeps_order_and_drops_trailing_slashes(monkeypatch: pytest.MonkeyPatch) -> None:
    from Dashboard.settings import Settings

    monkeypatch.setenv("MONGO_URI", "mongodb://localhost:27017/x")
    monkeypatch.setenv("DASHBOARD_USERNAME", "u")
    monkeypatch.setenv("DASHBOARD_PASSWORD", "p")
    monkeypatch.setenv("DASHBOARD_SERVICES", " server=http://server:8000/ , model_analysis=http://m:8000,")
    assert Settings().services == {"server": "http://server:8000", "model_analysis": "http://m:8000"}


def test_a_sensor_document_without_a_reading_is_left_out() -> None:
    """Only the bridge writes `sensors`, but a document someone made by hand must not break the table."""
    complete = {"_id": "s1", "last": {"ts": NOW, "v": 1.0, "id": "r1"}, "last_seen": NOW, "received": {}}
    collections = {"sensors": SimpleNamespace(find=lambda *a, **k: [complete, {"_id": "hand-made"}])}
    reader = Reader(cast(Any, collections_db(collections)))
    assert [row["sensor"] for row in reader.sensors(NOW)] == ["s1"]


def collections_db(collections: dict[str, Any]) -> Any:
    """A stand-in database: the named collections, and an empty one for any other name."""
    return type("Db", (), {"__getitem__": lambda self, name: collections.get(name, SimpleNamespace())})()


#: In ``stand_in``'s ``hours``: that hour has no document.
ABSENT = "absent"


def stand_in(
    present: Callable[[str], bool],
    latest: datetime | None = None,
    asked: list[str] | None = None,
    hours: dict[str, Any] | None = None,
) -> Reader:
    """A reader of stand-in collections: ``aggregates`` holds the minutes ``present`` says (count 1, value 2,
    ``updated_at`` their end), ``aggregates_hourly`` an hour per minute with ``updated_at`` from ``hours`` by
    ``_id`` (or none), and ``sensors`` one sensor whose latest reading is at ``latest`` (None: no document).
    ``asked`` gets the ``_id`` of every minute looked up.
    """
    asked = [] if asked is None else asked
    hours = {} if hours is None else hours

    def hour(query: dict[str, str], projection: dict[str, int]) -> dict[str, Any] | None:
        if hours.get(query["_id"]) == ABSENT:
            return None
        return {"_id": query["_id"], "updated_at": hours.get(query["_id"])}

    def find_one(query: dict[str, str], projection: dict[str, int]) -> dict[str, Any] | None:
        asked.append(query["_id"])
        if not present(query["_id"]):
            return None
        end = datetime.fromisoformat(query["_id"].split("|")[1].replace("Z", "+00:00")) + timedelta(minutes=1)
        return {"_id": query["_id"], "count": 1, "sum": 2.0, "min": 2.0, "max": 2.0, "updated_at": end}

    def sensor(query: dict[str, str], projection: dict[str, int]) -> dict[str, Any] | None:
        return None if latest is None else {"_id": query["_id"], "last": {"ts": latest}}

    collections = {
        "aggregates": SimpleNamespace(name="aggregates", find_one=find_one),
        "sensors": SimpleNamespace(name="sensors", find_one=sensor),
        "aggregates_hourly": SimpleNamespace(name="aggregates_hourly", find_one=hour),
    }
    return Reader(cast(Any, collections_db(collections)))


def test_settled_minutes_are_read_once_per_cache_period() -> None:
    """A page polling the last hour reads the settled minutes from MongoDB once, then only the newest."""
    asked: list[str] = []
    reader = stand_in(lambda _: True, asked=asked)
    now = datetime.now(UTC)
    first = reader.aggregates("s1", 60, now=now)
    assert len(first["rows"]) == len(asked) == 61
    asked.clear()
    again = reader.aggregates("s1", 60, now=now)
    assert again == first
    assert 1 <= len(asked) <= 3, f"only the minutes younger than SETTLED: {asked}"


def test_settled_minutes_without_a_document_are_read_once_per_cache_period() -> None:
    """A sensor with gaps (or a chart reaching back before its first reading) is not looked up again each poll."""
    asked: list[str] = []
    reader = stand_in(lambda key: key.endswith("0:00.000Z"), asked=asked)  # one minute in ten
    now = datetime.now(UTC)
    first = reader.aggregates("s1", 180, now=now)
    assert len(asked) == 181
    assert 17 <= len(first["rows"]) <= 19
    asked.clear()
    assert reader.aggregates("s1", 180, now=now) == first
    assert 1 <= len(asked) <= 3, f"only the minutes younger than SETTLED: {asked}"


def test_minutes_after_the_sensors_latest_reading_are_not_looked_up() -> None:
    """A sensor silent for two hours: a chart of the last three looks up its last hour only."""
    asked: list[str] = []
    now = datetime.now(UTC)
    reader = stand_in(lambda _: True, latest=now - timedelta(hours=2), asked=asked)
    rows = reader.aggregates("s1", 180, now=now)["rows"]
    assert len(asked) == len(rows) == 61
    assert rows[-1]["start"] == contract.iso((now - timedelta(hours=2)).replace(second=0, microsecond=0))


@settings(max_examples=60, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=600),
    ago=st.integers(min_value=0, max_value=30),
    window=st.integers(min_value=1, max_value=50),
)
def test_parallel_lookups_answer_like_one_at_a_time(present: list[bool], ago: int, window: int) -> None:
    """Whatever minutes exist, and however the range is cut into windows, the rows come oldest first, once each:
    exactly the minutes that exist, up to the sensor's latest reading.
    """
    now = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)
    since = now - timedelta(minutes=len(present) - 1)
    starts = [since.replace(second=0) + timedelta(minutes=i) for i in range(len(present))]
    exists = {periods.period_id("s1", start) for start, there in zip(starts, present, strict=True) if there}
    latest = now - timedelta(minutes=ago)
    reader = stand_in(lambda key: key in exists, latest=latest)
    with patch.object(lookups, "WINDOW", window):
        rows = list(reader.lookups.documents("s1", since, now, periods.MINUTE, {"count": 1}))
    expected = [s for s, there in zip(starts, present, strict=True) if there and s <= latest]
    assert [row["start"] for row in rows] == expected


def test_a_csv_download_sends_its_header_before_the_first_point_is_read() -> None:
    def points() -> Iterator[dict[str, Any]]:
        raise AssertionError("read before the header was sent")
        yield {}

    lines = csv_lines("s1", points())
    assert next(lines) == ",".join(CSV_COLUMNS) + "\n"


@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.none(), max_size=30),
    every=st.integers(min_value=1, max_value=7),
)
def test_a_csv_download_holds_every_point_once_in_order(values: list[float | None], every: int) -> None:
    points = [
        {"id": f"r{i}", "ts": f"t{i}", "v": 1.0, "yhat": v, "yhat_lower": v, "yhat_upper": v, "anomaly": v is None}
        for i, v in enumerate(values)
    ]
    rows = list(csv.DictReader(io.StringIO("".join(csv_lines("s1", iter(points), every=every)))))
    assert [row["id"] for row in rows] == [p["id"] for p in points]
    assert all(row["sensor"] == "s1" for row in rows)
    assert [row["yhat"] for row in rows] == ["" if v is None else repr(v) for v in values]


def test_settled_minutes_are_read_again_only_once_their_hour_has_been_written() -> None:
    """Past its time in the cache a minute is still used while its hour keeps the version it was cached with:
    a late reading rewrites the hour (within the bridge's rollup interval), and only that hour's minutes are read.
    """
    asked: list[str] = []
    hours: dict[str, Any] = {}
    reader = stand_in(lambda _: True, asked=asked, hours=hours)
    now = periods.FLOOR[periods.HOUR](datetime.now(UTC)) - timedelta(minutes=30)  # all three hours settled
    with patch.object(lookups, "CACHE_S", 0.0):  # past its time in the cache as soon as it is kept
        first = reader.aggregates("s1", 180, now=now)
        assert len(asked) == len(first["rows"]) == 181
        asked.clear()
        assert reader.aggregates("s1", 180, now=now) == first
        assert asked == [], "no hour written: no minute read"
        late = periods.FLOOR[periods.HOUR](now - timedelta(hours=2))
        hours[periods.period_id("s1", late)] = now
        reader.aggregates("s1", 180, now=now)
    hour_prefix = periods.period_id("s1", late)[: -len("00:00.000Z")]
    again = [key for key in asked if key.startswith(hour_prefix)]
    assert len(again) == len(asked) == 60, "every minute of the hour that was written, and no other"


def test_a_minute_without_a_document_in_an_hour_without_one_is_read_again_at_every_poll() -> None:
    """A backfilled minute (a sensor's spool after an outage) shows at the next poll, not after the cache: its hour
    is written up to 30 s after it, and until then the absence is not kept."""
    written: set[str] = set()
    asked: list[str] = []
    now = periods.FLOOR[periods.HOUR](datetime.now(UTC)) - timedelta(minutes=30)
    hour = periods.period_id("s1", periods.FLOOR[periods.HOUR](now))
    hours: dict[str, Any] = {hour: ABSENT}
    reader = stand_in(lambda key: key in written, asked=asked, hours=hours)
    assert reader.aggregates("s1", 10, now=now)["rows"] == []
    minute = periods.period_id("s1", periods.FLOOR[periods.MINUTE](now - timedelta(minutes=5)))
    written.add(minute)
    assert len(reader.aggregates("s1", 10, now=now)["rows"]) == 1, "shown at the next poll"
    hours[hour] = now
    asked.clear()
    reader.aggregates("s1", 10, now=now)
    reader.aggregates("s1", 10, now=now)
    assert len(asked) == 10, "once the hour has a document, the ten absent minutes are read once, then kept"


# --- the model panel --------------------------------------------------------------------------

WEEK_AGO = NOW - WEEK


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@settings(max_examples=300, deadline=None)
@given(
    now=st.lists(st.integers(0, 600), max_size=60).map(sorted),
    earlier=st.lists(st.integers(-100, 700), max_size=60).map(sorted),
    tolerance=st.integers(0, 30),
)
def test_each_reading_is_paired_with_at_most_one_reading_a_week_earlier_within_the_tolerance(
    now: list[int], earlier: list[int], tolerance: int
) -> None:
    """Any readings: a pair is never further apart than the tolerance (a week aside), each reading of either side
    is in at most one pair, and a reading is left unpaired only when every week-earlier reading near it is taken."""
    current = [at(s) for s in now]
    before = [at(s) - WEEK for s in earlier]
    pairs = pair_week_earlier(current, before, timedelta(seconds=tolerance))
    assert all(abs(current[i] - WEEK - before[j]) <= timedelta(seconds=tolerance) for i, j in pairs)
    assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
    taken = {j for _, j in pairs}
    paired = {i for i, _ in pairs}
    for i, moment in enumerate(current):
        near = [j for j, then in enumerate(before) if abs(moment - WEEK - then) <= timedelta(seconds=tolerance)]
        assert i in paired or set(near) <= taken, (i, near)


def test_the_nearest_free_reading_a_week_earlier_is_taken() -> None:
    current = [at(0), at(10), at(20)]
    before = [at(s) - WEEK for s in (-4, 1, 9, 40)]
    assert pair_week_earlier(current, before, timedelta(seconds=5)) == [(0, 1), (1, 2)]


def test_the_weekly_naive_is_compared_on_the_same_readings() -> None:
    points = [
        {"ts": at(0), "v": 10.0, "yhat": 11.0},
        {"ts": at(60), "v": 20.0, "yhat": 18.0},
        {"ts": at(120), "v": 30.0, "yhat": None},  # not scored: in the naive's figure, not in the comparison
        {"ts": at(180), "v": 40.0, "yhat": 40.0},  # nothing a week earlier
    ]
    earlier = [
        {"ts": at(1) - WEEK, "v": 14.0},
        {"ts": at(59) - WEEK, "v": 20.0},
        {"ts": at(120) - WEEK, "v": 25.0},
    ]
    weekly = weekly_naive(points, earlier, timedelta(seconds=30))
    assert weekly["forecast"] == {"n": 3, "mae": 1.0}
    assert weekly["naive"] == {"n": 3, "mae": 3.0}
    assert weekly["forecast_paired"] == {"n": 2, "mae": 1.5} and weekly["naive_paired"] == {"n": 2, "mae": 2.0}
    assert weekly["ratio"] == 0.75
    assert weekly["text"] == (
        "forecast MAE 1 over 3 readings; on the 2 with a reading a week earlier: forecast 1.5, weekly naive 2 (0.75×)"
    )


def test_the_weekly_naive_says_when_there_is_no_reading_a_week_earlier() -> None:
    points = [{"ts": at(0), "v": 10.0, "yhat": 12.0}]
    assert weekly_naive(points, [], timedelta(seconds=30))["text"] == (
        "forecast MAE 2 over 1 readings; weekly naive: no reading a week earlier"
    )
    far = [{"ts": at(3600) - WEEK, "v": 1.0}]
    weekly = weekly_naive(points, far, timedelta(seconds=30))
    assert weekly["naive"] == {"n": 0, "mae": None} and weekly["ratio"] is None
    assert weekly["text"].endswith("no reading a week earlier near their times")
    assert weekly_naive([], far, timedelta(seconds=30))["text"] == "no reading in the last hour"
    unscored = weekly_naive([{"ts": at(0), "v": 1.0, "yhat": None}], [], timedelta(seconds=1))
    assert unscored["text"].startswith("none of the 1 readings has a forecast")


@pytest.mark.parametrize(
    ("interval_s", "seconds"), [(None, 300.0), (0.1, 1.0), (10.0, 10.0), (60.0, 60.0), (3600.0, 300.0)]
)
def test_the_naive_tolerance_is_the_sensors_interval_within_bounds(interval_s: float | None, seconds: float) -> None:
    assert naive_tolerance(interval_s) == timedelta(seconds=seconds)


def test_the_backtest_of_a_model_is_its_latest_holdout_score_in_either_role() -> None:
    scores = {"n": 240, "mae": 1.5, "coverage": 0.97, "mean_width": 4.0}
    decisions: list[dict[str, Any]] = [
        {"decided_at": NOW, "model": {"hash": "c2"}, "incumbent": {"hash": "c1"}, "metrics": {"challenger": scores}}
        | {"promoted": False},
        {
            "decided_at": NOW - timedelta(days=1),
            "model": {"hash": "c1"},
            "incumbent": {"hash": "d"},
            "metrics": {"challenger": {**scores, "mae": 2.0}, "incumbent": {**scores, "mae": 9.0}},
        },
        {"decided_at": NOW - timedelta(days=2), "model": None, "incumbent": {"hash": "u"}, "reason": "own model"},
    ]
    found = backtest_of(decisions, "c1")
    assert found is not None and (found["mae"], found["role"]) == (2.0, "challenger"), "c2's round had no score of c1"
    assert found["decided_at"] == contract.iso(NOW - timedelta(days=1))
    assert backtest_of(decisions, "d") == {**scores, "mae": 9.0, "role": "incumbent"} | {
        "decided_at": contract.iso(NOW - timedelta(days=1))
    }
    assert backtest_of(decisions, "u") is None and backtest_of([], "c1") is None


def test_the_model_endpoint_needs_the_login_and_a_sensor_id() -> None:
    from Dashboard.app import create_app
    from Dashboard.settings import Settings
    from tests.helpers import asgi

    asked: list[tuple[str, str | None]] = []

    def model(sensor: str, compare: str | None) -> dict[str, Any]:
        asked.append((sensor, compare))
        return {"sensor": sensor}

    reader = SimpleNamespace(model=model)
    config = Settings.model_validate(
        {"MONGO_URI": "mongodb://u:p@127.0.0.1:1/db", "DASHBOARD_USERNAME": "u", "DASHBOARD_PASSWORD": "p"}
        | {"DASHBOARD_ALERTMANAGER_URL": ""}
    )
    app = create_app(config, cast(Any, reader), cast(Any, SimpleNamespace()), runbooks={})
    status, _, body = asgi(app, "/api/sensors/s1/model")
    assert (status, body) == (200, b'{"sensor":"s1"}') and asked == [("s1", None)]
    assert asgi(app, "/api/sensors/s1/model", None)[0] == 401
    assert asgi(app, "/api/sensors/bad%20id/model")[0] == 422, "a sensor id is checked as everywhere"
