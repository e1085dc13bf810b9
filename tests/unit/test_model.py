"""Loading models and scoring batches: any object with predict(DataFrame) works."""

from __future__ import annotations

import contextlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from Models_analysis import train
from Models_analysis.calibration import Calibrated
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


# --------------------------------------------------------------------------- train: seasonalities from the data


def _times(freq: str, span: str) -> pd.Series:
    start = pd.Timestamp("2026-11-02")
    return pd.Series(pd.date_range(start, start + pd.Timedelta(span), freq=freq))


@pytest.mark.parametrize(
    ("freq", "span", "expected"),
    [
        # 48 readings a day: daily order 10 (at most), weekly 42 (at most; 168 would be the aliasing limit).
        ("30min", "28D", [("daily", 1.0, 10), ("weekly", 7.0, 42)]),
        ("1h", "10D", [("daily", 1.0, 10)]),  # a week needs two weeks of data
        ("6h", "28D", [("daily", 1.0, 2), ("weekly", 7.0, 14)]),  # 4 readings a day: order 2; 28 a week: 14
        ("8h", "28D", [("weekly", 7.0, 10)]),  # 3 readings a day are no daily curve
        ("1D", "20D", [("weekly", 7.0, 3)]),
        ("1D", "800D", [("weekly", 7.0, 3), ("yearly", 365.25, 10)]),
        ("5min", "1D", []),  # one day: no period seen twice
        ("1h", "0h", []),  # one time
    ],
)
def test_seasonalities_follow_the_sampling_and_the_span(freq: str, span: str, expected: list[tuple]) -> None:
    found = train.seasonalities(_times(freq, span))
    assert [(s.name, s.period_days, s.fourier_order) for s in found] == expected


def test_prophet_gets_those_seasonalities_and_none_of_its_own() -> None:
    frame = pd.DataFrame({"ds": _times("30min", "28D")}).assign(y=0.0)
    model = train.prophet_model(frame, 0.95)
    assert {name: s["fourier_order"] for name, s in model.seasonalities.items()} == {"daily": 10, "weekly": 42}
    assert model.uncertainty_samples == 1000
    assert train.prophet_model(frame, 0.95, uncertainty=False).uncertainty_samples == 0


def test_prophet_as_train_fits_it_is_calibrated_and_leaves_an_anomalous_day_out(tmp_path: Path) -> None:
    ds = _times("1h", "28D")[:-1]
    days = ((ds - ds.iloc[0]) / pd.Timedelta(days=1)).to_numpy()
    rng = np.random.default_rng(0)
    y = 100 + 10 * np.sin(2 * np.pi * days) - 20 * (ds.dt.day_of_week >= 5).to_numpy() + rng.normal(0, 0.5, len(ds))
    anomaly = (days >= 14) & (days < 15)  # the third Monday: the pump stopped
    y[anomaly] = 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        model = train.fit("prophet", pd.DataFrame({"ds": ds, "y": y}), 0.95)
    assert isinstance(model, Calibrated) and model.residuals == 7 * 24
    monday = pd.DataFrame({"ds": ds[anomaly] + pd.Timedelta(days=14)})
    out = model.predict(monday)
    expected = 100 + 10 * np.sin(2 * np.pi * days[anomaly])
    assert np.abs(out["yhat"].to_numpy() - expected).mean() < 3
    assert np.allclose(out["yhat_upper"] - out["yhat"], model.half_width)
    metadata = train.save(model, pd.DataFrame({"ds": ds, "y": y}), tmp_path / "p.joblib", "p", "test", 0.95)
    assert metadata["kind"] == "Prophet" and metadata["calibration"]["level"] == 0.95
    assert load_model(tmp_path / "p.joblib").identity.name == "p"
