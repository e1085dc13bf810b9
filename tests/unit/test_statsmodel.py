"""The MSTL kind: its grid and periods by hand, its forecasts of a known pattern, and the service's interface."""

from __future__ import annotations

import contextlib
import io
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from Models_analysis import train
from Models_analysis.calibration import Calibrated
from Models_analysis.model import load_model, score
from Models_analysis.mstl import MSTLModel, grid_step, periods
from pipeline import contract

START = pd.Timestamp("2026-11-02 00:00:00")  # a Monday
DAY = pd.Timedelta(days=1)


def test_grid_step_and_periods_worked_by_hand() -> None:
    assert grid_step(pd.Timedelta(minutes=30), 28 * DAY) == pd.Timedelta(minutes=30)
    # 28 days of 5-minute readings are 8,064 points; at most 3,000 means 13.4 min or more: 15 min.
    assert grid_step(pd.Timedelta(minutes=5), 28 * DAY) == pd.Timedelta(minutes=15)
    assert grid_step(pd.Timedelta(seconds=1799), 28 * DAY) == pd.Timedelta(minutes=30)
    assert grid_step(pd.Timedelta(days=2), 60 * DAY) == pd.Timedelta(days=2)
    assert periods(pd.Timedelta(minutes=30), 28 * DAY) == [48, 336]
    assert periods(pd.Timedelta(hours=1), 10 * DAY) == [24]  # a week needs two weeks of data
    assert periods(pd.Timedelta(hours=6), 28 * DAY) == [4, 28]
    assert periods(pd.Timedelta(hours=8), 28 * DAY) == [21]  # 3 a day is no daily curve
    assert periods(pd.Timedelta(minutes=5), 1 * DAY) == []


def pattern(ds: pd.Series) -> np.ndarray:
    """A daily sine, weekends 20 lower: what MSTL should separate."""
    times = pd.to_datetime(ds)
    days = ((times - START) / DAY).to_numpy(dtype=float)
    return 100 + 10 * np.sin(2 * np.pi * days) - 20 * (times.dt.day_of_week >= 5).to_numpy()


def hourly(days: int, seed: int = 0) -> pd.DataFrame:
    ds = pd.Series(pd.date_range(START, periods=days * 24, freq="h"))
    return pd.DataFrame({"ds": ds, "y": pattern(ds) + np.random.default_rng(seed).normal(0, 0.5, len(ds))})


def test_forecasts_a_daily_and_weekly_pattern_and_interpolates_between_grid_points() -> None:
    frame = hourly(21)
    model = MSTLModel(0.95).fit(frame)
    assert model.periods == [24, 168] and model.step == pd.Timedelta(hours=1)
    ahead = pd.DataFrame({"ds": START + 21 * DAY + pd.to_timedelta(np.arange(0, 7 * 24), unit="h")})
    out = model.predict(ahead)
    assert list(out.columns) == ["ds", "yhat", "yhat_lower", "yhat_upper"]
    assert out["ds"].tolist() == ahead["ds"].tolist()
    # The weekend drop (20) and the daily swing (±10) are forecast within the noise's reach.
    assert np.mean(np.abs(out["yhat"] - pattern(ahead["ds"]))) < 1.5
    assert (out["yhat_lower"] < out["yhat"]).all() and (out["yhat"] < out["yhat_upper"]).all()
    # Half past an hour is halfway between the forecasts of the hours either side.
    half = model.predict(pd.DataFrame({"ds": [START + 21 * DAY + pd.Timedelta(minutes=90)]}))["yhat"].iloc[0]
    assert half == pytest.approx(out["yhat"].iloc[1:3].mean())
    # A time within the training data gets the fitted value there, and the order of ds is kept.
    back = model.predict(pd.DataFrame({"ds": [START + 20 * DAY, START + 2 * DAY]}))
    assert np.abs(back["yhat"].to_numpy() - pattern(pd.Series([START + 20 * DAY, START + 2 * DAY]))).max() < 3


def test_an_anomalous_day_in_the_window_is_not_repeated_a_week_later() -> None:
    frame = hourly(21)
    monday = (frame["ds"] >= START + 14 * DAY) & (frame["ds"] < START + 15 * DAY)
    frame.loc[monday, "y"] = 0.0  # the pump stopped on the third Monday
    out = MSTLModel(0.95).fit(frame).predict(pd.DataFrame({"ds": frame["ds"][monday] + 7 * DAY}))
    assert np.mean(np.abs(out["yhat"] - pattern(frame["ds"][monday] + 7 * DAY))) < 3


def test_gaps_and_uneven_times_are_put_on_the_grid() -> None:
    frame = hourly(16).drop(index=range(100, 130)).reset_index(drop=True)
    frame["ds"] = frame["ds"] + pd.to_timedelta(np.where(frame.index % 2 == 0, 10, -10), unit="s")
    model = MSTLModel(0.95).fit(frame)
    assert model.step == pd.Timedelta(hours=1) and model.periods == [24, 168]
    out = model.predict(pd.DataFrame({"ds": START + 16 * DAY + pd.to_timedelta(np.arange(24), unit="h")}))
    assert np.mean(np.abs(out["yhat"] - pattern(START + 16 * DAY + pd.Series(pd.to_timedelta(np.arange(24), "h"))))) < 2


def test_an_unfitted_model_or_a_single_time_is_refused() -> None:
    with pytest.raises(ValueError, match="not been fitted"):
        MSTLModel().predict(pd.DataFrame({"ds": [START]}))
    with pytest.raises(ValueError, match="two times"):
        MSTLModel().fit(pd.DataFrame({"ds": [START, START], "y": [1.0, 2.0]}))


def test_trained_calibrated_saved_loaded_and_served(tmp_path: Path) -> None:
    frame = hourly(28)  # the held-out week is forecast from three weeks: enough for a weekly season
    with contextlib.redirect_stdout(io.StringIO()):
        model = train.fit("mstl", frame, 0.95)
    assert isinstance(model, Calibrated) and isinstance(model.model, MSTLModel)
    assert model.residuals == 7 * 24  # the last week, forecast by a model of the two before it
    assert 0.5 < model.half_width < 5  # the noise is N(0, 0.5) and the pattern is forecast closely
    out = tmp_path / "mstl.joblib"
    metadata = train.save(model, frame, out, "mstl-v1", "test", 0.95)
    assert metadata["kind"] == "MSTLModel" and metadata["calibration"]["residuals"] == 168
    loaded = load_model(out)
    moment = (START + 28 * DAY + pd.Timedelta(hours=6)).tz_localize(UTC).to_pydatetime()
    expected = float(pattern(pd.Series([START + 28 * DAY + pd.Timedelta(hours=6)]))[0])
    readings = [
        contract.Reading(id="in", sensor="s", ts=moment, v=expected),
        contract.Reading(id="out", sensor="s", ts=moment + timedelta(hours=1), v=expected + 50),
    ]
    results = score(loaded, readings, grid_ms=1000)
    assert [type(r).__name__ for r in results] == ["Prediction", "Prediction"]
    assert [r.anomaly for r in results] == [False, True]  # type: ignore[union-attr]
    first = results[0]
    assert isinstance(first, contract.Prediction)
    assert first.yhat_upper - first.yhat == pytest.approx(model.half_width)
