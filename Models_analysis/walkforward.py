"""Walk-forward replay: forecast every reading with the model that would have been serving it, then score.

The service's model is refitted every ``refit_every`` on the trailing
``window`` of readings. :func:`folds` cuts a series' time span into those
refits; :func:`walk_forward` fits each model kind on each fold's window (only
readings *before* the fold's origin) and forecasts the fold's readings
through ``Models_analysis.model.forecast``, the call the service makes;
:func:`evaluate` scores every kind on the readings all of them forecast.

Nothing here reads files, databases or the clock, so each step is testable
on a handful of numbers. A model kind is a *fitter*: ``fitter(frame with ds
and y) -> model`` where the model has the service's ``predict``; a new kind
(another library, a calibrated interval) is one more fitter, and the points
of a :class:`Replay` (every forecast with its origin and error) are what a
calibration or a challenger-against-serving comparison needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from Models_analysis.model import forecast

#: Fits a model on a frame (``ds`` naive UTC, ``y``) and returns it; the model has ``predict``.
Fitter = Callable[[pd.DataFrame], Any]

#: The columns of :attr:`Replay.points`.
POINT_COLUMNS = ("kind", "origin", "i", "ds", "y", "yhat", "yhat_lower", "yhat_upper")


@dataclass(frozen=True)
class Fold:
    """One refit: fitted on readings in [``train_start``, ``origin``), serving those in [``origin``, ``test_end``)."""

    train_start: pd.Timestamp
    origin: pd.Timestamp
    test_end: pd.Timestamp


def folds(first: pd.Timestamp, last: pd.Timestamp, window: pd.Timedelta, refit_every: pd.Timedelta) -> list[Fold]:
    """The refits of a series from ``first`` to ``last`` (inclusive).

    The first model is fitted once a whole window has passed (origin
    ``first + window``), then one every ``refit_every``, as long as the
    origin is not after ``last``. Empty when the span is shorter than a window.
    """
    if window <= pd.Timedelta(0) or refit_every <= pd.Timedelta(0):
        raise ValueError("the window and the refit interval are positive durations")
    out = []
    origin = first + window
    while origin <= last:
        out.append(Fold(origin - window, origin, origin + refit_every))
        origin += refit_every
    return out


@dataclass
class Replay:
    """Every forecast of a walk-forward run, one row per reading and kind (see :data:`POINT_COLUMNS`).

    ``i`` is the reading's row in the series, so kinds are compared reading by
    reading even when two readings share a time. ``skipped`` counts the
    readings no model forecast because their fold's window held fewer than
    ``min_train_rows`` readings; ``failures`` keeps, per kind, why a fold's
    fit or predict failed (its readings are then missing for that kind).
    """

    points: pd.DataFrame
    fitted_folds: int = 0
    skipped: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)
    fit_seconds: dict[str, list[float]] = field(default_factory=dict)


def walk_forward(
    series: pd.DataFrame,
    window: pd.Timedelta,
    refit_every: pd.Timedelta,
    fitters: Mapping[str, Fitter],
    min_train_rows: int = 2,
    on_fold: Callable[[Fold], None] | None = None,
) -> Replay:
    """Replay ``series`` (``ds`` naive UTC, sorted; ``y``) fold by fold with every fitter.

    Each fitter gets a copy of the fold's window only, so no model ever sees a
    reading at or after its fold's origin, let alone the one it forecasts.
    ``on_fold`` is called after each fold (a progress bar).
    """
    ds = series["ds"]
    if not ds.is_monotonic_increasing:
        raise ValueError("the series must be sorted by time")
    replay = Replay(pd.DataFrame(columns=list(POINT_COLUMNS)))
    chunks: list[pd.DataFrame] = []
    for fold in folds(ds.iloc[0], ds.iloc[-1], window, refit_every):
        test = series[(ds >= fold.origin) & (ds < fold.test_end)]
        if not test.empty:
            train = series[(ds >= fold.train_start) & (ds < fold.origin)]
            if len(train) < min_train_rows:
                replay.skipped += len(test)
            else:
                replay.fitted_folds += 1
                for kind, fitter in fitters.items():
                    chunks.append(_forecast_fold(kind, fitter, fold, train, test, replay))
        if on_fold is not None:
            on_fold(fold)
    if chunks:
        replay.points = pd.concat(chunks, ignore_index=True)
    return replay


def _forecast_fold(
    kind: str, fitter: Fitter, fold: Fold, train: pd.DataFrame, test: pd.DataFrame, replay: Replay
) -> pd.DataFrame:
    rows = pd.DataFrame(
        {"kind": kind, "origin": fold.origin, "i": test.index.to_numpy(), "ds": test["ds"].to_numpy()}
        | {"y": test["y"].to_numpy(dtype=float)}
    )
    started = time.monotonic()
    try:
        model = fitter(train[["ds", "y"]].reset_index(drop=True))
        replay.fit_seconds.setdefault(kind, []).append(time.monotonic() - started)
        times = [moment.to_pydatetime() for moment in pd.DatetimeIndex(test["ds"]).tz_localize("UTC")]
        predicted = forecast(model, times)
        for column in ("yhat", "yhat_lower", "yhat_upper"):
            rows[column] = predicted[column].to_numpy(dtype=float)
    except Exception as error:  # noqa: BLE001 - one failed fit must not end a long replay; it is reported
        replay.failures.setdefault(kind, []).append(f"fold at {fold.origin}: {type(error).__name__}: {error}")
        for column in ("yhat", "yhat_lower", "yhat_upper"):
            rows[column] = math.nan
    return rows


@dataclass(frozen=True)
class Scores:
    """How well one kind forecast the readings it was scored on."""

    n: int
    #: Mean absolute error.
    mae: float
    #: Share of readings inside [yhat_lower, yhat_upper] (the bounds count as inside, as in the service).
    coverage: float
    #: Mean of yhat_upper - yhat_lower.
    mean_width: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scores(y: np.ndarray, yhat: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> Scores:
    """MAE, interval coverage and mean interval width of forecasts against what was observed."""
    y, yhat, lower, upper = (np.asarray(a, dtype=float) for a in (y, yhat, lower, upper))
    if not len(y):
        return Scores(0, math.nan, math.nan, math.nan)
    return Scores(
        n=len(y),
        mae=float(np.mean(np.abs(y - yhat))),
        coverage=float(np.mean((lower <= y) & (y <= upper))),
        mean_width=float(np.mean(upper - lower)),
    )


def relative(value: float, reference: float) -> float:
    """``value / reference``, NaN when the reference is 0 or NaN (nothing to compare with)."""
    if not reference or math.isnan(reference):
        return math.nan
    return value / reference


def common_points(points: pd.DataFrame) -> pd.DataFrame:
    """The rows of the readings that every kind forecast (finite yhat and interval)."""
    if points.empty:
        return points
    finite = np.isfinite(points[["yhat", "yhat_lower", "yhat_upper"]].to_numpy(dtype=float)).all(axis=1)
    kinds = points["kind"].nunique()
    complete = points[finite].groupby("i")["kind"].nunique()
    keep = complete.index[complete == kinds]
    return points[finite & points["i"].isin(keep)]


def evaluate(replay: Replay, reference: str) -> dict[str, dict[str, Any]]:
    """Per kind: :class:`Scores` on the common readings, MAE relative to ``reference``, readings missing.

    Every kind is scored on the same readings (those every kind forecast), so
    the numbers compare; ``missing`` is how many of the readings a kind was
    asked to forecast it gave no finite forecast or interval for.
    """
    points = replay.points
    common = common_points(points)
    finite = np.isfinite(points[["yhat", "yhat_lower", "yhat_upper"]].to_numpy(dtype=float)).all(axis=1)
    out: dict[str, dict[str, Any]] = {}
    for kind in points["kind"].unique():
        mine = common[common["kind"] == kind]
        found = scores(
            mine["y"].to_numpy(), mine["yhat"].to_numpy(), mine["yhat_lower"].to_numpy(), mine["yhat_upper"].to_numpy()
        )
        out[str(kind)] = found.as_dict() | {"missing": int(((points["kind"] == kind) & ~finite).sum())}
    reference_mae = out.get(reference, {}).get("mae", math.nan)
    for values in out.values():
        values["mae_relative"] = relative(values["mae"], reference_mae)
    return out
