"""python -m Models_analysis.backtest on readings stored in the real database (FerretDB): one sensor, one time range."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from localstack.services import ROOT
from pipeline import contract
from tests.conftest import Pipeline

pytestmark = pytest.mark.integration

START = datetime(2026, 10, 5, tzinfo=UTC)


def wave(hour: int) -> float:
    """A daily wave plus 0.01 an hour: the same time a day earlier is always 0.24 lower, a week earlier 1.68."""
    return 100 + 10 * math.sin(2 * math.pi * hour / 24) + 0.01 * hour


def run_backtest(pipeline: Pipeline, *args: str, uri: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MONGO_URI": uri or pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.db.name}
    return subprocess.run(
        [sys.executable, "-m", "Models_analysis.backtest", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_backtest_reads_one_sensors_readings_in_a_time_range(pipeline: Pipeline, tmp_path: Path) -> None:
    sensor, other = pipeline.sensor_id(1), pipeline.sensor_id(2)
    documents: list[dict[str, Any]] = [
        {"_id": f"{sensor}-{h}", "sensor": sensor, "ts": START + timedelta(hours=h), "v": wave(h)}
        for h in range(12 * 24)
    ]
    # Readings a leak would show at once: another sensor at the same times, and this sensor outside the range.
    documents += [
        {"_id": f"{other}-{h}", "sensor": other, "ts": START + timedelta(hours=h), "v": 1e6} for h in range(12 * 24)
    ]
    for document in documents:
        if document["sensor"] == sensor and not 24 <= (document["ts"] - START) / timedelta(hours=1) < 11 * 24:
            document["v"] = -1e6
    random.Random(7).shuffle(documents)  # stored out of order, as readings arrive
    pipeline.db[contract.COLLECTION_READINGS].insert_many(documents)

    since, until = START + timedelta(days=1), START + timedelta(days=11)
    out = tmp_path / "bt.json"
    result = run_backtest(
        pipeline, "--sensor", sensor, "--since", since.isoformat(), "--until", until.isoformat(),
        "--window", "8d", "--kinds", "trend", "--out", str(out), "--forecasts", str(tmp_path / "points.csv"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "refits" in result.stderr, "a progress bar on stderr"
    document = json.loads(out.read_text())
    assert document["source"]["sensor"] == sensor
    assert document["source"]["readings"] == 10 * 24
    assert document["source"]["first"] == "2026-10-06 00:00:00" and document["source"]["last"] == "2026-10-15 23:00:00"
    assert document["folds"] == {"fitted": 2, "readings_skipped": 0}
    day, week = document["metrics"]["naive-day"], document["metrics"]["naive-week"]
    assert day["n"] == week["n"] == document["metrics"]["trend"]["n"] == 48
    assert day["mae"] == pytest.approx(0.24) and week["mae"] == pytest.approx(1.68)
    assert day["mae_relative"] == pytest.approx(1 / 7) and day["coverage"] == 1.0
    assert (tmp_path / "bt.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "points.csv").read_text().splitlines()
    assert lines[0] == "kind,origin,i,ds,y,yhat,yhat_lower,yhat_upper" and len(lines) == 1 + 3 * 48


def test_a_sensor_without_readings_in_the_range_is_a_clear_error(pipeline: Pipeline, tmp_path: Path) -> None:
    sensor = pipeline.sensor_id(1)
    pipeline.db[contract.COLLECTION_READINGS].insert_one({"_id": f"{sensor}-0", "sensor": sensor, "ts": START, "v": 1})
    result = run_backtest(pipeline, "--sensor", sensor, "--since", "2026-11-01", "--out", str(tmp_path / "bt.json"))
    assert result.returncode == 2
    assert f"error: no readings of sensor {sensor} from 2026-11-01T00:00:00+00:00 until the end" in result.stderr
    assert not (tmp_path / "bt.json").exists()


def test_a_database_that_refuses_the_login_is_named(pipeline: Pipeline, tmp_path: Path) -> None:
    env = pipeline.stack.env
    database = env["MONGO_DATABASE"]
    password = "not-the-password-4711"
    wrong = f"mongodb://{env['MONGO_APP_USERNAME']}:{password}@127.0.0.1:{env['MONGO_PORT']}/{database}?authSource={database}"
    result = run_backtest(pipeline, "--sensor", pipeline.sensor_id(1), "--out", str(tmp_path / "bt.json"), uri=wrong)
    assert result.returncode == 1
    assert "error: cannot read the readings from MongoDB:" in result.stderr and password not in result.stderr
