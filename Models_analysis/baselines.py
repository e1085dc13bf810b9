"""Seasonal-naive baselines behind the model interface: ``fit(frame with ds, y)``, ``predict(frame with ds)``.

A forecasting model earns its keep by beating "the same time one day
earlier" and "the same time one week earlier". :class:`SeasonalNaive` is
that forecast, as a model like any other (it can be saved with joblib and
served by the model service, as ``Models_analysis.adapters.TrendModel``), so
the backtest replays it exactly as it replays Prophet.

Everything here is pure: no I/O, no clock. Times are naive UTC, as in the
frames ``train`` fits on.
"""

from __future__ import annotations

import math
from datetime import timedelta
from statistics import NormalDist

import numpy as np
import pandas as pd

DAY = timedelta(days=1)


def sampling_interval(ds: pd.Series) -> pd.Timedelta:
    """The series' typical spacing: the median of the positive gaps between consecutive times.

    Raises ValueError when there are fewer than two distinct times.
    """
    times = np.sort(pd.to_datetime(ds).to_numpy(dtype="datetime64[ns]").astype(np.int64))
    gaps = np.diff(times)
    gaps = gaps[gaps > 0]
    if not len(gaps):
        raise ValueError("fewer than two distinct times: no sampling interval")
    return pd.Timedelta(int(np.median(gaps)), unit="ns")


def human(span: timedelta) -> str:
    """A duration as people write it: 7d, 9d 23h, 30min, 1.5s."""
    seconds = pd.Timedelta(span).total_seconds()
    if seconds == 0:
        return "0s"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{count:.0f}{unit}")
    if seconds:
        parts.append(f"{seconds:g}s")
    return sign + " ".join(parts)


def readings_per_day(interval: pd.Timedelta) -> int:
    """How many readings ``interval`` apart make a day: the daily season in readings.

    Raises ValueError for data sampled a day or more apart, which has no
    "same time one day earlier".
    """
    if interval >= DAY:
        raise ValueError(
            f"readings are {human(interval)} apart; the daily and weekly naive need readings less than a day apart"
        )
    return round(DAY / interval)


def z_score(level: float) -> float:
    """z of a two-sided normal interval holding ``level`` of the probability (1.96 for 0.95)."""
    if not 0 < level < 1:
        raise ValueError(f"an interval's level is between 0 and 1, not {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


class SeasonalNaive:
    """Forecasts the value one season (``lag``) earlier, with a normal interval from its own errors.

    Fitted on a frame (``ds``, ``y``), it keeps those readings. A time ``t``
    at most one season after the last of them gets the reading at ``t - lag``;
    a later one the reading ``k`` seasons back, the first one the model has
    seen (``t - k * lag``). A reading counts as "at" a time when it is within
    ``tolerance`` of it (default: half the sampling interval); with none
    there, the forecast is NaN.

    The interval is ``yhat ± z * sigma * sqrt(k)``, ``sigma`` the root mean
    square of the one-season errors within the training frame (the
    seasonal-naive interval of Hyndman and Athanasopoulos, *Forecasting:
    Principles and Practice*, section 5.5).
    """

    def __init__(self, lag: timedelta, interval_width: float = 0.99, tolerance: timedelta | None = None) -> None:
        if lag <= timedelta(0):
            raise ValueError(f"a season is a positive duration, not {lag}")
        self.lag = pd.Timedelta(lag)
        self.interval_width = interval_width
        self.z = z_score(interval_width)
        self.tolerance = None if tolerance is None else pd.Timedelta(tolerance)
        self.times = np.array([], dtype=np.int64)
        self.values = np.array([], dtype=float)
        self.sigma = math.nan

    def fit(self, frame: pd.DataFrame) -> SeasonalNaive:
        """Keep the readings of ``frame`` (``ds``, ``y``) and size the interval from their one-season errors."""
        ordered = frame.sort_values("ds", kind="stable")
        self.times = _ns(ordered["ds"])
        self.values = ordered["y"].to_numpy(dtype=float)
        if self.tolerance is None:
            self.tolerance = sampling_interval(ordered["ds"]) / 2 if len(np.unique(self.times)) > 1 else self.lag / 2
        earlier = self._at(self.times - self.lag.value)
        errors = self.values - earlier
        errors = errors[np.isfinite(errors)]
        self.sigma = float(np.sqrt(np.mean(errors**2))) if len(errors) else math.nan
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``yhat``, ``yhat_lower``, ``yhat_upper`` for each ``ds`` of ``frame``, in its order."""
        if not len(self.times):
            raise ValueError("the model has not been fitted")
        wanted = _ns(frame["ds"])
        last = self.times[-1]
        # Seasons back to the first one the model has seen: 1 up to one season past its last reading.
        seasons = np.maximum(1, np.ceil((wanted - last) / self.lag.value)).astype(np.int64)
        yhat = self._at(wanted - seasons * self.lag.value)
        half = self.z * self.sigma * np.sqrt(seasons)
        return pd.DataFrame(
            {"ds": frame["ds"].to_numpy(), "yhat": yhat, "yhat_lower": yhat - half, "yhat_upper": yhat + half}
        )

    def _at(self, moments: np.ndarray) -> np.ndarray:
        """The reading nearest each moment (in ns) within the tolerance, else NaN."""
        assert self.tolerance is not None
        out = np.full(len(moments), math.nan)
        if not len(self.times):
            return out
        right = np.clip(np.searchsorted(self.times, moments), 0, len(self.times) - 1)
        left = np.clip(right - 1, 0, len(self.times) - 1)
        nearest = np.where(np.abs(self.times[left] - moments) <= np.abs(self.times[right] - moments), left, right)
        close = np.abs(self.times[nearest] - moments) <= self.tolerance.value
        out[close] = self.values[nearest[close]]
        return out


def _ns(ds: pd.Series) -> np.ndarray:
    return pd.to_datetime(ds).to_numpy(dtype="datetime64[ns]").astype(np.int64)
