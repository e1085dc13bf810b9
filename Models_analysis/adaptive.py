"""Adaptive intervals: a sensor's share of anomalies kept at its model's nominal level while the series drifts.

A calibrated interval holds its level on the errors it was sized on, and a
sensor's series moves on after that: a model refitted daily on errors up to a
week ahead gave a 95 % interval that held 95.5-97.1 % of three real series
(docs/forecasts.md). Adaptive conformal inference (Gibbs and Candès, *Adaptive
Conformal Inference Under Distribution Shift*, NeurIPS 2021) corrects that as
the readings come: for each sensor the service keeps a level
``alpha`` (the share of readings the interval may miss), serves the interval
at ``1 - alpha`` and, after each reading, moves it by
``alpha += gamma * (target - missed)``, ``missed`` being 1 for a reading
outside the interval (an anomaly) and 0 inside. Readings missed more often
than ``target`` widen the interval, fewer narrow it; over ``T`` readings the
share missed is within about ``(1 + gamma) / (gamma * T)`` of ``target``
whatever the series does (their Proposition 4.1), as long as ``alpha`` is
not held at a bound. The guarantee holds whichever models serve the
readings, so a sensor's level carries over a model swap or a promotion (the
new model starts where the sensor's series left the old one); it starts
again at the target only when the new model's nominal level differs.

``alpha`` is kept within [``target / 10``, ``min(0.5, 4 * target)``]: a
sensor that breaks and reads nonsense for an hour widens its interval to at
most the bound (1.43 times a 95 % one, 1.28 times a 99 % one), so what is far
off is still flagged, and its interval is back to the model's after about
``0.9 / gamma`` readings inside (180 at the defaults) once the sensor is well
again; the narrowest is 0.65 times a 95 % interval (0.80 times a 99 % one).
An interval is rescaled around ``yhat`` by the ratio of normal
quantiles, each side on its own (Prophet's own interval is not symmetric);
the guarantee needs only that a lower ``alpha`` gives a wider interval, not
that the errors are normal. The levels live in memory: a restarted model
service, or a sensor's partition moved to another, starts again at the
target.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import pandas as pd

from Models_analysis.calibration import Calibrated
from pipeline import contract

#: Gibbs and Candès's step: small enough that one anomaly moves a 95 % interval by 0.3 %.
DEFAULT_GAMMA = 0.005
#: Levels are kept for this many sensors; the least recently scored is dropped past it.
MAX_TRACKED = 100_000

_NORMAL = NormalDist()


def quantile_ratio(alpha: float, target: float) -> float:
    """How much wider (>1) or narrower (<1) the interval at ``1 - alpha`` is than the one at ``1 - target``."""
    return _NORMAL.inv_cdf(1 - alpha / 2) / _NORMAL.inv_cdf(1 - target / 2)


@dataclass(frozen=True)
class Bounds:
    """The interval of one forecast: ``lower <= yhat <= upper`` is not required (a model may say otherwise)."""

    yhat: float
    lower: float
    upper: float

    def scaled(self, ratio: float) -> Bounds:
        """The interval with each side's distance from ``yhat`` times ``ratio``."""
        return Bounds(
            self.yhat, self.yhat - (self.yhat - self.lower) * ratio, self.yhat + (self.upper - self.yhat) * ratio
        )

    def holds(self, value: float) -> bool:
        """Whether ``value`` is inside (the bounds count as inside, as in the anomaly check)."""
        return self.lower <= value <= self.upper


class Level:
    """One sensor's ``alpha`` for one model: the interval to serve, and the step after each reading."""

    def __init__(self, target: float, gamma: float) -> None:
        if not 0 < target < 1:
            raise ValueError(f"a target share of misses is between 0 and 1, not {target}")
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma is in [0, 1), not {gamma}")
        self.target = target
        self.gamma = gamma
        self.low = target / 10
        self.high = min(0.5, 4 * target)
        self.alpha = target

    def interval(self, bounds: Bounds) -> Bounds:
        """``bounds`` (the model's interval at the target level) rescaled to the current level."""
        if self.alpha == self.target:
            return bounds
        scaled = bounds.scaled(quantile_ratio(self.alpha, self.target))
        # A model stating an absurd level (1e-9) with bounds near the largest forecast allowed would overflow:
        # its own interval is served then, never an infinite one (a prediction's bounds are finite numbers).
        return scaled if math.isfinite(scaled.lower) and math.isfinite(scaled.upper) else bounds

    def step(self, missed: bool) -> None:
        """After a reading: one more miss (or hit) moves ``alpha`` by ``gamma`` times its distance from target."""
        self.alpha = min(self.high, max(self.low, self.alpha + self.gamma * (self.target - float(missed))))


def adapt(levels: Levels, result: contract.Result, level: float | None) -> contract.Result:
    """``result`` as served: a prediction gets its sensor's interval and the anomaly flag against it.

    ``level`` is the model's :func:`nominal_level`; None (a model that does not
    state one), a prediction error or adaptation turned off leave ``result`` as it is.
    """
    if level is None or not levels.enabled or not isinstance(result, contract.Prediction):
        return result
    bounds = Bounds(result.yhat, result.yhat_lower, result.yhat_upper)
    served, missed = levels.check(result.sensor, level, bounds, result.v)
    if served == bounds:
        return result
    return result.model_copy(update={"yhat_lower": served.lower, "yhat_upper": served.upper, "anomaly": missed})


def nominal_level(model: Any, metadata: dict[str, Any]) -> float | None:
    """The share an interval of ``model`` claims to hold, when it says: None for a model that does not."""
    for value in (
        model.level if isinstance(model, Calibrated) else None,
        metadata.get("interval_width"),  # written by Models_analysis.train
        getattr(model, "interval_width", None),  # Prophet, MSTLModel, TrendModel
    ):
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
            return float(value)
    return None


class Levels:
    """The level of every sensor the service scores, up to :data:`MAX_TRACKED` of them."""

    def __init__(self, gamma: float = DEFAULT_GAMMA, max_tracked: int = MAX_TRACKED) -> None:
        if not 0 <= gamma < 1:
            raise ValueError(f"gamma is in [0, 1), not {gamma}")
        self.gamma = gamma
        self.max_tracked = max_tracked
        self._levels: OrderedDict[str, Level] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.gamma > 0

    def check(self, sensor: str, level: float, bounds: Bounds, value: float) -> tuple[Bounds, bool]:
        """The interval served for ``value`` (``bounds`` being the model's at ``level``) and whether it is an
        anomaly; then the sensor's level steps."""
        key = sensor
        state = self._levels.get(key)
        if state is None or state.target != 1 - level:
            state = Level(1 - level, self.gamma)
            self._levels[key] = state
            while len(self._levels) > self.max_tracked:
                self._levels.popitem(last=False)
        else:
            self._levels.move_to_end(key)
        served = state.interval(bounds)
        missed = not served.holds(value)
        state.step(missed)
        return served, missed

    def __len__(self) -> int:
        return len(self._levels)


def replay(values: Iterable[tuple[float, float, float, float]], level: float, gamma: float) -> list[Bounds]:
    """The intervals one sensor's readings would have been served, in order: ``(yhat, lower, upper, value)`` each.

    One level carries across refits, as across the service's model swaps. A
    forecast that is not finite (a failed refit) is passed as it is and does
    not move the level, as the service scores no reading it has no forecast for.
    """
    state = Level(1 - level, gamma)
    out = []
    for yhat, lower, upper, value in values:
        bounds = Bounds(yhat, lower, upper)
        if not all(map(math.isfinite, (yhat, lower, upper, value))):
            out.append(bounds)
            continue
        served = state.interval(bounds)
        state.step(not served.holds(value))
        out.append(served)
    return out


def adapt_points(points: pd.DataFrame, kinds: Iterable[str], level: float, gamma: float) -> pd.DataFrame:
    """A walk-forward replay's points (Models_analysis.walkforward) with the intervals of ``kinds`` as served.

    Each kind's readings are taken in their order in the series (``i``); other
    kinds (the naive baselines, which no service serves) keep their interval.
    """
    if gamma <= 0 or points.empty:
        return points
    out = points.copy()
    for kind in kinds:
        mine = out[out["kind"] == kind].sort_values("i", kind="stable")
        if mine.empty:
            continue
        columns = mine[["yhat", "yhat_lower", "yhat_upper", "y"]].to_numpy(dtype=float)
        served = replay(map(tuple, columns), level, gamma)
        out.loc[mine.index, "yhat_lower"] = [b.lower for b in served]
        out.loc[mine.index, "yhat_upper"] = [b.upper for b in served]
    return out
