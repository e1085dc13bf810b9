"""Outliers in training data: sensor data holds anomalies, and a model fitted on them repeats them.

A pump stopped for a day, fitted, bends the seasonal curves and comes back as
forecasts a day or a week later. :func:`outliers` flags readings far from an
expectation (a robust z-score of the residuals). The expectation is either a
robust seasonal profile of the readings themselves (:func:`expectation`,
:func:`seasonal_outliers`: no model needed, and a model flexible enough to
fit the anomaly cannot hide it) or a first fit (:func:`fit_without_outliers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from Models_analysis.baselines import DAY, sampling_interval

#: A training reading this many robust standard deviations (1.4826 MAD) from the first fit is an outlier.
OUTLIER_SIGMAS = 5.0


def outliers(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """Which readings are outliers: residual more than OUTLIER_SIGMAS robust standard deviations from the median.

    None when the residuals' MAD is 0 (more than half fitted exactly).
    """
    residuals = np.asarray(y, dtype=float) - np.asarray(yhat, dtype=float)
    centre = np.median(residuals)
    scale = 1.4826 * np.median(np.abs(residuals - centre))
    if not scale > 0:
        return np.zeros(len(residuals), dtype=bool)
    return np.abs(residuals - centre) > OUTLIER_SIGMAS * scale


def fit_without_outliers(fit_one: Callable[[pd.DataFrame], Any], frame: pd.DataFrame) -> Any:
    """Fit, drop the training readings the fit calls outliers (:func:`outliers`), fit again on the rest.

    ``fit_one(frame) -> model with predict``; the first fit's in-sample ``yhat`` decides.
    """
    model = fit_one(frame)
    yhat = model.predict(frame[["ds"]])["yhat"].to_numpy(dtype=float)
    flagged = outliers(frame["y"].to_numpy(dtype=float), yhat)
    if not flagged.any() or (~flagged).sum() < 2:
        return model
    return fit_one(frame[~flagged].reset_index(drop=True))


def expectation(y: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """A robust expectation of every point of a regular series ``y`` (NaN: no reading), and its outliers.

    The expectation is a level (a centred rolling median over one ``period``
    of the readings less their profile) plus a profile (the median, over the
    periods of the series, of the readings at the same phase less the level):
    a day-long anomaly in one week of three is outvoted by the other two.
    Outliers are the readings too far from it (:func:`outliers`); level,
    profile and outliers are found three times over, each time without the
    outliers found before. Returns (expectation, outlier mask).
    """
    y = np.asarray(y, dtype=float)
    known = np.isfinite(y)
    flagged = np.zeros(len(y), dtype=bool)
    expected = y
    profile = pd.Series(np.zeros(len(y)))
    phase = np.arange(len(y)) % max(period, 1)
    for _ in range(3):
        series = pd.Series(np.where(flagged, np.nan, y), dtype=float)
        level = (series - profile).rolling(period, center=True, min_periods=period // 2 + 1).median().bfill().ffill()
        profile = (series - level).groupby(phase).transform("median").fillna(0.0)
        expected = (level + profile).interpolate(limit_direction="both").to_numpy(dtype=float)
        flagged[known] = outliers(y[known], expected[known])
    return expected, flagged


def cleaned(y: np.ndarray, period: int) -> np.ndarray:
    """A regular series with its gaps (NaN) and outliers replaced by their :func:`expectation`.

    Left in, a seasonal decomposition takes an anomaly, or a straight line
    across a gap, for that weekday's shape and repeats it a week later.
    """
    expected, flagged = expectation(y, period)
    known = np.isfinite(y)
    out = np.where(known & ~flagged, y, expected)
    if not np.isfinite(out).all():  # a stretch with no reading in any period: a straight line across it
        out = pd.Series(out).interpolate(limit_direction="both").to_numpy(dtype=float)
    return np.asarray(out, dtype=float)


def season_readings(ds: pd.Series) -> int | None:
    """The longest season the times span twice, in readings at their sampling interval: a week, else a day.

    None for readings a day or more apart, or spanning less than two days.
    """
    times = pd.to_datetime(ds)
    if times.nunique() < 2:
        return None
    interval = sampling_interval(times)
    span = times.max() - times.min()
    for days in (7, 1):
        readings = round(DAY * days / interval)
        if readings >= 4 and span >= 2 * DAY * days:
            return int(readings)
    return None


def seasonal_outliers(frame: pd.DataFrame) -> np.ndarray | None:
    """Which readings of ``frame`` (``ds``, ``y``) are outliers against :func:`expectation` on their season.

    The readings are placed on a grid of their sampling interval (readings in
    one grid cell averaged; cells with none are gaps). None when the frame has
    no season to compare with (:func:`season_readings`).
    """
    period = season_readings(frame["ds"])
    if period is None:
        return None
    ds = pd.to_datetime(frame["ds"])
    interval = sampling_interval(ds)
    k = np.rint(((ds - ds.min()) / interval).to_numpy(dtype=float)).astype(np.int64)
    values = frame["y"].to_numpy(dtype=float)
    counts = np.bincount(k)
    grid = np.where(counts > 0, np.bincount(k, weights=values) / np.maximum(counts, 1), np.nan)
    expected, _ = expectation(grid, period)
    return outliers(values, expected[k])
