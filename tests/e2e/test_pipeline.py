"""The whole pipeline as processes on the real servers: sensors -> ... -> predictions in MongoDB."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from localstack.services import ROOT
from Models_analysis.model import load_model
from pipeline import contract
from tests.conftest import ARTIFACTS, Pipeline, wait_for
from tests.helpers import chromium, uncommitted

pytestmark = pytest.mark.e2e

PER_SENSOR = 40


def test_three_sensors_every_reading_gets_one_prediction(pipeline: Pipeline) -> None:
    pipeline.start_server()
    pipeline.start_model()
    sensors = [
        pipeline.start_sensor(n, SENSOR_MAX_READINGS=str(PER_SENSOR), SENSOR_INTERVAL_S="0.02", SENSOR_LOOP="false")
        for n in (1, 2, 3)
    ]
    for sensor in sensors:
        assert sensor.wait(120) == 0, sensor.log_tail()
    ids = [pipeline.sensor_id(n) for n in (1, 2, 3)]
    readings = pipeline.db[contract.COLLECTION_READINGS]
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    total = 3 * PER_SENSOR
    wait_for(
        lambda: predictions.count_documents({"sensor": {"$in": ids}}) >= total,
        120,
        f"{total} predictions",
        pipeline.logs,
    )

    reading_ids = {d["_id"] for d in readings.find({"sensor": {"$in": ids}}, {"_id": 1})}
    stored = list(predictions.find({"sensor": {"$in": ids}}))
    assert len(reading_ids) == total, "every published reading stored once"
    assert sorted(p["_id"] for p in stored) == sorted(reading_ids), "one prediction per reading"
    assert {p["sensor"] for p in stored} == set(ids), "three sensors, three ids"
    identity = load_model(ROOT / "models" / "default.joblib").identity
    for prediction in stored:
        assert prediction["yhat_lower"] <= prediction["yhat"] <= prediction["yhat_upper"]
        assert prediction["anomaly"] == (not prediction["yhat_lower"] <= prediction["v"] <= prediction["yhat_upper"])
        assert prediction["model"] == identity.model_dump()
    by_id = {d["_id"]: d for d in readings.find({"sensor": {"$in": ids}})}
    assert all(p["v"] == by_id[p["_id"]]["v"] and p["ds"] == by_id[p["_id"]]["ts"] for p in stored)

    # Offsets are committed at most once a second while running, also once the input has gone quiet,
    # and once more on a clean stop, so a restart scores and stores nothing twice.
    bootstrap = pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"]
    groups = {f"{pipeline.name}-models": "KAFKA_TOPIC_READINGS", f"{pipeline.name}-results": "KAFKA_TOPIC_RESULTS"}
    wait_for(
        lambda: all(uncommitted(bootstrap, group, pipeline.topics[topic]) == 0 for group, topic in groups.items()),
        15,
        "both consumer groups committed everything while running and idle",
        pipeline.logs,
    )
    assert all(code == 0 for code in pipeline.stop_all().values())
    assert uncommitted(bootstrap, f"{pipeline.name}-models", pipeline.topics["KAFKA_TOPIC_READINGS"]) == 0
    assert uncommitted(bootstrap, f"{pipeline.name}-results", pipeline.topics["KAFKA_TOPIC_RESULTS"]) == 0


def test_mongo_express_shows_the_readings(pipeline: Pipeline) -> None:
    pipeline.start_server()
    sensor = pipeline.start_sensor(1, SENSOR_MAX_READINGS="5", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    assert sensor.wait(60) == 0, sensor.log_tail()
    readings = pipeline.db[contract.COLLECTION_READINGS]
    wait_for(lambda: readings.count_documents({"sensor": pipeline.sensor_id(1)}) == 5, 60, "5 readings", pipeline.logs)
    newest = readings.find_one({"sensor": pipeline.sensor_id(1)})
    assert newest is not None and newest["sensor"] == pipeline.sensor_id(1) and isinstance(newest["v"], float)

    env = pipeline.stack.env
    base = f"http://127.0.0.1:{env['MONGO_EXPRESS_PORT']}"
    # mongo-express's simple query (key/value/type=S for a string) shows this test's sensor.
    query = f"key=sensor&value={pipeline.sensor_id(1)}&type=S"
    page = f"{base}/db/{env['MONGO_DATABASE']}/{contract.COLLECTION_READINGS}?{query}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(page, timeout=30)
    assert refused.value.code == 401, "mongo-express must refuse requests without credentials"

    token = base64.b64encode(f"{env['MONGO_EXPRESS_USERNAME']}:{env['MONGO_EXPRESS_PASSWORD']}".encode()).decode()
    request = urllib.request.Request(page, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        html = response.read().decode()
    assert response.status == 200
    assert contract.COLLECTION_READINGS in html and pipeline.sensor_id(1) in html
    assert str(newest["_id"]) in html, "the page lists the stored readings"

    screenshot = ARTIFACTS / "mongo-express-readings.png"
    take_screenshot(
        page.replace("http://", f"http://{env['MONGO_EXPRESS_USERNAME']}:{env['MONGO_EXPRESS_PASSWORD']}@"), screenshot
    )
    assert screenshot.stat().st_size > 10_000, "the screenshot is blank"


def take_screenshot(url: str, path: Path) -> None:
    """A headless Chromium screenshot of ``url``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    chromium(url, f"--screenshot={path}")
