"""Models that are not Prophet, behind the same interface: ``predict(frame with "ds") -> yhat, yhat_lower, yhat_upper``.

Save an instance with joblib (``python -m Models_analysis.train --kind trend``)
and point MODEL_PATH at it. Use these as templates for your own: any class
with that ``predict`` works, as long as the class is importable where the
model service runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: z for a two-sided interval of the given coverage under a normal residual.
_Z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.96, 0.99: 2.5758}


class TrendModel:
    """A least-squares line over time with a normal interval from the residuals (numpy only)."""

    def __init__(self, interval_width: float = 0.99) -> None:
        if interval_width not in _Z:
            raise ValueError(f"interval_width must be one of {sorted(_Z)}")
        self.interval_width = interval_width
        self.slope = 0.0
        self.intercept = 0.0
        self.sigma = 0.0
        self.origin = pd.Timestamp(0)

    def fit(self, frame: pd.DataFrame) -> TrendModel:
        """Fit on a frame with ``ds`` (times) and ``y`` (values)."""
        self.origin = pd.Timestamp(frame["ds"].min())
        x = self._x(frame["ds"])
        y = frame["y"].to_numpy(dtype=float)
        self.slope, self.intercept = np.polyfit(x, y, 1) if len(frame) > 1 else (0.0, float(y[0]))
        self.sigma = float(np.std(y - (self.slope * x + self.intercept)))
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The line at each ``ds``, with the interval."""
        yhat = self.slope * self._x(frame["ds"]) + self.intercept
        half = _Z[self.interval_width] * self.sigma
        return pd.DataFrame({"ds": frame["ds"], "yhat": yhat, "yhat_lower": yhat - half, "yhat_upper": yhat + half})

    def _x(self, ds: pd.Series) -> np.ndarray:
        # Days since the first training time: keeps the numbers well scaled.
        return ((pd.to_datetime(ds) - self.origin) / pd.Timedelta(days=1)).to_numpy(dtype=float)
