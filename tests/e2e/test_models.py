"""Bring your own model, on the real pipeline: train, swap without restart, per-sensor, alerts, accuracy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import pytest

from localstack.namespace import free_port
from localstack.services import ROOT
from Models_analysis.model import file_hash, load_model
from Models_analysis.rescore import rescored_id
from pipeline import contract
from pipeline.periods import period_id
from tests.conftest import Pipeline, wait_for
from tests.helpers import consume, metric, payload, publish, reading
from tests.unit.models import ConstantModel, SlowModel

pytestmark = pytest.mark.e2e


def save_model(path: Path, name: str, level: float, width: float = 5.0) -> str:
    """Write a constant model bundle atomically; returns its content hash."""
    tmp = path.with_name(f".{path.name}.tmp")
    joblib.dump({"model": ConstantModel(level, width), "metadata": {"name": name}}, tmp)
    tmp.replace(path)
    return file_hash(path)


def train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "Models_analysis.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_train_from_a_csv_saves_the_model_with_its_metadata(tmp_path: Path) -> None:
    csv = tmp_path / "series.csv"
    csv.write_text("time,count\n" + "".join(f"2026-11-01T00:{m:02d}:00Z,{100 + m % 7}\n" for m in range(60)))
    out = tmp_path / "mine.joblib"
    result = train("--csv", str(csv), "--ts-column", "time", "--value-column", "count", "--out", str(out))
    assert result.returncode == 0, result.stderr
    loaded = load_model(out)
    assert f"saved mine (hash {loaded.identity.hash}) to {out}" in result.stdout
    # Prophet, its interval calibrated on held-out errors (Models_analysis/calibration.py).
    assert loaded.identity.name == "mine" and type(loaded.model).__name__ == "Calibrated"
    assert type(loaded.model.model).__name__ == "Prophet"
    assert loaded.metadata["rows"] == 60 and loaded.metadata["train_start"].startswith("2026-11-01T00:00")
    assert set(loaded.metadata["versions"]) == {"prophet", "pandas", "numpy", "statsmodels"}

    bad = tmp_path / "bad.csv"
    bad.write_text("time,count\n2026-11-01T00:00:00Z,1\n2026-11-01T00:01:00Z,many\n")
    result = train("--csv", str(bad), "--ts-column", "time", "--out", str(tmp_path / "x.joblib"))
    assert result.returncode == 2
    assert "line 3: value 'many' in column 'count' is not a finite number" in result.stderr


def test_train_from_mongodb_readings_of_one_sensor(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.start_server()
    sensor = pipeline.start_sensor(1, SENSOR_MAX_READINGS="30", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    assert sensor.wait(60) == 0
    readings = pipeline.db[contract.COLLECTION_READINGS]
    wait_for(lambda: readings.count_documents({"sensor": pipeline.sensor_id(1)}) == 30, 60, "30 readings")
    out = tmp_path / "from-mongo.joblib"
    env = {"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.stack.env["MONGO_DATABASE"]}
    result = train("--from-mongo", "--sensor", pipeline.sensor_id(1), "--kind", "trend", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    loaded = load_model(out)
    assert loaded.metadata["rows"] == 30 and pipeline.sensor_id(1) in loaded.metadata["source"]
    assert type(loaded.model).__name__ == "Calibrated" and type(loaded.model.model).__name__ == "TrendModel"


def test_swapping_the_model_file_switches_identity_without_a_gap_or_restart(pipeline: Pipeline, tmp_path: Path) -> None:
    """Readings sent before the swap are scored by the first model, after it by the second; a corrupt
    replacement changes nothing. The service looks at the file before scoring a batch and while idle (at most
    every MODEL_RELOAD_CHECK_S), so the swap shows on /metrics before any reading arrives; and each phase's
    readings are sent only once the one before is stored, so the split does not depend on how fast a busy
    machine scores."""
    path = tmp_path / "model.joblib"
    first = save_model(path, "first", level=100)
    pipeline.start_server()
    model = pipeline.start_model(MODEL_PATH=str(path), MODEL_RELOAD_CHECK_S="0.5", MODEL_BATCH_WAIT_MS="50")
    pid, port = model.process.pid, model.env["HEALTH_PORT"]  # type: ignore[union-attr]
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]

    def serving(model_hash: str) -> bool:
        return metric(port, "pipeline_model_info", {"scope": "default", "hash": model_hash}) == 1.0

    def stream(n: int, count: int) -> list[dict[str, Any]]:
        sensor = pipeline.start_sensor(n, SENSOR_MAX_READINGS=str(count), SENSOR_INTERVAL_S="0.01", SENSOR_LOOP="false")
        assert sensor.wait(120) == 0, sensor.log_tail()
        query = {"sensor": pipeline.sensor_id(n)}
        wait_for(lambda: predictions.count_documents(query) == count, 60, f"{count} predictions", pipeline.logs)
        return list(predictions.find(query))

    wait_for(lambda: serving(first), 30, "the first model in use", pipeline.logs)
    before = stream(1, 60)
    second = save_model(path, "second", level=200)
    # No reading arrives meanwhile: the idle service finds the new file on its own.
    wait_for(lambda: serving(second) and not serving(first), 30, "the second model in use, idle", pipeline.logs)
    after = stream(2, 60)
    assert serving(second) and not serving(first), "the model in use, on /metrics"
    # A corrupt replacement: reported, and the second model keeps serving.
    tmp = path.with_name(".corrupt.tmp")
    tmp.write_bytes(b"this is not a model")
    tmp.replace(path)
    corrupt = stream(3, 30)
    assert Counter(p["model"]["hash"] for p in before) == {first: 60}
    assert Counter(p["model"]["hash"] for p in after + corrupt) == {second: 90}
    assert {p["yhat"] for p in before} == {100.0} and {p["yhat"] for p in after + corrupt} == {200.0}
    assert serving(second), "still the second model after the corrupt file"
    assert model.alive and model.process.pid == pid, "the model service must not restart"  # type: ignore[union-attr]
    # What only people read: the log says why the file was refused and what is served instead.
    assert f"still serving second (hash {second})" in model.log_tail(400)


def test_a_folder_gives_each_sensor_its_own_model_or_the_default(pipeline: Pipeline, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    default = save_model(folder / "default.joblib", "default", level=10)
    own = save_model(folder / f"{pipeline.sensor_id(2)}.joblib", "own", level=20)
    pipeline.start_server()
    pipeline.start_model(MODEL_PATH=str(folder))
    for n in (1, 2):
        pipeline.start_sensor(n, SENSOR_MAX_READINGS="10", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    ids = [pipeline.sensor_id(1), pipeline.sensor_id(2)]
    wait_for(lambda: predictions.count_documents({"sensor": {"$in": ids}}) == 20, 60, "20 predictions", pipeline.logs)
    assert {p["model"]["hash"] for p in predictions.find({"sensor": ids[0]})} == {default}
    assert {p["model"]["hash"] for p in predictions.find({"sensor": ids[1]})} == {own}


def test_a_numpy_model_trained_by_the_cli_serves_end_to_end(pipeline: Pipeline, tmp_path: Path) -> None:
    out = tmp_path / "trend.joblib"
    result = train("--csv", "Data_collection/demo_data.csv", "--kind", "trend", "--out", str(out))
    assert result.returncode == 0, result.stderr
    pipeline.start_server()
    pipeline.start_model(MODEL_PATH=str(out))
    pipeline.start_sensor(1, SENSOR_MAX_READINGS="20", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    wait_for(lambda: predictions.count_documents({"sensor": pipeline.sensor_id(1)}) == 20, 60, "20 predictions")
    identity = load_model(out).identity
    for prediction in predictions.find({"sensor": pipeline.sensor_id(1)}):
        assert prediction["model"] == identity.model_dump()
        assert prediction["yhat_lower"] < prediction["yhat"] < prediction["yhat_upper"]


def test_anomalies_become_alerts_and_accuracy_matches_a_hand_computation(pipeline: Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "flat.joblib"
    model_hash = save_model(path, "flat", level=100, width=5)  # interval [95, 105]
    pipeline.start_server()
    pipeline.start_model(MODEL_PATH=str(path))
    sensor = pipeline.sensor_id(1)
    values = [100.0, 103.0, 90.0, 106.0, 100.0, 500.0]
    items = [reading(sensor, v) for v in values]
    assert publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in items]) == [0] * 6

    alerts = pipeline.db[contract.COLLECTION_ALERTS]
    wait_for(lambda: alerts.count_documents({"sensor": sensor}) == 3, 60, "3 alerts", pipeline.logs)
    by_value = {a["v"]: a for a in alerts.find({"sensor": sensor})}
    assert set(by_value) == {90.0, 106.0, 500.0}
    assert (by_value[500.0]["direction"], by_value[500.0]["miss"]) == ("above", 395.0)
    assert (by_value[90.0]["direction"], by_value[90.0]["miss"]) == ("below", 5.0)
    assert by_value[106.0]["yhat_lower"] == 95.0 and by_value[106.0]["model"]["hash"] == model_hash
    topic = pipeline.topics["KAFKA_TOPIC_ALERTS"]
    assert sorted(
        json.loads(m.value())["v"] for m in consume(pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"], topic, want=3)
    ) == [
        90.0,
        106.0,
        500.0,
    ]

    accuracy = pipeline.db[contract.COLLECTION_ACCURACY]
    expected_mae = sum(abs(v - 100.0) for v in values) / len(values)  # (0+3+10+6+0+400)/6
    expected_coverage = sum(95.0 <= v <= 105.0 for v in values) / len(values)  # 3 of 6
    document = wait_for(
        # A new running total is written at once, then at most every 30 s (Server/aggregates.py).
        lambda: (d := accuracy.find_one({"_id": f"{sensor}|{model_hash}"})) and d["n"] == 6 and d,
        90,
        "accuracy",
    )
    assert document["mae"] == pytest.approx(expected_mae)
    assert document["coverage"] == pytest.approx(expected_coverage)
    assert document["model"] == {"name": "flat", "hash": model_hash}


def test_a_sensor_whose_readings_miss_gets_a_wider_interval_and_its_anomaly_flag_follows_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Adaptive intervals (MODEL_ADAPTIVE_GAMMA) on the real pipeline: a miss widens that sensor's next interval.

    The model claims a 50 % interval [95, 105]. With gamma 0.1, one miss moves the sensor's level from
    0.5 to 0.45, so its next interval is 105 + 5 * (z(0.775) / z(0.75) - 1) = 105.6 at the top: 105.5,
    an anomaly by the model's own interval, is not one by the interval served. Another sensor is not moved.
    """
    path = tmp_path / "half.joblib"
    tmp = path.with_name(".half.tmp")
    joblib.dump({"model": ConstantModel(100, 5), "metadata": {"name": "half", "interval_width": 0.5}}, tmp)
    tmp.replace(path)
    pipeline.start_server()
    pipeline.start_model(MODEL_PATH=str(path), MODEL_ADAPTIVE_GAMMA="0.1")
    moved, other = pipeline.sensor_id(1), pipeline.sensor_id(2)
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    upper = 105 + 5 * (0.7554150263604693 / 0.6744897501960817 - 1)

    def stored(item: contract.Reading) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(lambda: predictions.find_one({"_id": item.id}), 60, item.id, pipeline.logs)
        return found

    first = reading(moved, 500.0)
    send(pipeline, moved, [first])
    assert (stored(first)["yhat_upper"], stored(first)["anomaly"]) == (105.0, True), "the model's own, at first"
    second, elsewhere = reading(moved, 105.5), reading(other, 105.5)
    send(pipeline, moved, [second])
    send(pipeline, other, [elsewhere])
    served = stored(second)
    assert served["yhat_upper"] == pytest.approx(upper) and served["yhat_lower"] == pytest.approx(200 - upper)
    assert served["anomaly"] is False and served["yhat"] == 100.0
    assert (stored(elsewhere)["yhat_upper"], stored(elsewhere)["anomaly"]) == (105.0, True), "its own level"


def test_a_model_that_hangs_turns_its_batches_into_prediction_errors_and_the_service_not_ready(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    path = tmp_path / "slow.joblib"
    joblib.dump({"model": SlowModel(seconds=12.0), "metadata": {"name": "slow"}}, path)
    pipeline.start_server()
    model = pipeline.start_model(MODEL_PATH=str(path), MODEL_PREDICT_TIMEOUT_S="1")
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    first = [reading(sensor, float(i)) for i in range(5)]
    assert publish(pipeline.stack.env, sensor, topic, [payload(r) for r in first]) == [0] * 5
    errors = pipeline.db[contract.COLLECTION_PREDICTION_ERRORS]
    query = {"sensor": sensor}
    wait_for(lambda: errors.count_documents(query) == 5, 60, "5 prediction errors", pipeline.logs)
    for document in errors.find(query):
        assert "MODEL_PREDICT_TIMEOUT_S" in document["reason"], document["reason"]
    assert pipeline.db[contract.COLLECTION_READINGS].count_documents(query) == 5, "readings are stored regardless"

    url = f"http://127.0.0.1:{model.env['HEALTH_PORT']}/readyz"
    try:
        urllib.request.urlopen(url, timeout=5)
        pytest.fail("the model service must not be ready while predict is past its budget")
    except urllib.error.HTTPError as error:
        code, body = error.code, json.load(error)
    assert code == 503 and body["checks"]["model"] is False
    assert "MODEL_PREDICT_TIMEOUT_S" in body["why"]["model"]

    # Once the late call returns, the service is ready again and scores as usual.
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False

    wait_for(ready, 60, "the model service to be ready again", pipeline.logs)
    later = [reading(sensor, float(i)) for i in range(5)]
    assert publish(pipeline.stack.env, sensor, topic, [payload(r) for r in later]) == [0] * 5
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    wait_for(
        lambda: predictions.count_documents({"_id": {"$in": [r.id for r in later]}}) == 5,
        60,
        "the later readings' predictions",
        pipeline.logs,
    )


def wave_history(sensor: str, minutes: int, end: datetime) -> list[contract.Reading]:
    """One reading a minute up to ``end``: a 6-hour wave around 100 (nothing like the flat default)."""
    found = []
    for k in range(minutes, 0, -1):
        ts = end - timedelta(minutes=k)
        found.append(
            contract.Reading(
                id=uuid.uuid4().hex, sensor=sensor, ts=ts, v=100 + 20 * math.sin(2 * math.pi * ts.timestamp() / 21_600)
            )
        )
    return found


def send(pipeline: Pipeline, sensor: str, readings: list[contract.Reading]) -> None:
    """Publish ``readings`` as ``sensor`` would; every one accepted by the broker."""
    codes = publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in readings])
    assert set(codes) == {0}, codes


def trainer_env(pipeline: Pipeline, models: Path, trained: Path, **overrides: str) -> dict[str, str]:
    return {
        "MONGO_URI": pipeline.stack.env["MONGO_URI"],
        "MONGO_DATABASE": pipeline.stack.env["MONGO_DATABASE"],
        "MODEL_PATH": str(models),
        "MODEL_TRAINED_PATH": str(trained),
        "HEALTH_PORT": str(free_port()),
        **overrides,
    }


def test_a_promotion_by_the_trainer_changes_the_model_identity_and_scoring_never_stops_while_it_fits(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    models, trained = tmp_path / "models", tmp_path / "trained"
    models.mkdir()
    flat = save_model(models / "default.joblib", "flat", level=10)
    pipeline.start_server()
    pipeline.start_model(MODEL_PATH=str(models), MODEL_TRAINED_PATH=str(trained), MODEL_RELOAD_CHECK_S="0.5")
    sensor, busy = pipeline.sensor_id(1), pipeline.sensor_id(2)
    history = wave_history(sensor, 12 * 60, datetime.now(UTC) - timedelta(minutes=1))
    assert set(publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in history])) == {
        0
    }
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    wait_for(lambda: predictions.count_documents({"sensor": sensor}) == len(history), 120, "the history's predictions")
    assert {p["model"]["hash"] for p in predictions.find({"sensor": sensor})} == {flat}
    hourly = pipeline.db[contract.COLLECTION_AGGREGATES_HOURLY]
    hours = {period_id(sensor, r.ts.replace(minute=0, second=0, microsecond=0)) for r in history}
    wait_for(lambda: hourly.count_documents({"_id": {"$in": sorted(hours)}}) == len(hours), 90, "the hourly rollups")
    # Another sensor streams all along: its predictions must keep coming while the trainer fits.
    pipeline.start_sensor(2, SENSOR_INTERVAL_S="0.05", SENSOR_LOOP="true")
    wait_for(lambda: predictions.count_documents({"sensor": busy}) >= 20, 60, "the busy sensor's predictions")

    env = trainer_env(
        pipeline,
        models,
        trained,
        TRAINER_KIND="prophet",
        TRAINER_WINDOW_S="86400",
        TRAINER_HOLDOUT_S="7200",
        TRAINER_MIN_READINGS="300",
        TRAINER_EVERY_S="3600",
    )
    started = datetime.now(UTC)
    trainer = pipeline.start("trainer", "Models_analysis.trainer", env)
    pipeline.wait_ready(trainer)
    versions = pipeline.db[contract.COLLECTION_MODEL_VERSIONS]
    decision = wait_for(lambda: versions.find_one({"sensor": sensor}), 300, "the trainer's decision", pipeline.logs)
    assert decision["promoted"], decision
    assert decision["incumbent"] == {"name": "flat", "hash": flat, "source": "default"}
    assert decision["metrics"]["challenger"]["mae"] < decision["metrics"]["incumbent"]["mae"]
    promoted = decision["model"]["hash"]
    assert load_model(trained / f"{sensor}.joblib").identity.hash == promoted

    # Readings after the promotion are scored by the promoted model.
    model_port = pipeline.processes[1].env["HEALTH_PORT"]
    wait_for(
        lambda: metric(model_port, "pipeline_model_info", {"scope": f"trained:{sensor}", "hash": promoted}) == 1,
        30,
        "the model service serving the promoted model",
        pipeline.logs,
    )
    later = wave_history(sensor, 5, datetime.now(UTC))
    send(pipeline, sensor, later)
    ids = [r.id for r in later]
    wait_for(lambda: predictions.count_documents({"_id": {"$in": ids}}) == 5, 60, "the later predictions")
    assert {p["model"]["hash"] for p in predictions.find({"_id": {"$in": ids}})} == {promoted}

    # From the trainer's start (importing Prophet, reading the history) to its decision (the fit included),
    # the busy sensor's readings were scored without a pause.
    fitted_until = decision["decided_at"]
    fitted_from = min(started, fitted_until - timedelta(seconds=decision["fit_seconds"]))
    assert decision["fit_seconds"] > 0 and decision["kind"] == "prophet"
    scored = sorted(
        p["scored_at"]
        for p in predictions.find({"sensor": busy}, {"scored_at": 1})
        if fitted_from - timedelta(seconds=2) <= p["scored_at"] <= fitted_until + timedelta(seconds=2)
    )
    assert scored, "the busy sensor was scored during the fit"
    gaps = [(b - a).total_seconds() for a, b in zip([fitted_from, *scored], [*scored, fitted_until], strict=True)]
    assert max(gaps) < 2.0, f"scoring paused for {max(gaps):.1f}s while the trainer fitted"
    assert trainer.alive


def test_rescore_a_range_with_another_model_beside_the_live_forecasts(pipeline: Pipeline, tmp_path: Path) -> None:
    flat_path = tmp_path / "flat.joblib"
    save_model(flat_path, "flat", level=10)
    pipeline.start_server()
    pipeline.start_model(MODEL_PATH=str(flat_path))
    sensor = pipeline.sensor_id(1)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    history = wave_history(sensor, 120, end)
    assert set(publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in history])) == {
        0
    }
    aggregates = pipeline.db[contract.COLLECTION_AGGREGATES]
    last_minute = period_id(sensor, history[-1].ts.replace(second=0, microsecond=0))
    wait_for(
        lambda: (d := aggregates.find_one({"_id": last_minute})) and d.get("forecasts"),
        120,
        "the minutes' forecasts",
        pipeline.logs,
    )
    near = tmp_path / "near.joblib"
    near_hash = save_model(near, "near", level=100, width=25)
    env = {"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.stack.env["MONGO_DATABASE"]}
    since, until = contract.iso(end - timedelta(minutes=60)), contract.iso(end)
    result = subprocess.run(
        [sys.executable, "-m", "Models_analysis.rescore", "--sensor", sensor, "--since", since, "--until", until]
        + ["--model", str(near)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    assert f"re-scored 60 readings of {sensor} in 60 minutes with near (hash {near_hash})" in result.stdout
    summary = pipeline.db[contract.COLLECTION_RESCORES].find_one({"_id": f"{sensor}|{near_hash}|{since}|{until}"})
    assert summary is not None and summary["model"] == {"name": "near", "hash": near_hash}
    ours, live = summary["compared"]["rescored"], summary["compared"]["live"]
    assert ours["n"] == live["n"] == 60 and ours["mae"] < live["mae"] and live["coverage"] == 0.0
    minute = pipeline.db[contract.COLLECTION_RESCORED].find_one(
        {"_id": rescored_id(sensor, near_hash, history[-60].ts)}
    )
    assert minute is not None and minute["forecasts"][0]["yhat"] == 100.0
    bad = subprocess.run(
        [sys.executable, "-m", "Models_analysis.rescore", "--sensor", sensor, "--since", until, "--until", since]
        + ["--model", str(near)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert bad.returncode == 2 and "is not after" in bad.stderr
