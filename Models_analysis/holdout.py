"""How the trainer judges a challenger: both models' forecasts of the holdout, and the verdict.

The holdout is the most recent TRAINER_HOLDOUT_S of a sensor's window, which the
challenger was not fitted on. :func:`verdict` promotes a challenger only when its MAE
is at least TRAINER_MIN_GAIN below the incumbent's and its interval covers no worse
(at most COVERAGE_SLACK below the incumbent's, or above the nominal level).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import numpy as np
import pandas as pd

from Models_analysis.model import ModelError, forecast
from Models_analysis.walkforward import Scores

#: The holdout needs this many readings for a comparison to mean anything.
MIN_HOLDOUT_READINGS = 10
#: A challenger's coverage may fall this far below the incumbent's (when under the nominal level).
COVERAGE_SLACK = 0.05


def holdout_scores(model: Any, holdout: pd.DataFrame) -> Scores:
    """MAE, interval coverage and mean width of ``model``'s forecasts of the holdout's readings."""
    frame = forecast(model, [t.to_pydatetime().replace(tzinfo=UTC) for t in pd.to_datetime(holdout["ds"])])
    y = holdout["y"].to_numpy(dtype=float)
    yhat = frame["yhat"].to_numpy(dtype=float)
    lower = frame["yhat_lower"].to_numpy(dtype=float)
    upper = frame["yhat_upper"].to_numpy(dtype=float)
    if not (np.isfinite(yhat).all() and np.isfinite(lower).all() and np.isfinite(upper).all()):
        raise ModelError("the model's forecast of the holdout is not finite")
    inside = (lower <= y) & (y <= upper)
    return Scores(len(y), float(np.abs(y - yhat).mean()), float(inside.mean()), float((upper - lower).mean()))


def verdict(challenger: Scores, incumbent: Scores | None, min_gain: float, nominal: float) -> tuple[bool, str]:
    """Whether the challenger is better, and why (a sentence for people, stored with the decision)."""
    if incumbent is None:
        return True, "no model could forecast the holdout before: the challenger is the first that does"
    bound = incumbent.mae * (1 - min_gain)
    if not challenger.mae < bound or (challenger.mae == 0 and incumbent.mae == 0):
        return False, (
            f"holdout MAE {challenger.mae:.4g} is not at least {100 * min_gain:g} % below the incumbent's "
            f"{incumbent.mae:.4g} (TRAINER_MIN_GAIN)"
        )
    floor = min(incumbent.coverage, nominal) - COVERAGE_SLACK
    if challenger.coverage < floor:
        return False, (
            f"holdout MAE {challenger.mae:.4g} beats {incumbent.mae:.4g}, but the interval covers "
            f"{100 * challenger.coverage:.1f} % against the incumbent's {100 * incumbent.coverage:.1f} % "
            f"(nominal {100 * nominal:g} %)"
        )
    return True, (
        f"holdout MAE {challenger.mae:.4g} against the incumbent's {incumbent.mae:.4g} "
        f"({100 * (1 - challenger.mae / incumbent.mae):.1f} % lower), coverage {100 * challenger.coverage:.1f} % "
        f"against {100 * incumbent.coverage:.1f} %"
    )


def thin(frame: pd.DataFrame, most: int) -> pd.DataFrame:
    """At most ``most`` rows, evenly spaced in the frame's order (all of it when it is small enough)."""
    if len(frame) <= most:
        return frame
    keep = np.unique(np.linspace(0, len(frame) - 1, most).round().astype(int))
    return frame.iloc[keep].reset_index(drop=True)
