"""Loading a model file and scoring readings with it.

A model is any object with ``predict(DataFrame with a "ds" column) -> DataFrame
with yhat, yhat_lower, yhat_upper`` (Prophet has it). A file may hold the bare
model (the seed's way) or a bundle ``{"model": model, "metadata": {...}}`` as
``train`` writes it. joblib files run code when loaded: load only trusted files.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from Models_analysis import metrics
from pipeline import contract

logger = logging.getLogger(__name__)

FORECAST_COLUMNS = ("yhat", "yhat_lower", "yhat_upper")


class ModelError(ValueError):
    """A model file that cannot be used; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """A model with its identity (name and content hash) and its metadata."""

    model: Any
    identity: contract.ModelIdentity
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def file_hash(path: Path) -> str:
    """The content hash that names a model file (sha256, first 16 hex digits)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def load_model(path: Path) -> LoadedModel:
    """Load a model file, or raise :class:`ModelError` saying what is wrong with it."""
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        content = joblib.load(path)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a model file"
        raise ModelError(f"{path}: not a readable joblib model file ({type(error).__name__}: {error})") from None
    metadata: dict[str, Any] = {}
    model = content
    if isinstance(content, dict) and "model" in content:
        model = content["model"]
        metadata = dict(content.get("metadata") or {})
    if not callable(getattr(model, "predict", None)):
        raise ModelError(f"{path}: holds a {type(model).__name__}, not a model with predict(DataFrame)")
    name = str(metadata.get("name") or path.stem)
    return LoadedModel(model, contract.ModelIdentity(name=name, hash=file_hash(path)), path, metadata)


def _naive_utc(moment: datetime) -> datetime:
    # Prophet refuses time-zone-aware ds; every time in the pipeline is UTC.
    return moment.astimezone(UTC).replace(tzinfo=None)


def forecast(model: Any, times: Sequence[datetime]) -> pd.DataFrame:
    """One predict call for the given times; returns a frame indexed like ``times``."""
    frame = pd.DataFrame({"ds": pd.to_datetime([_naive_utc(t) for t in times])})
    result = model.predict(frame)
    missing = [c for c in FORECAST_COLUMNS if c not in getattr(result, "columns", [])]
    if missing:
        raise ModelError(f"the model's predict returned no {', '.join(missing)} column")
    if len(result) != len(frame):
        raise ModelError(f"the model's predict returned {len(result)} rows for {len(frame)} times")
    return result.reset_index(drop=True)


Row = tuple[float, float, float]


def grid_point(moment: datetime, grid_ms: int) -> datetime:
    """The time ``moment`` is forecast at: the nearest multiple of ``grid_ms`` (``moment`` itself for 0)."""
    if grid_ms <= 0:
        return moment
    point = round(moment.timestamp() * 1000 / grid_ms) * grid_ms
    return datetime.fromtimestamp(point / 1000, UTC)


class Forecasts:
    """Forecasts already made, by (model hash, time): the most recent ``size``, the oldest dropped first.

    A model's forecast for a time does not change, so readings of many sensors
    at the same grid time, in one batch or the next, share one predict row.
    Prophet draws its intervals by sampling; the cache also makes every reading
    at one time get the same interval.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: OrderedDict[tuple[str, datetime], Row] = OrderedDict()

    def get(self, model_hash: str, moment: datetime) -> Row | None:
        row = self._rows.get((model_hash, moment))
        if row is not None:
            self._rows.move_to_end((model_hash, moment))
        return row

    def put(self, model_hash: str, moment: datetime, row: Row) -> None:
        if self.size <= 0:
            return
        self._rows[(model_hash, moment)] = row
        self._rows.move_to_end((model_hash, moment))
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._rows)


def score(
    loaded: LoadedModel,
    readings: Sequence[contract.Reading],
    grid_ms: int = 0,
    forecasts: Forecasts | None = None,
    ahead: int = 0,
) -> list[contract.Result]:
    """Score readings with one predict call per batch, each distinct time once.

    With ``grid_ms``, a reading is forecast at the nearest grid time (see
    MODEL_TIME_GRID_MS); ``forecasts`` keeps forecasts between batches, and the
    same call also forecasts the ``ahead`` grid times after the batch's latest
    (a predict call costs about as much for 30 rows as for one, and a live
    stream needs those next). If the batch's predict fails, each time is
    retried alone, so one reading the model cannot handle becomes a prediction
    error, not a lost batch.
    """
    now = datetime.now(UTC)
    point_of = {ts: grid_point(ts, grid_ms) for ts in {r.ts for r in readings}}
    points = set(point_of.values())
    table: dict[datetime, Row] = {}
    if forecasts is not None:
        for point in points:
            row = forecasts.get(loaded.identity.hash, point)
            if row is not None:
                table[point] = row
    times = sorted(points - table.keys())
    metrics.FORECASTS.labels("cache").inc(len(points) - len(times))
    metrics.FORECASTS.labels("model").inc(len(times))
    failures: dict[datetime, str] = {}
    if times:
        wanted = times
        if grid_ms > 0 and forecasts is not None and ahead > 0:
            step = timedelta(milliseconds=grid_ms)
            later = (times[-1] + step * k for k in range(1, ahead + 1))
            wanted = times + [t for t in later if forecasts.get(loaded.identity.hash, t) is None]
        try:
            made = rows_of(forecast(loaded.model, wanted), wanted)
        except Exception as error:  # noqa: BLE001 - any model failure is isolated below
            logger.warning("predict failed for a batch of %d times (%s); scoring them one by one", len(times), error)
            made = {}
            for moment in times:
                try:
                    made.update(rows_of(forecast(loaded.model, [moment]), [moment]))
                except Exception as single:  # noqa: BLE001
                    failures[moment] = f"the model could not score this time: {type(single).__name__}: {single}"
        table.update(made)
        if forecasts is not None:
            for point, row in made.items():
                forecasts.put(loaded.identity.hash, point, row)
    results: list[contract.Result] = []
    for reading in readings:
        point = point_of[reading.ts]
        if point in failures or point not in table:
            reason = failures.get(point, "the model returned no forecast for this time")
            results.append(
                contract.PredictionError(
                    id=reading.id, sensor=reading.sensor, reason=reason, model=loaded.identity, scored_at=now
                )
            )
            continue
        results.append(prediction(reading, table[point], loaded.identity, now))
    return results


def prediction(
    reading: contract.Reading, row: Row, identity: contract.ModelIdentity, scored_at: datetime
) -> contract.Prediction:
    """The prediction of ``reading`` from its forecast ``row``: an anomaly when ``v`` is outside the interval."""
    yhat, lower, upper = row
    return contract.Prediction(
        id=reading.id,
        sensor=reading.sensor,
        ds=reading.ts,
        yhat=yhat,
        yhat_lower=lower,
        yhat_upper=upper,
        v=reading.v,
        anomaly=not (lower <= reading.v <= upper),
        model=identity,
        scored_at=scored_at,
    )


def rows_of(frame: pd.DataFrame, times: Sequence[datetime]) -> dict[datetime, Row]:
    """The (yhat, lower, upper) of each time from a predict's frame; ModelError on a non-finite one."""
    values = frame[list(FORECAST_COLUMNS)].astype(float).to_numpy()
    table = {}
    for moment, (yhat, lower, upper) in zip(times, values, strict=True):
        if not all(map(_finite, (yhat, lower, upper))):
            raise ModelError(f"the model returned a non-finite or absurd forecast for {moment}")
        table[moment] = (float(yhat), float(lower), float(upper))
    return table


#: Forecasts beyond this are refused as broken (readings are within ±2^53): kept finite in every sum.
MAX_FORECAST = 1e300


def _finite(value: float) -> bool:
    return value == value and abs(value) <= MAX_FORECAST
