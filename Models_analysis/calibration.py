"""Split-conformal intervals: a model's interval sized from its own errors on readings it had not seen.

A forecast interval is only useful if a nominal 95 % interval holds about 95 %
of the readings; Prophet's (from sampled trend changes) and a normal interval
from in-sample residuals both hold what the model's assumptions say, not what
happens. :func:`calibrate` measures instead: the last ``holdout`` of the
training window (by default a week) is forecast by a model fitted only on
the readings before it (or cut into ``folds`` stretches, each forecast by a
model fitted on what came before it, as daily refits would have), and the
interval's half-width is the split-conformal quantile of those absolute
errors (:func:`half_width`). The
model served is then fitted on the whole window and wrapped in
:class:`Calibrated`, whose ``predict`` keeps the model's ``yhat`` and replaces
its interval by ``yhat ± half_width``.

The coverage guarantee of split conformal assumes exchangeable errors; errors
of a time series are not quite (they drift, they correlate), so the backtest
is what says how close to nominal the interval holds. A model that is not a
:class:`Calibrated` (a user's own) keeps its own interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

#: A holdout model is fitted on at least this share of the window.
MIN_TRAIN_SHARE = 0.5
#: What is held out by default: a week, so that every weekday's errors are in it.
HOLDOUT = pd.Timedelta(days=7)


def half_width(residuals: np.ndarray, level: float) -> float:
    """The split-conformal half-width: the ``ceil((n + 1) * level)``-th smallest absolute residual.

    With n exchangeable residuals, a new error is within it with probability at
    least ``level``. When that rank exceeds n (too few residuals for the level),
    the largest residual is used: the guarantee then does not hold, which the
    caller sees in :attr:`Calibrated.residuals`.
    """
    if not 0 < level < 1:
        raise ValueError(f"an interval's level is between 0 and 1, not {level}")
    errors = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    errors = errors[np.isfinite(errors)]
    if not len(errors):
        raise ValueError("no finite residuals to calibrate an interval with")
    rank = math.ceil((len(errors) + 1) * level)
    return float(errors[min(rank, len(errors)) - 1])


class Calibrated:
    """A model whose interval is ``yhat ± half_width``: the model's own ``yhat``, a calibrated interval.

    ``residuals`` is how many held-out errors sized it, ``level`` the share it
    should hold. Saved with joblib like any model; the service calls ``predict``.
    """

    def __init__(self, model: Any, half_width: float, level: float, residuals: int) -> None:
        if not math.isfinite(half_width) or half_width < 0:
            raise ValueError(f"a half-width is finite and not negative, not {half_width}")
        self.model = model
        self.half_width = float(half_width)
        self.level = level
        self.residuals = residuals

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's ``yhat`` for each ``ds`` of ``frame``, with the calibrated interval."""
        yhat = self.model.predict(frame)["yhat"].to_numpy(dtype=float)
        return pd.DataFrame(
            {
                "ds": frame["ds"].to_numpy(),
                "yhat": yhat,
                "yhat_lower": yhat - self.half_width,
                "yhat_upper": yhat + self.half_width,
            }
        )

    def __repr__(self) -> str:
        return (
            f"Calibrated({type(self.model).__name__}, ±{self.half_width:.4g} for {self.level:g}, "
            f"from {self.residuals} residuals)"
        )


def holdout_residuals(
    fitter: Callable[[pd.DataFrame], Any], frame: pd.DataFrame, holdout: pd.Timedelta, folds: int = 1
) -> np.ndarray:
    """Errors on the last ``holdout`` of ``frame``, cut into ``folds`` stretches each forecast by a model fitted on
    the readings before it.

    ``holdout`` shrinks so that every holdout model is fitted on at least
    :data:`MIN_TRAIN_SHARE` of the frame's span; empty when the frame is too
    short for any holdout (fewer than 2 readings before it).
    """
    ds = pd.to_datetime(frame["ds"])
    first, last = ds.min(), ds.max()
    span = last - first
    if folds < 1 or span <= pd.Timedelta(0):
        return np.array([], dtype=float)
    horizon = min(pd.Timedelta(holdout), span * (1 - MIN_TRAIN_SHARE)) / folds
    end = last + pd.Timedelta(1, unit="ns")  # the last reading belongs to the last stretch
    errors: list[np.ndarray] = []
    for k in range(folds, 0, -1):
        start, stop = end - k * horizon, end - (k - 1) * horizon
        train = frame[ds < start]
        test = frame[(ds >= start) & (ds < stop)]
        if len(train) < 2 or test.empty or train["ds"].nunique() < 2:
            continue
        model = fitter(train.reset_index(drop=True))
        # Only yhat: the model may draw no interval of its own (Prophet with uncertainty_samples=0).
        yhat = model.predict(pd.DataFrame({"ds": test["ds"].to_numpy()}))["yhat"].to_numpy(dtype=float)
        if len(yhat) != len(test):
            raise ValueError(f"the model's predict returned {len(yhat)} rows for {len(test)} times")
        errors.append(test["y"].to_numpy(dtype=float) - yhat)
    return np.concatenate(errors) if errors else np.array([], dtype=float)


def calibrate(
    fitter: Callable[[pd.DataFrame], Any],
    frame: pd.DataFrame,
    level: float,
    holdout: pd.Timedelta = HOLDOUT,
    folds: int = 1,
) -> Any:
    """Fit on ``frame`` and calibrate the interval on held-out errors; the model as is when none could be had.

    The errors are those of :func:`holdout_residuals` (the last ``holdout``
    of ``frame``, ``folds`` models); the model served is fitted on all of ``frame``.
    """
    residuals = holdout_residuals(fitter, frame, holdout, folds)
    model = fitter(frame)
    residuals = residuals[np.isfinite(residuals)]
    if not len(residuals):
        return model
    return Calibrated(model, half_width(residuals, level), level, len(residuals))
