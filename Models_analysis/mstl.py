"""MSTL with an exponential-smoothing trend: a fast statistical model behind the service's interface.

``MSTLModel().fit(frame with ds, y)``, then ``predict(frame with ds) -> yhat,
yhat_lower, yhat_upper`` like every model the service serves
(``python -m Models_analysis.train --kind mstl``). The readings are averaged
onto a regular grid (the sampling interval, coarser when the window would
otherwise hold more than :data:`MAX_POINTS`; gaps interpolated), split by
statsmodels' MSTL into daily and weekly seasonal components (those the data
spans, as for Prophet) and the rest, and the rest is forecast by exponential
smoothing: simple, or with a damped additive trend, whichever has the lower
AIC (an AutoETS of two candidates). Gaps and outliers are replaced by a
robust expectation of them before the decomposition (:func:`cleaned`), so an
anomaly in the window is not repeated a week later. A forecast is that plus each seasonal
component's last period repeated (statsforecast's MSTL forecasts the same
way; statsforecast itself needs pandas < 3, which this project is past).
Times between grid points are interpolated linearly.

The interval of its own is ``yhat ± z·σ``, σ the standard deviation of the
one-step in-sample errors: too narrow for forecasts a day ahead, which is why
``train`` calibrates it (Models_analysis.calibration).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from Models_analysis.baselines import DAY, sampling_interval, z_score
from Models_analysis.robust import cleaned

#: The grid is coarsened until a window holds at most this many points (MSTL's cost grows with it).
MAX_POINTS = 3_000
#: Grid steps that divide a day, finest first; a sampling interval is rounded up to one of them.
STEPS = tuple(
    pd.Timedelta(s)
    for s in (
        *("1s", "2s", "5s", "10s", "15s", "20s", "30s"),
        *("1min", "2min", "5min", "10min", "15min", "20min", "30min"),
        *("1h", "2h", "3h", "4h", "6h", "8h", "12h"),
    )
)
#: A seasonal period is used when the data spans this many of them and it holds at least 4 grid points.
MIN_PERIODS = 2
#: Forecasts further than this many grid steps past the last reading are refused.
MAX_STEPS_AHEAD = 1_000_000


def grid_step(interval: pd.Timedelta, span: pd.Timedelta) -> pd.Timedelta:
    """The grid step: the finest of :data:`STEPS` at least ``interval`` with at most MAX_POINTS over ``span``."""
    wanted = max(interval, span / MAX_POINTS)
    for step in STEPS:
        if step >= wanted * 0.999:  # a median gap of 29.99 min is a 30-min grid
            return step
    return wanted.ceil("s")


def periods(step: pd.Timedelta, span: pd.Timedelta) -> list[int]:
    """The daily and weekly periods in grid steps that the span holds (each at least 4 steps, 2 periods)."""
    out = []
    for days in (1, 7):
        length = DAY * days
        per = length / step
        if per >= 4 and per == int(per) and span >= MIN_PERIODS * length:
            out.append(int(per))
    return out


class MSTLModel:
    """MSTL seasonal components plus an exponential-smoothing rest; see the module's docstring."""

    def __init__(self, interval_width: float = 0.95) -> None:
        self.interval_width = interval_width
        self.z = z_score(interval_width)
        self.origin = pd.Timestamp(0)
        self.step = pd.Timedelta(1, unit="s")
        self.periods: list[int] = []
        #: Per seasonal component, its last period of values (the forecast repeats it).
        self.last_seasons: list[np.ndarray] = []
        self.fitted = np.array([], dtype=float)
        self.sigma = math.nan
        self.trend: Any = None
        self._ahead = np.array([], dtype=float)

    def fit(self, frame: pd.DataFrame) -> MSTLModel:
        """Fit on a frame with ``ds`` (naive UTC times) and ``y``."""
        ds = pd.to_datetime(frame["ds"])
        if ds.nunique() < 2:
            raise ValueError("MSTLModel needs readings at two times or more")
        span = ds.max() - ds.min()
        self.step = grid_step(sampling_interval(ds), span)
        self.origin = ds.min()
        y = self._grid(ds, frame["y"].to_numpy(dtype=float))
        self.periods = [p for p in periods(self.step, span) if 2 * p < len(y)]
        seasonal = np.zeros((len(y), 0))
        y = cleaned(y, max(self.periods, default=1))
        if self.periods:
            seasonal, _ = self._decompose(y)
        self.last_seasons = [seasonal[-p:, k].copy() for k, p in enumerate(self.periods)]
        rest = y - seasonal.sum(axis=1)
        self.trend = _auto_ets(rest)
        self.fitted = seasonal.sum(axis=1) + np.asarray(self.trend.fittedvalues, dtype=float)
        self.sigma = float(np.std(y - self.fitted))
        self._ahead = np.array([], dtype=float)
        return self

    def _decompose(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MSTL's seasonal components (one column per period) and remainder."""
        from statsmodels.tsa.seasonal import MSTL

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decomposed = MSTL(y, periods=self.periods).fit()
        seasonal = np.asarray(decomposed.seasonal, dtype=float).reshape(len(y), -1)
        return seasonal, np.asarray(decomposed.resid, dtype=float)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``yhat`` and the interval for each ``ds`` of ``frame``, in its order."""
        if self.trend is None:
            raise ValueError("the model has not been fitted")
        x = ((pd.to_datetime(frame["ds"]) - self.origin) / self.step).to_numpy(dtype=float)
        last = len(self.fitted) - 1
        needed = math.ceil(float(np.max(x, initial=last)) - last)
        if needed > MAX_STEPS_AHEAD:
            raise ValueError(f"a forecast {needed} grid steps ({self.step}) past the training data is too far ahead")
        ahead = self._forecast(needed)
        path = np.concatenate([self.fitted, ahead])
        yhat = np.interp(x, np.arange(len(path)), path)
        half = self.z * self.sigma
        return pd.DataFrame(
            {"ds": frame["ds"].to_numpy(), "yhat": yhat, "yhat_lower": yhat - half, "yhat_upper": yhat + half}
        )

    def _forecast(self, steps: int) -> np.ndarray:
        """The forecast ``steps`` grid points past the last, each seasonal component's last period repeated."""
        if steps > len(self._ahead):
            out = np.asarray(self.trend.forecast(steps), dtype=float).copy()
            for season in self.last_seasons:
                out += season[np.arange(steps) % len(season)]
            self._ahead = out
        return self._ahead[:steps]

    def _grid(self, ds: pd.Series, values: np.ndarray) -> np.ndarray:
        """The readings averaged into grid points ``origin + k * step``; NaN where there are none."""
        k = np.rint(((ds - self.origin) / self.step).to_numpy(dtype=float)).astype(np.int64)
        sums = np.bincount(k, weights=values)
        counts = np.bincount(k)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _auto_ets(values: np.ndarray) -> Any:
    """Simple exponential smoothing or a damped additive trend, whichever has the lower AIC."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the optimiser
        for trend in (None, "add"):
            try:
                result = ExponentialSmoothing(values, trend=trend, damped_trend=trend is not None).fit()
            except (ValueError, np.linalg.LinAlgError):
                continue
            if best is None or (math.isfinite(result.aic) and result.aic < best.aic):
                best = result
    if best is None:
        raise ValueError("exponential smoothing could not be fitted")
    return best
