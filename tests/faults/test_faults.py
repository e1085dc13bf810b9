"""Faults mid-stream: kill -9 each server and service in turn; nothing lost, nothing doubled.

Each test streams 10,000 readings from four sensors through the whole pipeline
and, mid-stream, kills (SIGKILL) one part and starts it again, or stops MongoDB
for 30 seconds. A sensor exits 0 only when the broker has acknowledged every
reading it published; after the pipeline catches up, MongoDB must hold exactly
one reading and one prediction per id the sensors sent, and Kafka's ``analytics``
and ``alerts`` topics one record per reading id, except where the README's
failure section says a copy may happen: a bridge killed between Kafka's
confirmation and its acknowledgement (``analytics``), a model service killed
before its offsets were committed (``alerts``).
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymongo.collection import Collection

from localstack.namespace import free_port
from localstack.services import ServiceProcess
from pipeline import contract
from tests.conftest import Pipeline, holds_for, wait_for
from tests.helpers import consume, metric, metric_once_serving, payload, publish, reading

pytestmark = pytest.mark.faults

SENSORS = 4
PER_SENSOR = 2_500
INTERVAL_S = "0.01"  # 4 sensors x ~100/s


def copies(pipeline: Pipeline, topic: str, want: int = 0) -> Counter[str]:
    """How many records each reading id has on one of the test's Kafka topics."""
    records = consume(pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"], pipeline.topics[topic], want=want, quiet_s=2.0)
    return Counter(json.loads(r.value())["id"] for r in records)


def assert_stored_once(pipeline: Pipeline, ids: list[str], per_sensor: int) -> tuple[Counter[str], Counter[str]]:
    """Every reading of ``ids``' sensors once in MongoDB with one prediction, none an error, every one on
    ``analytics`` and one alert record per stored alert; returns the copies per id on analytics and alerts."""
    readings = pipeline.db[contract.COLLECTION_READINGS]
    query = {"sensor": {"$in": ids}}
    reading_ids = [d["_id"] for d in readings.find(query, {"_id": 1})]
    prediction_ids = [d["_id"] for d in pipeline.db[contract.COLLECTION_PREDICTIONS].find(query, {"_id": 1})]
    total = len(ids) * per_sensor
    assert len(reading_ids) == len(set(reading_ids)) == total, "exactly one reading per id sent"
    for sensor_id in ids:
        assert readings.count_documents({"sensor": sensor_id}) == per_sensor, f"{sensor_id} lost or doubled readings"
    assert sorted(prediction_ids) == sorted(reading_ids), "exactly one prediction per reading"
    assert pipeline.db[contract.COLLECTION_PREDICTION_ERRORS].count_documents(query) == 0
    on_analytics = copies(pipeline, "KAFKA_TOPIC_READINGS", want=total)
    assert set(on_analytics) == set(reading_ids), "every reading reached analytics"
    alerts = pipeline.db[contract.COLLECTION_ALERTS].count_documents(query)
    on_alerts = copies(pipeline, "KAFKA_TOPIC_ALERTS", want=alerts)
    assert len(on_alerts) == alerts, "one alert record per stored alert"
    return on_analytics, on_alerts


def acknowledged_and_stored(
    pipeline: Pipeline, sensors: list[ServiceProcess], per_sensor: int
) -> tuple[Collection[dict[str, Any]], Collection[dict[str, Any]], dict[str, Any], int]:
    """Wait until sensors 1..n had every reading acknowledged and MongoDB holds at least as many readings and
    predictions; returns the two collections, the query of the test's sensors and the readings sent."""
    for sensor in sensors:
        assert sensor.wait(600) == 0, f"{sensor.name} did not get every reading acknowledged:\n{sensor.log_tail()}"
    ids = [pipeline.sensor_id(n) for n in range(1, len(sensors) + 1)]
    total = len(sensors) * per_sensor
    readings = pipeline.db[contract.COLLECTION_READINGS]
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    query: dict[str, Any] = {"sensor": {"$in": ids}}
    wait_for(lambda: readings.count_documents(query) >= total, 300, f"{total} readings", pipeline.logs)
    wait_for(lambda: predictions.count_documents(query) >= total, 300, f"{total} predictions", pipeline.logs)
    return readings, predictions, query, total


def stream_with_fault(
    pipeline: Pipeline, fault: Callable[[Pipeline], None], at_s: float = 6.0, doubles_may_reach: tuple[str, ...] = ()
) -> None:
    """Stream, inject ``fault`` after ``at_s`` seconds, then check every id arrived exactly once.

    ``doubles_may_reach`` names the Kafka topics (settings names) on which the
    README allows a copy after this fault; on every other one, each id must
    appear exactly once.
    """
    pipeline.start_server()
    pipeline.start_model()
    sensors = [
        pipeline.start_sensor(n, SENSOR_MAX_READINGS=str(PER_SENSOR), SENSOR_INTERVAL_S=INTERVAL_S, SENSOR_LOOP="false")
        for n in range(1, SENSORS + 1)
    ]
    time.sleep(at_s)
    assert all(s.alive for s in sensors), "the stream ended before the fault; raise PER_SENSOR"
    fault(pipeline)
    readings, predictions, query, total = acknowledged_and_stored(pipeline, sensors, PER_SENSOR)
    holds_for(
        lambda: readings.count_documents(query) == total and predictions.count_documents(query) == total,
        3,
        f"exactly {total} readings and predictions (nothing late or doubled)",
        pipeline.logs,
    )

    ids = [pipeline.sensor_id(n) for n in range(1, SENSORS + 1)]
    on_analytics, on_alerts = assert_stored_once(pipeline, ids, PER_SENSOR)
    doubled_readings = {i for i, n in on_analytics.items() if n > 1}
    for topic, seen in (("KAFKA_TOPIC_READINGS", on_analytics), ("KAFKA_TOPIC_ALERTS", on_alerts)):
        doubled = {i: n for i, n in seen.items() if n > 1}
        if topic == "KAFKA_TOPIC_ALERTS":
            # A reading copied on analytics is scored twice, so its alert may be too: that copy
            # follows from the one the README allows; any other is a fault of the model service.
            doubled = {i: n for i, n in doubled.items() if i not in doubled_readings}
        if topic not in doubles_may_reach:
            assert not doubled, f"{len(doubled)} reading ids have copies on {topic} after this fault"
    still_down = [p.name for p in pipeline.processes if not p.name.startswith("sensor") and not p.alive]
    assert not still_down, f"services down after the fault: {still_down}\n{pipeline.logs()}"


def kill_server_process(name: str) -> Callable[[Pipeline], None]:
    def fault(pipeline: Pipeline) -> None:
        pipeline.stack.stack.kill(name)
        time.sleep(2)
        pipeline.stack.stack.start_one(name)

    return fault


@pytest.mark.parametrize("server", ["mosquitto", "kafka", "ferretdb"])
def test_kill_a_server_mid_stream(pipeline: Pipeline, server: str) -> None:
    stream_with_fault(pipeline, kill_server_process(server))


def test_kill_the_bridge_mid_stream(pipeline: Pipeline) -> None:
    def fault(p: Pipeline) -> None:
        bridge = next(s for s in p.processes if s.name == "server-1")
        bridge.kill()
        p.processes.remove(bridge)
        time.sleep(2)
        p.start_server()  # same client id: its persistent session holds what was not acknowledged

    stream_with_fault(pipeline, fault, doubles_may_reach=("KAFKA_TOPIC_READINGS",))


def test_kill_the_model_service_mid_stream(pipeline: Pipeline) -> None:
    def fault(p: Pipeline) -> None:
        model = next(s for s in p.processes if s.name == "model-1")
        model.kill()
        p.processes.remove(model)
        time.sleep(2)
        p.start_model()

    stream_with_fault(pipeline, fault, doubles_may_reach=("KAFKA_TOPIC_ALERTS",))


def test_readings_nobody_subscribes_to_are_held_until_the_bridge_is_back(pipeline: Pipeline) -> None:
    """After a Mosquitto restart the bridge's shared subscription is gone until it reconnects
    (Mosquitto 2.0 does not restore it), so the broker drops what sensors send meanwhile
    ("no matching subscribers"). The sensor holds those readings and sends them again."""
    bridge = pipeline.start_server()
    bridge.stop()
    pipeline.processes.remove(bridge)
    kill_server_process("mosquitto")(pipeline)
    count, port = 20, str(free_port())
    sensor = pipeline.start_sensor(
        1, SENSOR_MAX_READINGS=str(count), SENSOR_INTERVAL_S="0", SENSOR_LOOP="false", HEALTH_PORT=port
    )

    wait_for(
        lambda: metric_once_serving(port, "pipeline_sensor_held") > 0,
        30,
        "the sensor holding its readings",
        pipeline.logs,
    )
    readings = pipeline.db[contract.COLLECTION_READINGS]
    query = {"sensor": pipeline.sensor_id(1)}
    assert sensor.alive, "the sensor must wait for its held readings, not exit"
    pipeline.start_server()
    assert sensor.wait(120) == 0, f"the sensor did not get its readings acknowledged:\n{sensor.log_tail()}"
    wait_for(lambda: readings.count_documents(query) >= count, 60, f"{count} readings", pipeline.logs)
    holds_for(lambda: readings.count_documents(query) == count, 2, f"exactly {count} readings", pipeline.logs)


def test_after_a_long_outage_the_sensor_replays_what_was_acknowledged_before_it(pipeline: Pipeline) -> None:
    """The replay window ends when the connection was lost: a broker away for longer than
    SENSOR_REPLAY_S still gets the readings it acknowledged just before it crashed."""
    pipeline.start_server()
    sensor = pipeline.start_sensor(1, SENSOR_INTERVAL_S="0.2", SENSOR_REPLAY_S="2")
    readings = pipeline.db[contract.COLLECTION_READINGS]
    query = {"sensor": pipeline.sensor_id(1)}
    wait_for(lambda: readings.count_documents(query) >= 10, 30, "the sensor's first readings", pipeline.logs)
    pipeline.stack.stack.kill("mosquitto")
    time.sleep(5)  # longer than SENSOR_REPLAY_S
    pipeline.stack.stack.start_one("mosquitto")
    port = sensor.env["HEALTH_PORT"]
    replayed = wait_for(lambda: metric(port, "pipeline_sensor_replayed_total"), 30, "the replay", pipeline.logs)
    assert 5 <= replayed <= 15, f"expected about 2 s of readings at 5/s, replayed {replayed}"


def test_mongodb_down_for_30_seconds(pipeline: Pipeline) -> None:
    def fault(p: Pipeline) -> None:
        p.stack.stack.stop_one("ferretdb")
        time.sleep(30)
        p.stack.stack.start_one("ferretdb")

    stream_with_fault(pipeline, fault, at_s=3.0)


def test_the_bridge_reports_kafka_down_at_once_and_logs_it_readably(pipeline: Pipeline) -> None:
    import urllib.error
    import urllib.request

    server = pipeline.start_server()
    url = f"http://127.0.0.1:{server.env['HEALTH_PORT']}/readyz"

    def kafka_check() -> bool | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(json.load(response)["checks"]["kafka"])
        except urllib.error.HTTPError as error:
            return bool(json.load(error)["checks"]["kafka"])

    assert kafka_check() is True
    pipeline.stack.stack.stop_one("kafka")
    try:
        wait_for(lambda: kafka_check() is False, 30, "/readyz to report Kafka down", pipeline.logs)
    finally:
        pipeline.stack.stack.start_one("kafka")
    sensor = pipeline.sensor_id(1)
    assert publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(reading(sensor, 1.0))]) == [0]
    wait_for(lambda: kafka_check() is True, 60, "/readyz to report Kafka back", pipeline.logs)
    log = server.log_tail(400)
    assert "Kafka is unreachable" in log
    assert "%3|" not in log, "librdkafka's raw lines must go through the service's logging"


def _sys_store_count(pipeline: Pipeline) -> tuple[Callable[[], float], mqtt.Client]:
    """The latest $SYS/broker/store/messages/count, read as the bridge's user (it may read $SYS); and the client."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{pipeline.name}-bridge-probe", protocol=mqtt.MQTTv5)
    client.username_pw_set(pipeline.stack.env["MQTT_SERVER_USERNAME"], pipeline.stack.env["MQTT_SERVER_PASSWORD"])
    latest = [0.0]
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe("$SYS/broker/store/messages/count")
    client.on_message = lambda _c, _u, message: latest.__setitem__(0, float(message.payload))
    client.connect(pipeline.stack.env["MQTT_HOST"], int(pipeline.stack.env["MQTT_PORT"]))
    client.loop_start()

    def count() -> float:
        return latest[0]

    return count, client


def _publish_share(args: tuple[dict[str, str], str, list[bytes]]) -> list[int]:
    env, sensor, payloads = args
    return publish(env, sensor, contract.readings_topic(sensor), payloads)


def test_a_bridge_outage_past_the_old_200000_message_queue_limit_loses_nothing(pipeline: Pipeline) -> None:
    """While the bridge is away its persistent session queues every reading (README "Outage budget");
    mosquitto.conf's old max_queued_messages of 200,000 dropped the rest, acknowledged to the sensors."""
    per_sensor, sensors = 52_500, 4  # 210,000 readings, past the old limit
    bridge = pipeline.start_server()
    bridge.stop()  # its session, with the shared subscription, stays on the broker
    pipeline.processes.remove(bridge)
    ids = [pipeline.sensor_id(n) for n in range(1, sensors + 1)]
    batches = [
        (pipeline.stack.env, sensor, [payload(reading(sensor, float(i % 100))) for i in range(per_sensor)])
        for sensor in ids
    ]
    with multiprocessing.get_context("spawn").Pool(sensors) as pool:
        codes = pool.map(_publish_share, batches)
    for sensor, answers in zip(ids, codes, strict=True):
        assert answers == [0] * per_sensor, f"{sensor}: the broker did not take every reading: {Counter(answers)}"
    # Mosquitto publishes its store's size in $SYS every 10 s (retained): wait until it counts them all,
    # so the value the bridge reads when it connects is this backlog, not one from mid-publishing.
    sys_count, probe = _sys_store_count(pipeline)
    try:
        wait_for(lambda: sys_count() >= per_sensor * sensors, 60, "the broker's count of the backlog", pipeline.logs)
    finally:
        probe.disconnect()
        probe.loop_stop()
    server = pipeline.start_server(wait=False)

    def broker_holds() -> float:
        # The bridge reads Mosquitto's store size from $SYS (retained, so at once on connect).
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.env['HEALTH_PORT']}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return 0.0
        line = next((x for x in text.splitlines() if x.startswith("pipeline_broker_stored_messages ")), "x 0")
        return float(line.split()[1])

    held = wait_for(broker_holds, 60, "the broker's queue depth on /metrics", pipeline.logs)
    assert held >= per_sensor * sensors, f"the bridge reported the broker holding {held} messages with 210,000 queued"
    readings = pipeline.db[contract.COLLECTION_READINGS]
    total = per_sensor * sensors
    query = {"sensor": {"$in": ids}}
    wait_for(lambda: readings.count_documents(query) >= total, 600, f"{total} readings", pipeline.logs)
    for sensor in ids:
        assert readings.count_documents({"sensor": sensor}) == per_sensor, f"{sensor} lost readings in the outage"


def _spooled_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {json.loads(row[0])["id"] for row in db.execute("SELECT payload FROM pending")}


def test_a_sensor_killed_while_the_broker_is_away_sends_what_it_held_when_it_starts_again(pipeline: Pipeline) -> None:
    """The readings in a sensor's queue are on its disk (SENSOR_SPOOL_DIR): kill -9 loses none of them."""
    pipeline.start_server()
    first_run, port = 200, str(free_port())
    sensor = pipeline.start_sensor(
        1, SENSOR_MAX_READINGS=str(first_run), SENSOR_INTERVAL_S="0.05", SENSOR_LOOP="false", HEALTH_PORT=port
    )
    readings = pipeline.db[contract.COLLECTION_READINGS]
    query = {"sensor": pipeline.sensor_id(1)}

    def counted(name: str) -> float:
        try:
            return metric(port, name)
        except OSError:  # not serving yet
            return 0.0

    # The sensor's own counters, not MongoDB's: on a database holding earlier tests' readings a count is slow.
    wait_for(lambda: counted("pipeline_sensor_acknowledged_total") >= 10, 30, "acknowledgements", pipeline.logs)
    pipeline.stack.stack.stop_one("mosquitto")
    try:
        # It generates the rest of its readings into its queue, then waits for the broker: kill it there.
        wait_for(
            lambda: counted("pipeline_sensor_published_total") >= first_run, 60, "all readings made", pipeline.logs
        )
        assert sensor.alive, "the sensor must still be waiting for the broker"
        sensor.kill()
        pipeline.processes.remove(sensor)
        spool = Path(sensor.env["SENSOR_SPOOL_DIR"]) / f"{pipeline.sensor_id(1)}.sqlite"
        held = _spooled_ids(spool)
        assert held, "the killed sensor's queue must be on its disk"
    finally:
        pipeline.stack.stack.start_one("mosquitto")
    second_run = 5
    again = pipeline.start_sensor(1, SENSOR_MAX_READINGS=str(second_run), SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    assert again.wait(120) == 0, again.log_tail()
    assert f"{len(held)} readings from before the last stop were never acknowledged" in again.log_tail()
    total = first_run + second_run
    wait_for(lambda: readings.count_documents(query) >= total, 60, f"{total} readings", pipeline.logs)
    holds_for(lambda: readings.count_documents(query) == total, 2, f"exactly {total} readings", pipeline.logs)
    stored = {d["_id"] for d in readings.find(query, {"_id": 1})}
    assert len(stored) == total, f"{len(stored)} stored; every reading of both runs exactly once is {total}"
    assert held <= stored
    assert not _spooled_ids(spool), "acknowledged readings leave the disk"


def test_a_sensor_whose_queue_is_full_pauses_its_csv_and_says_so(pipeline: Pipeline) -> None:
    pipeline.start_server()
    port, total = str(free_port()), 1000  # 20 s at 0.02 s: still running when the broker stops
    sensor = pipeline.start_sensor(
        1,
        SENSOR_MAX_READINGS=str(total),
        SENSOR_INTERVAL_S="0.02",
        SENSOR_LOOP="false",
        SENSOR_QUEUE_MAX="10",
        HEALTH_PORT=port,
    )
    readings = pipeline.db[contract.COLLECTION_READINGS]
    query = {"sensor": pipeline.sensor_id(1)}

    # The sensor's own count, not MongoDB's: on a database holding earlier tests' readings a count is slow.
    wait_for(
        lambda: metric_once_serving(port, "pipeline_sensor_acknowledged_total"),
        30,
        "the broker's first acknowledgement",
        pipeline.logs,
    )
    pipeline.stack.stack.stop_one("mosquitto")
    try:
        # Paused: with the broker away, no more than the queue's 10 readings leave the CSV.
        wait_for(lambda: metric(port, "pipeline_sensor_paused") == 1, 30, "the sensor to pause", pipeline.logs)
        published = metric(port, "pipeline_sensor_published_total")
        holds_for(
            lambda: metric(port, "pipeline_sensor_published_total") == published,
            2,
            "no reading leaving the CSV while paused",
            pipeline.logs,
        )
        assert published < total and sensor.alive
    finally:
        pipeline.stack.stack.start_one("mosquitto")
    assert sensor.wait(120) == 0, sensor.log_tail()
    wait_for(lambda: readings.count_documents(query) >= total, 60, f"all {total} readings", pipeline.logs)
    holds_for(lambda: readings.count_documents(query) == total, 1, f"exactly {total} readings", pipeline.logs)
