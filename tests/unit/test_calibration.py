"""Split-conformal intervals: the half-width worked by hand, its coverage on a series with known noise, no peeking."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from Models_analysis.calibration import Calibrated, calibrate, half_width, holdout_residuals
from Models_analysis.model import load_model, score
from Models_analysis.robust import cleaned, fit_without_outliers, outliers, season_readings, seasonal_outliers
from pipeline import contract
from tests.unit.models import ConstantModel

START = pd.Timestamp("2026-11-02 00:00:00")
DAY = pd.Timedelta(days=1)


def test_half_width_worked_by_hand() -> None:
    residuals = np.arange(1.0, 20.0)  # 1 .. 19, n = 19
    # rank ceil((19 + 1) * 0.95) = 19: the largest; ceil(20 * 0.5) = 10: the 10th smallest.
    assert half_width(residuals, 0.95) == 19.0
    assert half_width(-residuals, 0.5) == 10.0  # absolute errors
    # n = 10, level 0.8: rank ceil(11 * 0.8) = ceil(8.8) = 9.
    assert half_width(np.arange(1.0, 11.0), 0.8) == 9.0
    # Too few for the level (rank 6 of 5): the largest.
    assert half_width(np.array([3.0, 1.0, 2.0, 5.0, 4.0]), 0.95) == 5.0
    assert half_width(np.array([math.nan, 2.0]), 0.3) == 2.0  # NaN is not an error
    with pytest.raises(ValueError, match="between 0 and 1"):
        half_width(residuals, 1.0)
    with pytest.raises(ValueError, match="no finite residuals"):
        half_width(np.array([math.nan]), 0.9)


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
    st.floats(0.01, 0.98),
    st.floats(0.001, 0.019),
)
def test_half_width_grows_with_the_level_and_holds_its_rank(residuals: list[float], low: float, step: float) -> None:
    errors = np.array(residuals)
    high = low + step
    assert half_width(errors, low) <= half_width(errors, high)
    inside = int(np.sum(np.abs(errors) <= half_width(errors, high)))
    assert inside >= min(len(errors), math.ceil((len(errors) + 1) * high))


class SineModel:
    """Knows the series' daily sine; estimates only its level. ``seen`` is the last time it was fitted on."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.seen = pd.Timestamp(frame["ds"].max())
        self.level = float(np.mean(frame["y"].to_numpy() - _sine(frame["ds"])))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        yhat = self.level + _sine(frame["ds"])
        return pd.DataFrame({"yhat": yhat, "yhat_lower": yhat - 0.1, "yhat_upper": yhat + 0.1})


def _sine(ds: pd.Series) -> np.ndarray:
    days = ((pd.to_datetime(ds) - START) / DAY).to_numpy(dtype=float)
    return 10 * np.sin(2 * np.pi * days)


def noisy(days: int, seed: int, start: pd.Timestamp = START) -> pd.DataFrame:
    ds = pd.Series(pd.date_range(start, periods=days * 288, freq="5min"))
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"ds": ds, "y": 50 + _sine(ds) + rng.normal(0, 2.0, len(ds))})


#: The calibration holds out the last 7 days of 5-minute readings: n = 2016 residuals, rank
#: k = ceil(2017 * 0.95) = 1917, so the interval's true coverage is Beta(k, n + 1 - k): mean 0.9504, sd
#: sqrt(0.95 * 0.05 / 2018) = 0.00485. The 2016 fresh readings inside it are binomial around that: sd
#: sqrt(0.95 * 0.05 / 2016) = 0.00485. Together sd 0.00686; 4 sd (a 1-in-15,000 miss) is 0.0275, so the share
#: inside must lie within 0.9504 ± 0.0275.
COVERAGE_LOW, COVERAGE_HIGH = 0.9229, 0.9779


def test_a_calibrated_95_interval_holds_95_percent_of_new_readings() -> None:
    train = noisy(21, seed=1)
    model = calibrate(SineModel, train, 0.95)
    assert isinstance(model, Calibrated)
    assert model.residuals == 2016 and model.level == 0.95
    # The noise is N(0, 2): the true 95 % half-width is 1.96 * 2 = 3.92, give or take the level's estimate.
    assert model.half_width == pytest.approx(3.92, abs=0.3)
    fresh = noisy(7, seed=2, start=START + 21 * DAY)
    out = model.predict(fresh[["ds"]])
    inside = np.mean((out["yhat_lower"] <= fresh["y"]) & (fresh["y"] <= out["yhat_upper"]))
    assert COVERAGE_LOW <= inside <= COVERAGE_HIGH
    # Its own interval (±0.1) would have held about 4 %.
    own = model.model.predict(fresh[["ds"]])
    assert np.mean((own["yhat_lower"] <= fresh["y"]) & (fresh["y"] <= own["yhat_upper"])) < 0.1


def test_holdout_models_never_see_the_readings_they_are_scored_on() -> None:
    frame = noisy(10, seed=3)
    seen: list[pd.Timestamp] = []

    def fitter(part: pd.DataFrame) -> SineModel:
        model = SineModel(part)
        seen.append(model.seen)
        return model

    # A week asked for, but a holdout model keeps at least half the span (10 days - 5 min): 4.5 days held out.
    errors = holdout_residuals(fitter, frame, pd.Timedelta(days=7), folds=3)
    span = frame["ds"].iloc[-1] - frame["ds"].iloc[0]
    stretch = span / 2 / 3
    end = frame["ds"].iloc[-1] + pd.Timedelta(1, unit="ns")
    assert len(errors) == int((frame["ds"] >= end - 3 * stretch).sum())
    for k, last_seen in zip((3, 2, 1), seen, strict=True):
        assert last_seen < end - k * stretch
        assert last_seen >= end - k * stretch - pd.Timedelta(minutes=5)


def test_too_short_to_hold_anything_out_is_the_model_as_it_is() -> None:
    frame = pd.DataFrame({"ds": [START, START + pd.Timedelta(hours=1)], "y": [1.0, 2.0]})
    model = calibrate(SineModel, frame, 0.95)
    assert isinstance(model, SineModel)


def test_the_service_scores_with_the_calibrated_interval_and_a_users_model_with_its_own(tmp_path: Path) -> None:
    moment = datetime(2026, 11, 27, 10, tzinfo=UTC)
    reading = [contract.Reading(id="r", sensor="s", ts=moment + timedelta(seconds=1), v=12.5)]
    # The user's model claims ±1 around 10: 12.5 is an anomaly.
    path = tmp_path / "own.joblib"
    joblib.dump({"model": ConstantModel(level=10.0, width=1.0), "metadata": {}}, path)
    (own,) = score(load_model(path), reading)
    assert isinstance(own, contract.Prediction) and own.anomaly and own.yhat_upper == 11.0
    # Calibrated to ±3 around the same yhat: inside.
    joblib.dump({"model": Calibrated(ConstantModel(level=10.0, width=1.0), 3.0, 0.95, 100)}, path)
    (calibrated,) = score(load_model(path), reading)
    assert isinstance(calibrated, contract.Prediction) and not calibrated.anomaly
    assert (calibrated.yhat, calibrated.yhat_lower, calibrated.yhat_upper) == (10.0, 7.0, 13.0)
    with pytest.raises(ValueError, match="finite"):
        Calibrated(ConstantModel(level=0.0, width=1.0), math.inf, 0.95, 1)


def test_outliers_worked_by_hand() -> None:
    y = np.array([1.0, -1.0, 1.0, -1.0, 1.0, 30.0, -1.0])
    # Residuals from 0: median 1, MAD median(|r - 1|) = median(0, 2, 0, 2, 0, 29, 2) = 2, sigma 2.9652:
    # only 30 is more than 5 sigma (14.83) from the median.
    assert outliers(y, np.zeros(7)).tolist() == [False] * 5 + [True, False]
    assert not outliers(np.ones(5), np.ones(5)).any()  # MAD 0: nothing is called an outlier


def test_fitting_without_outliers_drops_them_and_fits_again() -> None:
    frame = pd.DataFrame({"ds": pd.date_range(START, periods=7, freq="h"), "y": [1, -1, 1, -1, 1, 30, -1.0]})
    fitted: list[list[float]] = []

    class Mean:
        def __init__(self, part: pd.DataFrame) -> None:
            fitted.append(part["y"].tolist())
            self.level = 0.0

        def predict(self, part: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"yhat": np.full(len(part), self.level)})

    fit_without_outliers(Mean, frame)
    assert fitted == [[1, -1, 1, -1, 1, 30, -1], [1, -1, 1, -1, 1, -1]]


def test_season_readings_is_the_longest_season_seen_twice() -> None:
    def times(freq: str, days: int) -> pd.Series:
        return pd.Series(pd.date_range(START, START + days * DAY, freq=freq))

    assert season_readings(times("30min", 14)) == 336
    assert season_readings(times("1h", 13)) == 24  # less than two weeks: the day
    assert season_readings(times("8h", 28)) == 21  # 3 a day is no daily season, but 21 a week is
    assert season_readings(times("1h", 1)) is None
    assert season_readings(times("1D", 60)) == 7
    assert season_readings(pd.Series([START])) is None


def test_a_day_long_anomaly_is_outvoted_by_the_other_weeks() -> None:
    ds = pd.Series(pd.date_range(START, periods=21 * 24, freq="h"))
    days = ((ds - START) / DAY).to_numpy()
    y = 100 + 10 * np.sin(2 * np.pi * days) - 20 * (ds.dt.day_of_week >= 5).to_numpy()
    y = y + np.random.default_rng(4).normal(0, 0.5, len(y))
    anomaly = (days >= 14) & (days < 15)
    y[anomaly] = 0.0
    flagged = seasonal_outliers(pd.DataFrame({"ds": ds, "y": y}))
    assert flagged is not None and flagged[anomaly].all()
    assert flagged[~anomaly].sum() <= 3  # of 480 normal readings: the noise's tails, at most
    # With a gap (NaN) in its grid, the expectation fills it with the weekday's shape.
    grid = y.copy()
    grid[anomaly] = math.nan
    filled = cleaned(grid, 168)
    assert np.abs(filled[anomaly] - (100 + 10 * np.sin(2 * np.pi * days[anomaly]))).max() < 2
    assert seasonal_outliers(pd.DataFrame({"ds": ds[:30], "y": y[:30]})) is None  # no season seen twice
