"""Monitoring on the local stack: a real Prometheus scrapes the services, and every /metrics, /healthz, /readyz answers.

Prometheus is Debian's package (localstack/install.sh); the Compose stack runs
the official image with monitoring/prometheus.yml instead, whose targets and
Grafana dashboard tests/unit/test_compose.py checks without Docker. Here the
dashboard's queries also run against the real Prometheus, so a query it cannot
parse fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from localstack.namespace import free_port
from localstack.services import ROOT
from pipeline import contract
from tests.conftest import Pipeline, wait_for
from tests.helpers import api, get, prometheus

pytestmark = pytest.mark.e2e

READINGS = 40
#: The bridge's and the model's counts, for a timeout's message (one series per job: summed).
COUNTS = 'sum by (job) ({__name__=~"pipeline_(readings|results)_.*_total"})'
DASHBOARD_JSON = ROOT / "monitoring" / "grafana" / "dashboards" / "pipeline.json"


# --- helpers -----------------------------------------------------------------------------


def query(base: str, expr: str) -> dict[str, float]:
    """An instant query's result as {job: value} (a vector's series are told apart by their job)."""
    return {r["metric"].get("job", ""): float(r["value"][1]) for r in api(base, "/api/v1/query", query=expr)["result"]}


def target_health(base: str) -> dict[str, str]:
    return {t["labels"]["job"]: t["health"] for t in api(base, "/api/v1/targets")["activeTargets"]}


def families(text: str) -> dict[str, str]:
    """The metric families of a /metrics body: {name: type} (counters without ``_total``)."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


#: What each service's /metrics must expose, written here rather than read from its metrics.py, so a metric
#: deleted there fails this test (``{name: type}``, counters without ``_total``, as the parser names them).
DECLARED = {
    "Server": {
        "pipeline_readings_received": "counter",
        "pipeline_readings_stored": "counter",
        "pipeline_readings_forwarded": "counter",
        "pipeline_readings_duplicate": "counter",
        "pipeline_rejections": "counter",
        "pipeline_results_stored": "counter",
        "pipeline_bridge_batch_size": "histogram",
        "pipeline_bridge_inbox": "gauge",
        "pipeline_broker_stored_messages": "gauge",
        "pipeline_broker_stored_bytes": "gauge",
        "pipeline_mongo_write_seconds": "histogram",
        "pipeline_publish_to_stored_seconds": "histogram",
        "pipeline_scored_to_stored_seconds": "histogram",
        "pipeline_publish_to_prediction_stored_seconds": "histogram",
        "pipeline_sensor_readings_stored": "counter",
        "pipeline_sensor_last_stored_timestamp_seconds": "gauge",
        "pipeline_retention_deleted": "counter",
        "pipeline_timeline_flush_seconds": "histogram",
    },
    "Models_analysis": {
        "pipeline_readings_scored": "counter",
        "pipeline_prediction_errors": "counter",
        "pipeline_anomalies": "counter",
        "pipeline_model_rejections": "counter",
        "pipeline_score_batch_size": "histogram",
        "pipeline_predict_seconds": "histogram",
        "pipeline_forecasts": "counter",
        "pipeline_forecast_grids": "counter",
        "pipeline_forecast_grids_kept": "gauge",
        "pipeline_stored_to_scored_seconds": "histogram",
        "pipeline_model_info": "gauge",
    },
    "Data_collection": {
        "pipeline_sensor_published": "counter",
        "pipeline_sensor_acknowledged": "counter",
        "pipeline_sensor_refused": "counter",
        "pipeline_sensor_replayed": "counter",
        "pipeline_sensor_pending": "gauge",
        "pipeline_sensor_held": "gauge",
        "pipeline_sensor_paused": "gauge",
    },
    "Dashboard": {"pipeline_dashboard_query_seconds": "histogram", "pipeline_dashboard_unauthorized": "counter"},
}


# --- Prometheus scrapes what the pipeline did ----------------------------------------------


def test_prometheus_scrapes_the_counts_the_pipeline_reached(pipeline: Pipeline, tmp_path: Path) -> None:
    server = pipeline.start_server()
    model = pipeline.start_model()
    sensor_port = str(free_port())
    targets = {
        "server": f"127.0.0.1:{server.env['HEALTH_PORT']}",
        "model_analysis": f"127.0.0.1:{model.env['HEALTH_PORT']}",
        "sensor": f"127.0.0.1:{sensor_port}",
    }
    with prometheus(targets, tmp_path, pipeline.log_dir / "prometheus.log") as base:
        # The sensor starts once Prometheus runs: it lives READINGS x 0.2 s, long enough for several scrapes.
        sensor = pipeline.start_sensor(
            1,
            HEALTH_PORT=sensor_port,
            SENSOR_INTERVAL_S="0.2",
            SENSOR_MAX_READINGS=str(READINGS),
            SENSOR_LOOP="false",
        )
        wait_for(
            lambda: target_health(base) == dict.fromkeys(targets, "up"),
            30,
            "all three targets up in /api/v1/targets",
            lambda: f"{target_health(base)}\n{pipeline.logs()}",
        )
        assert query(base, "up") == dict.fromkeys(targets, 1.0)
        published = wait_for(
            lambda: query(base, "pipeline_sensor_published_total").get("sensor"),
            30,
            "the sensor's published readings in Prometheus",
            pipeline.logs,
        )
        assert 0 < published <= READINGS
        assert sensor.wait(120) == 0, sensor.log_tail()

        # Every reading stored, forwarded and scored exactly once, as Prometheus scraped it.
        wait_for(
            lambda: (
                query(base, "pipeline_readings_scored_total").get("model_analysis") == READINGS
                and query(base, 'pipeline_results_stored_total{kind="prediction"}').get("server") == READINGS
            ),
            90,
            f"{READINGS} readings scored and their predictions stored, in Prometheus",
            lambda: f"{query(base, COUNTS)}\n{pipeline.logs()}",
        )
        wait_for(lambda: target_health(base)["sensor"] == "down", 30, "the finished sensor's target down")
        for metric, job in (
            ("pipeline_readings_received_total", "server"),
            ("pipeline_readings_stored_total", "server"),
            ("pipeline_readings_forwarded_total", "server"),
            ("pipeline_readings_scored_total", "model_analysis"),
            ('pipeline_results_stored_total{kind="prediction"}', "server"),
        ):
            assert query(base, metric) == {job: READINGS}, f"{metric} as scraped"
        assert query(base, "pipeline_readings_duplicate_total") == {"server": 0.0}
        assert query(base, "sum(pipeline_rejections_total) or vector(0)") == {"": 0.0}
        assert query(base, "pipeline_prediction_errors_total") == {"model_analysis": 0.0}
        flagged = pipeline.db[contract.COLLECTION_PREDICTIONS].count_documents(
            {"sensor": pipeline.sensor_id(1), "anomaly": True}
        )
        assert query(base, "pipeline_anomalies_total") == {"model_analysis": float(flagged)}, "as MongoDB has them"
        # The sensor's last scrape, before it exited: its readings, all acknowledged or not yet.
        last = query(base, "max_over_time(pipeline_sensor_published_total[5m])")["sensor"]
        assert published <= last <= READINGS
        assert query(base, 'pipeline_connected{server="mqtt"}') == {"server": 1.0}
        (model_info,) = api(base, "/api/v1/query", query="pipeline_model_info")["result"]
        assert model_info["metric"]["name"] and model_info["metric"]["hash"], model_info
        # Per-hop latency histograms got one observation per reading.
        assert query(base, "pipeline_publish_to_stored_seconds_count") == {"server": READINGS}
        assert query(base, "pipeline_stored_to_scored_seconds_count") == {"model_analysis": READINGS}
        assert query(base, "pipeline_publish_to_prediction_stored_seconds_count") == {"server": READINGS}

        # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
        dashboard = json.loads(DASHBOARD_JSON.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]
        assert exprs
        for expr in exprs:
            api(base, "/api/v1/query", query=expr.replace("$__rate_interval", "1m"))
        p95 = query(base, "histogram_quantile(0.95, sum by (le) (rate(pipeline_publish_to_stored_seconds_bucket[5m])))")
        assert p95, "no p95 of publish -> stored"


# --- every service's /metrics, /healthz and /readyz ----------------------------------------


def test_every_service_serves_metrics_health_and_readiness(pipeline: Pipeline) -> None:
    server = pipeline.start_server()
    model = pipeline.start_model()
    sensor_port = str(free_port())
    sensor = pipeline.start_sensor(1, HEALTH_PORT=sensor_port, SENSOR_INTERVAL_S="0.2")
    pipeline.wait_ready(sensor)
    dashboard = pipeline.start_dashboard()
    shared = {"pipeline_connected": "gauge", "pipeline_connections": "counter"}
    services = {
        "server": (server.env["HEALTH_PORT"], {**DECLARED["Server"], **shared, "pipeline_consumer_lag": "gauge"}),
        "model": (model.env["HEALTH_PORT"], {**DECLARED["Models_analysis"], "pipeline_consumer_lag": "gauge"}),
        "sensor": (sensor_port, {**DECLARED["Data_collection"], **shared}),
        "dashboard": (dashboard.env["DASHBOARD_PORT"], DECLARED["Dashboard"]),
    }
    for name, (port, expected) in services.items():
        base = f"http://127.0.0.1:{port}"
        for path in ("/healthz", "/readyz"):
            status, body = get(base + path)
            assert status == 200, f"{name} {path}: {status} {body!r}"
        status, body = get(base + "/metrics")
        assert status == 200, f"{name} /metrics: {status}"
        exposed = families(body.decode())
        missing = {metric: kind for metric, kind in expected.items() if exposed.get(metric) != kind}
        assert not missing, f"{name} /metrics lacks (or mistypes) {missing}"
    # The sensor is publishing: its counters move, as its /metrics shows.
    wait_for(
        lambda: b"pipeline_sensor_acknowledged_total 0.0" not in get(f"http://127.0.0.1:{sensor_port}/metrics")[1],
        30,
        "the sensor's acknowledged readings to grow",
    )


def test_readyz_is_503_while_a_dependency_is_down(pipeline: Pipeline) -> None:
    # Nobody listens on this MQTT port: the bridge is alive but not ready.
    bridge = pipeline.start_server(wait=False, MQTT_PORT=str(free_port()))
    base = f"http://127.0.0.1:{bridge.env['HEALTH_PORT']}"

    def answers() -> tuple[int, int] | None:
        assert bridge.alive, bridge.log_tail()
        try:
            return get(base + "/healthz")[0], get(base + "/readyz")[0]
        except OSError:
            return None

    assert wait_for(answers, 60, "the bridge's health server", pipeline.logs) == (200, 503)
    status, body = get(base + "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["mqtt"] is False, body
    assert families(get(base + "/metrics")[1].decode())["pipeline_readings_received"] == "counter"
