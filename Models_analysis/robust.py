"""Outliers in training data: sensor data holds anomalies, and a model fitted on them repeats them.

A pump stopped for a day, fitted, bends the seasonal curves and comes back as
forecasts a day or a week later. :func:`outliers` flags the readings far from
a first fit (a robust z-score of the residuals); :func:`fit_without_outliers`
fits again without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

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
