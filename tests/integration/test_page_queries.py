"""Every query the live page's API makes, explained on the real FerretDB: none reads a collection that grows.

The queries are caught as the API's code sends them (pymongo command monitoring),
not listed here, so a new query is checked as soon as it exists. Each is then
run through ``explain``: FerretDB answers with SQLite's plan, and a ``SCAN`` of a
table is allowed only for ``sensors`` (one document per sensor) and
``recent_anomalies`` (one per bridge), or for a capped collection read backwards
from its end (``$natural``) with a limit.
A MongoDB ``explain`` is read by the same function (:func:`tests.helpers.plan_scans`: a
``COLLSCAN`` anywhere in the winning plan, whichever engine), so the test holds on either server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from unittest.mock import patch

import joblib
import pytest
from pymongo import MongoClient

from Dashboard import lookups
from Dashboard.app import csv_lines
from Dashboard.model_panel import WEEK
from Dashboard.queries import Reader
from Models_analysis.model import load_model
from Models_analysis.rescore import rescore
from Models_analysis.settings import TrainerSettings
from Models_analysis.trainer import Trainer
from pipeline import contract, periods
from pipeline.settings import MongoSettings
from Server.store import Store
from Server.timeline import RECENT_ANOMALIES, Timeline
from tests.conftest import Pipeline
from tests.helpers import CommandLog, plan_scans
from tests.unit.models import ConstantModel

pytestmark = pytest.mark.integration

#: Collections that may be read whole: bounded by the number of sensors or bridges, not by the data.
BOUNDED = {contract.COLLECTION_SENSORS, contract.COLLECTION_RECENT_ANOMALIES}


@pytest.fixture
def reader(pipeline: Pipeline) -> Iterator[tuple[Reader, CommandLog, Store]]:
    database = f"{pipeline.name}_page"
    settings = MongoSettings.model_validate({"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": database})
    store = Store(settings)
    finds = CommandLog("find")
    client: MongoClient[dict[str, Any]] = MongoClient(
        pipeline.stack.env["MONGO_URI"], tz_aware=True, event_listeners=[finds]
    )
    yield Reader(client[database]), finds, store
    client.close()
    store.client.drop_database(database)
    store.close()


def test_every_query_of_the_page_is_answered_from_an_index(
    reader: tuple[Reader, CommandLog, Store], tmp_path: Path
) -> None:
    page, finds, store = reader
    store.ensure_capped(contract.COLLECTION_REJECTIONS, 2**20, "SERVER_REJECTIONS_MAX_MB")
    store.ensure_capped(contract.COLLECTION_ALERTS, 2**20, "SERVER_ALERTS_MAX_MB")
    # Half past an hour, in the past: two days of minutes back from it touch 49 hours (from a minute
    # to the hour, the first reading would fall in the next hour and 48 would be right).
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)
    timeline = Timeline(store, threading.Event())
    # Two days of one reading a minute, and a few hundred other documents in every collection.
    readings = [
        contract.Reading(id=f"r{i}", sensor="s1", ts=now - timedelta(minutes=i), v=float(i), received_at=now)
        for i in range(2 * 24 * 60)
    ]
    timeline.touch(readings)
    timeline.touch_predictions(
        [
            {"_id": r.id, "sensor": r.sensor, "ds": r.ts, "yhat": r.v, "yhat_lower": 0.0, "yhat_upper": 1.0}
            | {"anomaly": r.v > 1.0}
            for r in readings[:100]
        ]
    )
    timeline.flush(everything=True)
    store.db[contract.COLLECTION_READINGS].insert_many([r.to_document() for r in readings[:300]])
    store.db[contract.COLLECTION_ALERTS].insert_many(
        [
            {"_id": f"a{i}", "sensor": "s1", "ts": now, "v": 2.0, "yhat": 1.0, "yhat_lower": 0.0} | {"yhat_upper": 1.5}
            for i in range(300)
        ]
    )
    store.db[contract.COLLECTION_REJECTIONS].insert_many([{"_id": f"x{i}", "received_at": now} for i in range(300)])

    assert len(page.sensors()) == 1
    series = page.series("s1", 60, now=now)
    assert len(series["points"]) == 61 and series["scored"] == 61, "the last hour, each with its forecast"
    for minutes, resolution, rows in ((60, "minute", 61), (2 * 24 * 60, "hour", 49), (60 * 24 * 60, "day", 3)):
        answer = page.aggregates("s1", minutes, now=now)
        assert (answer["resolution"], len(answer["rows"])) == (resolution, rows), minutes
    assert sum(1 for _ in csv_lines("s1", page.points("s1", now - timedelta(days=1), now))) >= 2
    assert len(page.alerts(20)) == 20 and len(page.latest_rejections(20)) == 20
    model_hash = model_panel(page, store, readings, now, tmp_path)

    seen = {(c["find"], str(c.get("filter")), str(c.get("sort"))): c for c in finds.commands}
    assert {c["find"] for c in seen.values()} >= {
        contract.COLLECTION_SENSORS,
        contract.COLLECTION_AGGREGATES,
        contract.COLLECTION_AGGREGATES_HOURLY,
        contract.COLLECTION_AGGREGATES_DAILY,
        contract.COLLECTION_REJECTIONS,
        contract.COLLECTION_RECENT_ANOMALIES,
        contract.COLLECTION_PREDICTIONS,
        contract.COLLECTION_ACCURACY,
        contract.COLLECTION_MODEL_HISTORY,
        contract.COLLECTION_RESCORED_MODELS,
        contract.COLLECTION_RESCORED,
    }
    assert any(model_hash in str(c.get("filter")) for c in finds.commands if c["find"] == contract.COLLECTION_RESCORED)
    capped = {contract.COLLECTION_ALERTS, contract.COLLECTION_REJECTIONS}
    for command in seen.values():
        plan = store.db.command("explain", command, verbosity="queryPlanner")
        name = command["find"]
        if name in BOUNDED:
            continue
        if name in capped and command.get("sort") == {"$natural": -1} and command.get("limit"):
            assert plan.get("sortPushdown", True), f"{name}: the newest first must come from the server"
            continue
        assert not plan_scans(plan), f"{name} is scanned for {command}: {plan.get('queryPlanner')}"


def model_panel(page: Reader, store: Store, readings: list[contract.Reading], now: datetime, tmp_path: Path) -> str:
    """The model panel's answer, from documents written by the bridge's, the trainer's and rescore's own code:
    the serving model from the newest reading's prediction, its running accuracy, the trainer's decision, the
    last hour against the same hour a week earlier, and a re-scored model beside the live forecasts."""
    week_ago = [
        contract.Reading(id=f"w{i}", sensor="s1", ts=r.ts - WEEK, v=r.v + 2.0, received_at=now)
        for i, r in enumerate(readings[:61])
    ]
    timeline = Timeline(store, threading.Event())
    timeline.touch(week_ago)
    timeline.flush(everything=True)
    serving = {"name": "live-model", "hash": "0123456789abcdef"}
    store.db[contract.COLLECTION_PREDICTIONS].insert_one({"_id": readings[0].id, "model": serving, "scored_at": now})
    store.db[contract.COLLECTION_ACCURACY].insert_one(
        {"_id": f"s1|{serving['hash']}", "n": 100, "mae": 0.5, "coverage": 0.9, "updated_at": now}
    )
    holdout = {"n": 240, "mae": 1.25, "coverage": 0.95, "mean_width": 3.0}
    trainer = Trainer(cast(TrainerSettings, None), store.db, clock=lambda: now)
    trainer.record(
        {"sensor": "s1", "model": serving, "incumbent": None, "promoted": True, "reason": "first"}
        | {"metrics": {"challenger": holdout, "incumbent": None}}
    )
    path = tmp_path / "flat.joblib"
    joblib.dump({"model": ConstantModel(50.0, 10.0), "metadata": {"name": "flat"}}, path)
    flat = load_model(path)
    rescore(store.db, flat, "s1", now - timedelta(minutes=90), now - timedelta(minutes=30))

    answer = page.model("s1", now=now)
    assert answer["serving"] == {**serving, "reading": readings[0].id, "scored_at": contract.iso(now)}
    assert answer["live"] == {"n": 100, "mae": 0.5, "coverage": 0.9, "updated_at": contract.iso(now)}
    assert answer["backtest"] == {**holdout, "role": "challenger", "decided_at": contract.iso(now)}
    assert [d["reason"] for d in answer["history"]] == ["first"]
    weekly = answer["weekly"]
    assert weekly["forecast"] == {"n": 61, "mae": 0.0} and weekly["naive"] == {"n": 61, "mae": 2.0}, weekly
    assert [r["model"]["hash"] for r in answer["rescored"]] == [flat.identity.hash]
    assert answer["comparison"] is None

    compared = page.model("s1", compare=flat.identity.hash, now=now)["comparison"]
    assert len(compared["points"]) == 60 and compared["live"]["n"] == compared["rescored"]["n"] == 60
    assert {p["model"][0] for p in compared["points"]} == {50.0}
    assert page.model("s1", compare="not-a-run", now=now)["comparison"] is None
    gone = periods.period_id("s1", periods.FLOOR[periods.MINUTE](now - timedelta(minutes=45)))
    store.db[contract.COLLECTION_AGGREGATES].delete_one({"_id": gone})
    fresh = Reader(page.db).model("s1", compare=flat.identity.hash, now=now)["comparison"]
    assert len(fresh["points"]) == 60 and fresh["live"]["n"] == 59, "a minute past retention is drawn without live"
    return flat.identity.hash


def test_the_check_sees_a_scan(reader: tuple[Reader, CommandLog, Store]) -> None:
    """The test above can fail: a query by sensor is a scan on FerretDB."""
    _page, _finds, store = reader
    store.db[contract.COLLECTION_READINGS].insert_one({"_id": "r", "sensor": "s1"})
    plan = store.db.command("explain", {"find": contract.COLLECTION_READINGS, "filter": {"sensor": "s1"}})
    assert plan_scans(plan)
    plan = store.db.command("explain", {"find": contract.COLLECTION_READINGS, "filter": {"_id": "r"}})
    assert not plan_scans(plan)


def test_the_latest_anomalies_of_every_bridge_are_listed_and_outlive_a_restart(
    reader: tuple[Reader, CommandLog, Store],
) -> None:
    """Two bridges each keep their latest RECENT_ANOMALIES; a restarted bridge keeps its own and adds to them."""
    page, _finds, store = reader
    now = datetime.now(UTC).replace(microsecond=0)

    def anomalies(bridge: str, count: int, first_s: int) -> list[dict[str, Any]]:
        return [
            {"_id": f"{bridge}-{i}", "sensor": f"s-{bridge}", "ds": now + timedelta(seconds=first_s + i), "v": 9.0}
            | {"yhat": 1.0, "yhat_lower": 0.0, "yhat_upper": 2.0, "anomaly": True, "scored_at": now}
            for i in range(count)
        ]

    older = {"_id": "s-old", "last": {"ts": now, "v": 1.0, "id": "r"}, "last_seen": now, "anomalies": [{"id": "x"}]}
    store.db[contract.COLLECTION_SENSORS].insert_one(older)
    first, second = Timeline(store, threading.Event(), name="b1"), Timeline(store, threading.Event(), name="b2")
    first.touch_predictions(anomalies("b1", RECENT_ANOMALIES + 10, 0))
    second.touch_predictions(anomalies("b2", 5, 1000))
    first.flush(everything=True)
    second.flush(everything=True)
    listed = page.alerts(500)
    assert [a["id"] for a in listed[:5]] == [f"b2-{i}" for i in (4, 3, 2, 1, 0)], "newest first, of both bridges"
    assert len(listed) == RECENT_ANOMALIES + 5, "each bridge keeps its latest RECENT_ANOMALIES"
    assert {a["id"] for a in listed} >= {f"b1-{RECENT_ANOMALIES + 9}"} and "b1-0" not in {a["id"] for a in listed}
    kept = store.db[contract.COLLECTION_SENSORS].find_one({"_id": "s-old"})
    assert kept is not None and "anomalies" not in kept and kept["last"]["v"] == 1.0, "an older bridge's list dropped"

    restarted = Timeline(store, threading.Event(), name="b1")
    restarted.touch_predictions(anomalies("b1-again", 2, 2000))
    restarted.flush(everything=True)
    ids = [a["id"] for a in page.alerts(500)]
    assert ids[:2] == ["b1-again-1", "b1-again-0"]
    assert len(ids) == RECENT_ANOMALIES + 5, "what b1 had before it restarted, less the two oldest, and b2's"
    assert f"b1-{RECENT_ANOMALIES + 9}" in ids and "b1-10" not in ids and "b1-12" in ids


def test_a_cached_chart_reads_again_only_the_hour_a_late_reading_went_to(
    reader: tuple[Reader, CommandLog, Store],
) -> None:
    """On FerretDB, with the bridge's own writes: past their time in the cache, settled minutes are used while their
    hour keeps its version; a late reading rewrites its minute and its hour, and the page shows it."""
    page, finds, store = reader
    now = periods.FLOOR[periods.HOUR](datetime.now(UTC)) - timedelta(minutes=1)  # three whole, settled hours
    timeline = Timeline(store, threading.Event())
    timeline.touch(
        [
            contract.Reading(id=f"r{i}", sensor="s1", ts=now - timedelta(minutes=i), v=1.0, received_at=now)
            for i in range(181)  # every minute of the chart, so every hour has a document
        ]
    )
    timeline.flush(everything=True)
    # Settled as soon as written, and past its time in the cache as soon as it is kept.
    with patch.object(lookups, "SETTLED", timedelta(0)), patch.object(lookups, "CACHE_S", 0.0):
        first = page.aggregates("s1", 180, now=now)
        assert len(first["rows"]) == 181 and {row["count"] for row in first["rows"]} == {1}
        finds.commands.clear()
        assert page.aggregates("s1", 180, now=now) == first
        assert finds.on(contract.COLLECTION_AGGREGATES) == [], "no hour written: no minute read again"

        late = now - timedelta(minutes=100)
        timeline.touch([contract.Reading(id="late", sensor="s1", ts=late, v=5.0, received_at=now)])
        timeline.flush(everything=True)
        finds.commands.clear()
        rows = {row["start"]: row for row in page.aggregates("s1", 180, now=now)["rows"]}
    assert rows[contract.iso(periods.FLOOR[periods.MINUTE](late))]["count"] == 2, "the late reading is shown"
    assert len(finds.on(contract.COLLECTION_AGGREGATES)) == 60, "the minutes of its hour are read again, no other"
