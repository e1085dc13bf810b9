"""The bridge's per-sensor series and readiness on its /metrics, on real Mosquitto, Kafka and FerretDB.

What the alerting rules read (monitoring/alerts.yml: SensorSilent, ServiceNotReady,
BridgeNotConnected), scraped over HTTP as Prometheus does.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from localstack.services import ROOT
from pipeline import contract
from tests.conftest import Pipeline, wait_for
from tests.helpers import api, payload, prometheus, publish, reading

pytestmark = pytest.mark.integration

RULES = ROOT / "monitoring" / "alerts.yml"


def every_second(workdir: Path) -> Path:
    """monitoring/alerts.yml with every group evaluated at Prometheus's interval (1 s here), not its own."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group.pop("interval", None)
    path = workdir / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def rule_expr(alert: str) -> str:
    """The expression of ``alert`` in monitoring/alerts.yml."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                return str(rule["expr"])
    raise AssertionError(f"{RULES}: no alert {alert}")


def scrape(port: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_readings_of_two_sensors_make_two_series_with_their_counts(pipeline: Pipeline) -> None:
    started = time.time()
    server = pipeline.start_server(SERVER_SENSOR_METRICS_MAX="2")
    port = server.env["HEALTH_PORT"]
    a, b, late = pipeline.sensor_id(1), pipeline.sensor_id(2), pipeline.sensor_id(3)

    def stored(sensor: str) -> float | None:
        return scrape(port).get(("pipeline_sensor_readings_stored_total", (("sensor", sensor),)))

    def last_stored(sensor: str) -> float | None:
        return scrape(port).get(("pipeline_sensor_last_stored_timestamp_seconds", (("sensor", sensor),)))

    of_a = [payload(reading(a, float(i))) for i in range(3)]
    of_b = [payload(reading(b, float(i))) for i in range(5)]
    # b's first reading twice (a lost PUBACK): stored once, counted once. A payload that breaks the
    # contract, on the third sensor's topic: rejected, so no series for that id.
    assert publish(pipeline.stack.env, a, contract.readings_topic(a), of_a) == [0] * 3
    assert publish(pipeline.stack.env, b, contract.readings_topic(b), [*of_b, of_b[0]]) == [0] * 6
    assert publish(pipeline.stack.env, late, contract.readings_topic(late), [b"not json"]) == [0]

    readings = pipeline.db[contract.COLLECTION_READINGS]
    wait_for(
        lambda: readings.count_documents({"sensor": {"$in": [a, b]}}) == 8, 60, "8 readings in MongoDB", pipeline.logs
    )
    rejections = pipeline.db[contract.COLLECTION_REJECTIONS]
    wait_for(lambda: rejections.find_one({"topic": contract.readings_topic(late)}), 30, "the rejection", pipeline.logs)
    wait_for(lambda: (stored(a), stored(b)) == (3, 5), 30, "the counts on /metrics", pipeline.logs)
    assert stored(late) is None, "a rejected payload's sensor id gets no series"
    for sensor in (a, b):
        last = last_stored(sensor)
        assert last is not None and started <= last <= time.time(), (sensor, last, started)

    # The third sensor's valid readings are stored, but two sensors already have series.
    assert publish(pipeline.stack.env, late, contract.readings_topic(late), [payload(reading(late, 1.0))]) == [0]
    wait_for(lambda: readings.count_documents({"sensor": late}) == 1, 60, "the late reading", pipeline.logs)
    assert publish(pipeline.stack.env, a, contract.readings_topic(a), [payload(reading(a, 9.0))]) == [0]
    wait_for(lambda: stored(a) == 4, 30, "a's count to move on", pipeline.logs)
    metrics = scrape(port)
    assert not [key for key in metrics if ("sensor", late) in key[1]], "past SERVER_SENSOR_METRICS_MAX: no series"
    assert stored(b) == 5

    # Readiness on the same page: every check of /readyz, as it answers now.
    ready = {dict(labels)["check"]: value for (name, labels), value in metrics.items() if name == "pipeline_ready"}
    assert ready == {"mqtt": 1, "mongodb": 1, "kafka": 1}


def test_the_rules_read_the_bridges_series_as_prometheus_scrapes_them(pipeline: Pipeline, tmp_path: Path) -> None:
    """SensorSilent, ServiceNotReady and BridgeNotConnected, as written, on what a real Prometheus scraped.

    The rules are monitoring/alerts.yml's, evaluated every second. The silence is
    not waited for: SensorSilent is asked at a time an hour ahead (the API's
    ``time``), when the readings scraped now are the sensors' last.
    """
    server = pipeline.start_server()
    a, b = pipeline.sensor_id(1), pipeline.sensor_id(2)
    with prometheus(
        {"server": f"127.0.0.1:{server.env['HEALTH_PORT']}"},
        tmp_path,
        pipeline.log_dir / "prometheus.log",
        rule_files=[every_second(tmp_path)],
    ) as base:

        def query(expr: str, at: float | None = None) -> list[dict[str, Any]]:
            params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
            return list(api(base, "/api/v1/query", **params)["result"])

        def scraped(sensor: str) -> float:
            found = query(f'pipeline_sensor_readings_stored_total{{job="server", sensor="{sensor}"}}')
            return float(found[0]["value"][1]) if found else 0.0

        # Prometheus takes its first targets some seconds after it starts.
        wait_for(
            lambda: [r["value"][1] for r in query('up{job="server"}')] == ["1"], 30, "the first scrape", pipeline.logs
        )
        # Readings while Prometheus scrapes every second: each sensor's counter rises across scrapes.
        for i in range(8):
            for sensor in (a, b):
                assert publish(
                    pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(reading(sensor, i))]
                ) == [0]
            time.sleep(0.5)
        wait_for(lambda: scraped(a) == scraped(b) == 8, 30, "Prometheus to scrape every reading", pipeline.logs)
        # SensorSilent reads what the rules record from these: wait for the last values to be recorded.
        wait_for(
            lambda: (
                {
                    r["metric"]["sensor"]: r["value"][1]
                    for r in query("sensor:pipeline_sensor_last_stored_timestamp_seconds:max")
                }
                == {
                    sensor: r["value"][1]
                    for sensor in (a, b)
                    for r in query(f'pipeline_sensor_last_stored_timestamp_seconds{{sensor="{sensor}"}}')
                }
            ),
            30,
            "the rules to record the last readings",
            pipeline.logs,
        )
        now = time.time()

        ready = {r["metric"]["check"]: r["value"][1] for r in query('pipeline_ready{job="server"}')}
        assert ready == {"mqtt": "1", "mongodb": "1", "kafka": "1"}
        assert query(rule_expr("ServiceNotReady")) == []
        assert query(rule_expr("BridgeNotConnected")) == []

        def silent(at: float) -> dict[str, float]:
            return {r["metric"]["sensor"]: float(r["value"][1]) for r in query(rule_expr("SensorSilent"), at)}

        assert silent(now) == {}, "both just sent"
        assert silent(now + 60) == {}, "silent a minute: under the 2-minute floor"
        # An hour on: far more than three of their intervals (as estimated from 8 readings in an hour).
        later = silent(now + 3500)
        assert set(later) == {a, b}, later
        assert all(3490 < seconds < 3520 for seconds in later.values()), later
