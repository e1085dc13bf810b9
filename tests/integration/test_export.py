"""python -m Server.export on the real database: the chosen sensors and times, typed, streamed in batches."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from localstack.services import ROOT
from pipeline import contract
from Server import export
from tests.conftest import Pipeline

pytestmark = pytest.mark.integration


def run_export(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.db.name}
    return subprocess.run(
        [sys.executable, "-m", "Server.export", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_export_readings_of_one_sensor_and_range_to_parquet_and_csv(pipeline: Pipeline, tmp_path: Path) -> None:
    sensor, other = pipeline.sensor_id(1), pipeline.sensor_id(2)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    count = export.BATCH * 2 + 7  # more than one batch
    readings = pipeline.db[contract.COLLECTION_READINGS]
    readings.insert_many(
        [
            {"_id": f"{sensor}-{i}", "sensor": sensor, "ts": start + timedelta(seconds=i), "v": float(i), "zone": "n"}
            for i in range(count)
        ]
        + [{"_id": f"{other}-0", "sensor": other, "ts": start, "v": 1.0}]
    )
    since, until = start + timedelta(seconds=10), start + timedelta(seconds=count - 5)
    out = tmp_path / "r.parquet"
    result = run_export(
        pipeline, "--sensor", sensor, "--since", since.isoformat(), "--until", until.isoformat(), "--format", "parquet",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = count - 15
    assert f"wrote {expected} readings to {out}" in result.stderr
    assert "rows" in result.stderr, "a progress bar on stderr"
    table = pq.read_table(out)
    assert table.schema.field("ts").type == export.SCHEMAS[contract.COLLECTION_READINGS].field("ts").type
    rows = table.to_pylist()
    assert len(rows) == expected and {r["sensor"] for r in rows} == {sensor}
    assert min(r["ts"] for r in rows) == since and max(r["ts"] for r in rows) < until
    first = next(r for r in rows if r["id"] == f"{sensor}-10")
    assert first["v"] == 10.0 and first["extra"] == '{"zone":"n"}'

    out_csv = tmp_path / "r.csv"
    result = run_export(pipeline, "--sensor", sensor, "--until", since.isoformat(), "--out", str(out_csv))
    assert result.returncode == 0, result.stderr
    with out_csv.open() as handle:
        lines = list(csv.DictReader(handle))
    assert [r["id"] for r in lines] == [f"{sensor}-{i}" for i in range(10)]
    assert lines[3]["ts"] == contract.iso(start + timedelta(seconds=3)) and float(lines[3]["v"]) == 3.0


def test_export_predictions(pipeline: Pipeline, tmp_path: Path) -> None:
    sensor = pipeline.sensor_id(1)
    at = datetime(2026, 11, 2, tzinfo=UTC)
    pipeline.db[contract.COLLECTION_PREDICTIONS].insert_one(
        {"_id": "p1", "sensor": sensor, "ds": at, "yhat": 1.0, "yhat_lower": 0.0, "yhat_upper": 2.0, "v": 3.0,
         "anomaly": True, "model": {"name": "m", "hash": "h"}, "scored_at": at}
    )  # fmt: skip
    out = tmp_path / "p.parquet"
    result = run_export(
        pipeline, "--collection", "predictions", "--sensor", sensor, "--format", "parquet", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert pq.read_table(out).to_pylist() == [
        {"id": "p1", "sensor": sensor, "ds": at, "yhat": 1.0, "yhat_lower": 0.0, "yhat_upper": 2.0, "v": 3.0,
         "anomaly": True, "model_name": "m", "model_hash": "h", "scored_at": at}
    ]  # fmt: skip


def test_a_bad_time_is_a_clear_error(pipeline: Pipeline, tmp_path: Path) -> None:
    result = run_export(pipeline, "--since", "yesterday", "--out", str(tmp_path / "x.csv"))
    assert result.returncode == 2 and "--since: 'yesterday' is not an ISO 8601 time" in result.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_export_to_standard_output(pipeline: Pipeline, tmp_path: Path, form: str) -> None:
    sensor = pipeline.sensor_id(1)
    at = datetime(2026, 11, 3, tzinfo=UTC)
    pipeline.db[contract.COLLECTION_READINGS].insert_many(
        [{"_id": f"{sensor}-{i}", "sensor": sensor, "ts": at, "v": float(i)} for i in range(3)]
    )
    env = {**os.environ, "MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": pipeline.db.name}
    result = subprocess.run(
        [sys.executable, "-m", "Server.export", "--sensor", sensor, "--format", form, "--out", "-"],
        cwd=ROOT, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"wrote 3 readings to standard output" in result.stderr
    if form == "csv":
        assert result.stdout.decode().splitlines()[0] == "id,sensor,ts,v,received_at,extra"
        assert len(result.stdout.decode().splitlines()) == 4
    else:
        (tmp_path / "out.parquet").write_bytes(result.stdout)
        assert [r["v"] for r in pq.read_table(tmp_path / "out.parquet").to_pylist()] == [0.0, 1.0, 2.0]
