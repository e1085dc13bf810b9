"""The bridge on real Mosquitto, Kafka and FerretDB: readings stored once, bad input kept with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline import contract
from pipeline.periods import forecasts_of, points_of
from tests.conftest import Pipeline, wait_for
from tests.helpers import CommandLog, consume, payload, publish, reading

pytestmark = pytest.mark.integration


def one(collection: Any, query: dict[str, Any]) -> dict[str, Any]:
    """The one document matching ``query``; fails the test if there is none."""
    document = collection.find_one(query)
    assert document is not None, f"nothing in {collection.name} matches {query}"
    return dict(document)


def test_a_reading_reaches_mongodb_and_kafka_exactly_once(pipeline: Pipeline) -> None:
    server = pipeline.start_server()
    sensor = pipeline.sensor_id(1)
    items = [reading(sensor, float(i), zone="gate-a") for i in range(5)]
    raw = [payload(r) for r in items]
    # The third reading is sent again, as a sensor does when a PUBACK is lost.
    codes = publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), raw[:3] + [raw[2]] + raw[3:])
    assert codes == [0] * 6, "the broker refused a reading"

    readings = pipeline.db[contract.COLLECTION_READINGS]
    wait_for(lambda: readings.count_documents({"sensor": sensor}) >= 5, 60, "5 readings in MongoDB", pipeline.logs)
    stored = {d["_id"]: d for d in readings.find({"sensor": sensor})}
    assert set(stored) == {r.id for r in items}
    first = stored[items[0].id]
    assert first["v"] == 0.0 and first["zone"] == "gate-a"
    assert first["ts"] == items[0].ts.replace(microsecond=items[0].ts.microsecond // 1000 * 1000)
    assert first["received_at"] >= first["ts"]

    records = consume(pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"], pipeline.topics["KAFKA_TOPIC_READINGS"], want=5)
    ids = [json.loads(m.value())["id"] for m in records]
    assert sorted(ids) == sorted(r.id for r in items), "each reading once in Kafka, the resent one too"
    assert {m.key() for m in records} == {sensor.encode()}, "Kafka key is the sensor id"
    assert server.alive


def test_a_malformed_payload_is_kept_with_its_reason_and_the_flow_continues(pipeline: Pipeline) -> None:
    pipeline.start_server()
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    before, after = reading(sensor, 1.0), reading(sensor, 2.0)
    bad = b'{"id": "x1", "sensor": "' + sensor.encode() + b'", "v": 3'
    assert publish(pipeline.stack.env, sensor, topic, [payload(before), bad, payload(after)]) == [0, 0, 0]

    readings = pipeline.db[contract.COLLECTION_READINGS]
    rejections = pipeline.db[contract.COLLECTION_REJECTIONS]
    wait_for(lambda: readings.count_documents({"sensor": sensor}) == 2, 60, "both valid readings", pipeline.logs)
    rejection = wait_for(lambda: rejections.find_one({"topic": topic}), 30, "the rejection", pipeline.logs)
    assert rejection["payload"] == bad.decode() and rejection["payload_encoding"] == "utf-8"
    assert rejection["transport"] == "mqtt" and rejection["size"] == len(bad)
    assert rejection["reason"].startswith("payload is not JSON")

    dead = consume(pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"], pipeline.topics["KAFKA_TOPIC_DEADLETTER"], want=1)
    assert [json.loads(m.value())["payload"] for m in dead] == [bad.decode()]


def test_per_minute_aggregates_by_event_time_count_each_reading_once(pipeline: Pipeline) -> None:
    from datetime import UTC, datetime, timedelta

    from pipeline.periods import period_id

    pipeline.start_server()
    sensor = pipeline.sensor_id(1)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    values = {minute: [1.0, 2.0, 6.0], minute + timedelta(minutes=1): [10.0, 20.0]}
    items = [
        contract.Reading(id=f"{sensor}-{i}-{j}", sensor=sensor, ts=start + timedelta(seconds=10 * j), v=v)
        for i, (start, vs) in enumerate(values.items())
        for j, v in enumerate(vs)
    ]
    raw = [payload(r) for r in items]
    # A late reading (the first one) arrives again, last: it must not count twice.
    assert publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), raw + raw[:1]) == [0] * 6

    aggregates = pipeline.db[contract.COLLECTION_AGGREGATES]
    keys = [period_id(sensor, start) for start in values]
    counted = lambda: sum((aggregates.find_one({"_id": k}) or {}).get("count", 0) for k in keys)  # noqa: E731
    wait_for(lambda: counted() == 5, 60, "5 readings in the two minutes", pipeline.logs)
    first, second = one(aggregates, {"_id": keys[0]}), one(aggregates, {"_id": keys[1]})
    assert (first["count"], first["sum"], first["min"], first["max"], first["minute"]) == (3, 9.0, 1.0, 6.0, minute)
    assert (second["count"], second["sum"], second["min"], second["max"]) == (2, 30.0, 10.0, 20.0)
    assert [p["id"] for p in points_of(first)] == [r.id for r in items[:3]], "each reading once, with its id"
    assert [p["v"] for p in points_of(second)] == [10.0, 20.0]
    known = one(pipeline.db[contract.COLLECTION_SENSORS], {"_id": sensor})
    assert known["last"] == {"ts": items[-1].ts.replace(microsecond=0), "v": 20.0, "id": items[-1].id}
    assert sum(known["received"].values()) == 5


def test_the_timeline_merges_late_readings_and_a_retried_write_adds_nothing(pipeline: Pipeline) -> None:
    """The documents the page reads, on FerretDB: a minute is added to in place (points, forecasts,
    totals), hours and days roll up, and a write retried with the same write id adds nothing."""
    import threading
    from datetime import UTC, datetime, timedelta

    from pipeline.periods import DAY, FLOOR, HOUR, period_id
    from pipeline.settings import MongoSettings
    from Server.aggregates import Aggregator, Score
    from Server.store import Store
    from Server.timeline import Timeline

    store = Store(
        MongoSettings.model_validate({"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.db.name})
    )
    timeline = Timeline(store, threading.Event())
    aggregator = Aggregator(store, threading.Event(), settle_s=0.0, timeline=timeline)
    sensor = pipeline.sensor_id(1)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    at = [minute + timedelta(seconds=s) for s in (1, 2, 3)]
    first = [contract.Reading(id=f"{sensor}-{i}", sensor=sensor, ts=at[i], v=v) for i, v in enumerate((4.0, 2.0))]
    aggregator.touch(first)
    assert timeline.flush(everything=True) == 4, "the minute, the hour, the day and the sensor"
    aggregates = pipeline.db[contract.COLLECTION_AGGREGATES]
    key = period_id(sensor, minute)
    stored = one(aggregates, {"_id": key})
    assert (stored["count"], stored["sum"], stored["min"], stored["max"]) == (2, 6.0, 2.0, 4.0)
    assert points_of(stored) == [{"id": r.id, "ts": r.ts, "v": r.v} for r in first]
    assert len(stored["points"]) == 1, "one chunk of rows per write"
    # A late reading of the same minute, and the forecast of the first: added to the stored minute.
    aggregator.touch([contract.Reading(id=f"{sensor}-late", sensor=sensor, ts=at[2], v=9.0)])
    forecast = {"_id": f"{sensor}-0", "sensor": sensor, "ds": at[0], "v": 4.0, "yhat": 3.0}
    forecast |= {"yhat_lower": 2.5, "yhat_upper": 3.5, "anomaly": True, "model": {"name": "m", "hash": "h0"}}
    aggregator.touch_accuracy([forecast])
    assert timeline.flush(everything=True) == 5, "and the bridge's recent anomalies"
    stored = one(aggregates, {"_id": key})
    assert (stored["count"], stored["sum"], stored["min"], stored["max"]) == (3, 15.0, 2.0, 9.0)
    assert [p["id"] for p in points_of(stored)] == [f"{sensor}-0", f"{sensor}-1", f"{sensor}-late"]
    expected = {"id": f"{sensor}-0", "yhat": 3.0, "yhat_lower": 2.5, "yhat_upper": 3.5, "anomaly": True}
    assert forecasts_of(stored) == [expected]
    for step, name in ((HOUR, contract.COLLECTION_AGGREGATES_HOURLY), (DAY, contract.COLLECTION_AGGREGATES_DAILY)):
        rolled = one(pipeline.db[name], {"_id": period_id(sensor, FLOOR[step](minute))})
        assert (rolled["count"], rolled["sum"], rolled["min"], rolled["max"]) == (3, 15.0, 2.0, 9.0), name
    # A write retried after an error it survived (same write id) adds nothing.
    update = (key, {"$inc": {"count": 1, "sum": 1.0}})
    assert timeline._write({contract.COLLECTION_AGGREGATES: [update]}, "retry-1", retry=False) == 1
    assert timeline._write({contract.COLLECTION_AGGREGATES: [update]}, "retry-1", retry=True) == 0
    assert one(aggregates, {"_id": key})["count"] == 4

    # Accuracy: running totals every flush, the hour once settled; a retried total adds nothing.
    model = {"name": "m", "hash": "h1"}
    predictions = [
        {"_id": f"{sensor}-p{v}", "sensor": sensor, "model": model, "ds": at[0], "v": v, "yhat": 10.0}
        | {"yhat_lower": 9.0, "yhat_upper": 11.0, "anomaly": v > 11.0}
        for v in (10.0, 12.0)
    ]
    aggregator.touch_accuracy(predictions)
    assert aggregator.flush() == 4, "the running totals and hours of models h0 and h1"
    overall = one(pipeline.db[contract.COLLECTION_ACCURACY], {"_id": f"{sensor}|h1"})
    assert (overall["n"], overall["mae"], overall["coverage"]) == (2, 1.0, 0.5)
    hour = minute.replace(minute=0)
    hourly = one(pipeline.db[contract.COLLECTION_ACCURACY_HOURLY], {"_id": f"{sensor}|h1|{contract.iso(hour)}"})
    assert (hourly["n"], hourly["mae"], hourly["coverage"], hourly["hour"]) == (2, 1.0, 0.5, hour)
    accuracy = pipeline.db[contract.COLLECTION_ACCURACY]
    assert aggregator._write_scores({f"{sensor}|h1": Score("m", 2, 6.0, 0)}, "retry-2", retry=False) == 1
    assert aggregator._write_scores({f"{sensor}|h1": Score("m", 2, 6.0, 0)}, "retry-2", retry=True) == 0
    overall = one(accuracy, {"_id": f"{sensor}|h1"})
    assert (overall["n"], overall["abs_error_sum"], overall["inside"]) == (4, 8.0, 1)
    assert (overall["mae"], overall["coverage"]) == (2.0, 0.25), "set in the same update, from the totals it knew"
    # Another writer (a second bridge replica) added to the totals meanwhile: MAE and coverage follow what is stored.
    accuracy.update_one({"_id": f"{sensor}|h1"}, {"$inc": {"n": 4, "abs_error_sum": 8.0, "inside": 4}})
    assert aggregator._write_scores({f"{sensor}|h1": Score("m", 2, 6.0, 0)}, "w-3", retry=False) == 1
    overall = one(accuracy, {"_id": f"{sensor}|h1"})
    assert (overall["n"], overall["mae"], overall["coverage"]) == (10, 22.0 / 10, 5 / 10)
    store.close()


def test_an_accuracy_total_is_never_stored_without_its_mae_and_coverage(pipeline: Pipeline) -> None:
    """Each write of a running total is one update that also sets MAE and coverage (FerretDB).

    Watched with pymongo's command monitoring: a reader between two updates used
    to find totals without their MAE.
    """
    import threading

    from pymongo import monitoring

    from pipeline.settings import MongoSettings
    from Server.aggregates import Aggregator, Score
    from Server.store import Store

    commands = CommandLog()
    monitoring.register(commands)  # before the client exists: it applies to clients made from now on
    store = Store(
        MongoSettings.model_validate({"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.db.name})
    )
    aggregator = Aggregator(store, threading.Event())
    accuracy = pipeline.db[contract.COLLECTION_ACCURACY]
    sensor = pipeline.sensor_id(1)
    other, new = f"{sensor}|h-other", f"{sensor}|h-new"
    # One total another replica wrote first; one nobody has written.
    accuracy.insert_one({"_id": other, "n": 2, "abs_error_sum": 2.0, "inside": 2, "mae": 1.0, "coverage": 1.0})

    commands.commands.clear()
    assert aggregator._write_scores({other: Score("m", 2, 6.0, 0), new: Score("m", 1, 3.0, 1)}, "w-1", False) == 2
    assert commands.on(contract.COLLECTION_ACCURACY) == ["find", "findAndModify"] * 2, (
        "new to this bridge: read once, then one update"
    )
    stored = one(accuracy, {"_id": other})
    assert (stored["n"], stored["mae"], stored["coverage"]) == (4, 2.0, 0.5)
    stored = one(accuracy, {"_id": new})
    assert (stored["n"], stored["mae"], stored["coverage"]) == (1, 3.0, 1.0)

    commands.commands.clear()
    assert aggregator._write_scores({new: Score("m", 1, 1.0, 0)}, "w-2", False) == 1
    assert commands.on(contract.COLLECTION_ACCURACY) == ["findAndModify"], "known totals: one update, nothing else"
    stored = one(accuracy, {"_id": new})
    assert (stored["n"], stored["mae"], stored["coverage"]) == (2, 2.0, 0.5)
    store.close()


def test_a_derived_document_the_store_refuses_is_logged_not_retried_forever(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A minute whose sum overflowed (values the contract now refuses) must not stop every later aggregate."""
    import threading
    from datetime import UTC, datetime, timedelta

    from pipeline.periods import period_id
    from pipeline.settings import MongoSettings
    from Server.store import Store
    from Server.timeline import Timeline

    store = Store(
        MongoSettings.model_validate({"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.db.name})
    )
    timeline = Timeline(store, threading.Event())
    bad, good = pipeline.sensor_id("bad"), pipeline.sensor_id("good")
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    huge = [
        contract.Reading.model_construct(id=f"{bad}-{i}", sensor=bad, ts=minute, v=1.7e308, received_at=None)
        for i in range(2)
    ]
    timeline.touch([*huge, contract.Reading(id=f"{good}-1", sensor=good, ts=minute, v=1.0)])
    flush = threading.Thread(target=timeline.flush, daemon=True)
    flush.start()
    flush.join(timeout=60)
    assert not flush.is_alive(), "the flush must not retry a refused document forever"
    aggregates = pipeline.db[contract.COLLECTION_AGGREGATES]
    assert aggregates.find_one({"_id": period_id(good, minute)}) is not None
    assert aggregates.find_one({"_id": period_id(bad, minute)}) is None
    assert f"{contract.COLLECTION_AGGREGATES}: update" in caplog.text and "not written" in caplog.text
    store.close()


def test_a_flush_of_many_sensors_leaves_ferretdb_answering(pipeline: Pipeline) -> None:
    """FerretDB 1.24 hangs on an update command of more than about 100 statements (its pool of
    100 SQLite connections, one held per statement): the timeline sends them in smaller commands."""
    import threading
    from datetime import UTC, datetime

    from pipeline.periods import FLOOR, MINUTE, period_id
    from pipeline.settings import MongoSettings
    from Server.store import Store
    from Server.timeline import Timeline

    store = Store(
        MongoSettings.model_validate({"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.db.name})
    )
    timeline = Timeline(store, threading.Event())
    now = datetime.now(UTC)
    sensors = [pipeline.sensor_id(i) for i in range(300)]
    for round_ in range(2):  # the second round updates documents that exist
        timeline.touch([contract.Reading(id=f"{s}-{round_}", sensor=s, ts=now, v=1.0) for s in sensors])
        flush = threading.Thread(target=timeline.flush, daemon=True)
        flush.start()
        flush.join(timeout=60)
        assert not flush.is_alive(), "the flush hung FerretDB"
    minute = one(pipeline.db[contract.COLLECTION_AGGREGATES], {"_id": period_id(sensors[-1], FLOOR[MINUTE](now))})
    assert minute["count"] == 2
    store.close()
