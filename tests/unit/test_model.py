"""Loading models and scoring batches: any object with predict(DataFrame) works."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import pandas as pd
import pytest

from Models_analysis.model import Forecasts, ModelError, grid_point, load_model, score
from pipeline import contract
from tests.unit.models import BrokenOnce, ConstantModel


def readings(values: list[float], start: datetime | None = None) -> list[contract.Reading]:
    start = start or datetime(2026, 11, 27, 10, tzinfo=UTC)
    return [
        contract.Reading(id=f"r{i}", sensor="s1", ts=start + timedelta(seconds=i), v=v) for i, v in enumerate(values)
    ]


def test_scores_a_batch_with_one_predict(tmp_path: Path) -> None:
    model = ConstantModel(level=10.0, width=1.0)
    path = tmp_path / "m.joblib"
    joblib.dump({"model": model, "metadata": {"name": "flat"}}, path)
    loaded = load_model(path)
    assert loaded.identity.name == "flat" and len(loaded.identity.hash) == 16
    results = score(loaded, readings([10.0, 10.5, 12.0, 8.0]))
    assert [r.anomaly for r in results] == [False, False, True, True]  # type: ignore[union-attr]
    assert all(isinstance(r, contract.Prediction) and r.model == loaded.identity for r in results)
    assert [r.id for r in results] == ["r0", "r1", "r2", "r3"]


def test_same_time_is_predicted_once(tmp_path: Path) -> None:
    model = ConstantModel(level=0.0, width=1.0)
    path = tmp_path / "m.joblib"
    joblib.dump(model, path)  # a bare model, the seed's way
    loaded = load_model(path)
    moment = datetime(2026, 11, 27, 10, tzinfo=UTC)
    batch = [contract.Reading(id=f"r{i}", sensor=f"s{i}", ts=moment, v=0.0) for i in range(50)]
    score(loaded, batch)
    assert loaded.model.rows_seen == [1]
    assert loaded.identity.name == "m"


def test_a_time_the_model_refuses_becomes_a_prediction_error(tmp_path: Path) -> None:
    bad = datetime(2026, 11, 27, 10, 0, 1, tzinfo=UTC)
    path = tmp_path / "m.joblib"
    joblib.dump(BrokenOnce(bad=pd.Timestamp(bad.replace(tzinfo=None))), path)
    results = score(load_model(path), readings([1.0, 2.0, 3.0]))
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["Prediction", "PredictionError", "Prediction"]
    assert "cannot forecast" in results[1].reason  # type: ignore[union-attr]


def test_refuses_files_that_are_not_models(tmp_path: Path) -> None:
    not_joblib = tmp_path / "text.joblib"
    not_joblib.write_text("hello")
    with pytest.raises(ModelError, match="not a readable joblib model file"):
        load_model(not_joblib)
    no_predict = tmp_path / "dict.joblib"
    joblib.dump({"weights": [1, 2]}, no_predict)
    with pytest.raises(ModelError, match="holds a dict, not a model"):
        load_model(no_predict)
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "missing.joblib")


def test_grid_point_is_the_nearest_multiple() -> None:
    at = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
    assert grid_point(at + timedelta(milliseconds=499), 1000) == at
    assert grid_point(at + timedelta(milliseconds=501), 1000) == at + timedelta(seconds=1)
    assert grid_point(at + timedelta(milliseconds=1234), 0) == at + timedelta(milliseconds=1234)
    assert grid_point(at + timedelta(seconds=29), 60_000) == at


def test_readings_in_the_same_second_share_one_forecast(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    joblib.dump(ConstantModel(level=0.0, width=1.0), path)
    moment = datetime(2026, 11, 27, 10, tzinfo=UTC)
    batch = [
        contract.Reading(id=f"r{i}", sensor=f"s{i}", ts=moment + timedelta(milliseconds=7 * i), v=0.0)
        for i in range(50)
    ]
    exact = load_model(path)
    score(exact, batch, grid_ms=0)
    assert exact.model.rows_seen == [50]
    gridded = load_model(path)
    results = score(gridded, batch, grid_ms=1000)
    assert gridded.model.rows_seen == [1]
    assert [r.ds for r in results] == [r.ts for r in batch], "a prediction keeps its reading's own time"  # type: ignore[union-attr]


def test_forecasts_are_kept_between_batches_per_model(tmp_path: Path) -> None:
    first, second = tmp_path / "a.joblib", tmp_path / "b.joblib"
    joblib.dump(ConstantModel(level=0.0, width=1.0), first)
    joblib.dump(ConstantModel(level=5.0, width=1.0), second)
    a, b = load_model(first), load_model(second)
    forecasts = Forecasts(size=100)
    start = datetime(2026, 11, 27, 10, tzinfo=UTC)
    score(a, readings([0.0, 0.0], start), 1000, forecasts)
    score(a, readings([0.0, 0.0, 0.0], start), 1000, forecasts)  # two times seen, one new
    assert a.model.rows_seen == [2, 1]
    results = score(b, readings([5.0], start), 1000, forecasts)
    assert b.model.rows_seen == [1], "another model's forecast is never reused"
    assert results[0].yhat == 5.0  # type: ignore[union-attr]


def test_forecasts_keep_only_the_most_recent() -> None:
    forecasts = Forecasts(size=2)
    start = datetime(2026, 11, 27, 10, tzinfo=UTC)
    for i in range(3):
        forecasts.put("h", start + timedelta(seconds=i), (float(i), 0.0, 1.0))
    assert len(forecasts) == 2 and forecasts.get("h", start) is None
    assert forecasts.get("h", start + timedelta(seconds=2)) == (2.0, 0.0, 1.0)
    off = Forecasts(size=0)
    off.put("h", start, (0.0, 0.0, 1.0))
    assert len(off) == 0 and off.get("h", start) is None


def test_the_next_seconds_are_forecast_in_the_same_call(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    joblib.dump(ConstantModel(level=0.0, width=1.0), path)
    loaded = load_model(path)
    forecasts = Forecasts(size=100)
    start = datetime(2026, 11, 27, 10, tzinfo=UTC)
    score(loaded, readings([0.0], start), 1000, forecasts, ahead=5)
    assert loaded.model.rows_seen == [6]
    score(loaded, readings([0.0], start + timedelta(seconds=3)), 1000, forecasts, ahead=5)
    assert loaded.model.rows_seen == [6], "a second already forecast ahead needs no predict"
    score(loaded, readings([0.0], start + timedelta(seconds=6)), 1000, forecasts, ahead=5)
    assert loaded.model.rows_seen == [6, 6]
    score(loaded, readings([0.0], start + timedelta(seconds=7.25)), 0, forecasts, ahead=5)
    assert loaded.model.rows_seen == [6, 6, 1], "exact times are never forecast ahead"
