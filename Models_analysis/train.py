"""Train a model from a CSV or from the readings in MongoDB, and save it with its metadata.

    python -m Models_analysis.train --csv Data_collection/demo_data.csv --out models/default.joblib
    python -m Models_analysis.train --from-mongo --sensor sensor-1 --since 2026-11-01 --out models/sensor-1.joblib

A CSV with a time column (``--ts-column``) is fitted on those times. A CSV of
values only (the seed's demo_data.csv) gets times ``--freq`` apart ending at
``--end`` (default: now), so the model forecasts around the present.
``--from-mongo`` reads MONGO_URI and MONGO_DATABASE from the environment.
``--kind prophet`` (default), ``mstl`` (Models_analysis.mstl.MSTLModel) or
``trend`` (Models_analysis.adapters.TrendModel). Prophet's seasonalities are
chosen from the data (:func:`seasonalities`), and the interval of every kind
is calibrated on the model's own held-out errors (Models_analysis.calibration;
``--no-calibration`` keeps the model's own interval).
The file holds ``{"model": model, "metadata": {...}}``; see Models_analysis.model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from Models_analysis import calibration
from Models_analysis.baselines import DAY, sampling_interval
from Models_analysis.model import file_hash
from Models_analysis.robust import fit_without_outliers, seasonal_outliers
from pipeline import contract, logs, settings
from pipeline.csv_rows import CsvError, parse_timestamp, read_rows
from pipeline.settings import MongoSettings

logger = logging.getLogger("Models_analysis.train")


def frame_from_csv(
    path: Path, value_column: str | None, ts_column: str | None, freq: str, end: datetime
) -> pd.DataFrame:
    """The training frame (``ds`` naive UTC, ``y``) from a CSV; any bad row is an error naming its line."""
    rows = read_rows(path, value_column, ts_column, strict=True)
    if ts_column:
        ds = pd.to_datetime([r.ts.astimezone(UTC).replace(tzinfo=None) for r in rows if r.ts is not None])
    else:
        ds = pd.date_range(end=end.astimezone(UTC).replace(tzinfo=None), periods=len(rows), freq=freq)
    return pd.DataFrame({"ds": ds, "y": [r.value for r in rows]})


def frame_from_mongo(sensor: str | None, since: datetime | None, until: datetime | None) -> pd.DataFrame:
    """The training frame from stored readings: one sensor's or all, within [since, until)."""
    from pipeline.mongo import mongo_client

    config = settings.load(MongoSettings)
    query: dict[str, Any] = {}
    if sensor:
        query["sensor"] = sensor
    if since or until:
        query["ts"] = {**({"$gte": since} if since else {}), **({"$lt": until} if until else {})}
    with mongo_client(config, tz_aware=True) as client:
        cursor = client[config.MONGO_DATABASE][contract.COLLECTION_READINGS].find(query, {"ts": 1, "v": 1, "_id": 0})
        documents = list(cursor)
    frame = pd.DataFrame(
        {"ds": [d["ts"].astimezone(UTC).replace(tzinfo=None) for d in documents], "y": [d["v"] for d in documents]}
    )
    return frame.sort_values("ds", ignore_index=True)


#: The model kinds ``--kind`` offers.
KINDS = ("prophet", "mstl", "trend")
#: A seasonality is fitted when the data holds at least this many of its periods ...
MIN_PERIODS = 2
#: ... and at least this many readings per period (a curve through fewer is not a season).
MIN_READINGS_PER_PERIOD = 4
#: Fourier orders at most: 10 for a day (Prophet's default is 4, too stiff for
#: sub-daily sensor data); 42 for a week (Prophet's default is 3), so that the
#: weekly curve has the resolution to draw each weekday's own day, a Sunday
#: unlike a Monday (harmonics down to 4 hours); 10 for a year, Prophet's.
MAX_ORDER = {"daily": 10, "weekly": 42, "yearly": 10}
PERIODS = {"daily": 1.0, "weekly": 7.0, "yearly": 365.25}
#: Calibration holds out the last CALIBRATION_HORIZONS refit intervals (a week of daily refits), forecast by
#: CALIBRATION_FOLDS models fitted on what came before (1: one model forecasts the whole week held out).
CALIBRATION_HORIZONS = 7
CALIBRATION_FOLDS = 1
ONE_DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Seasonality:
    """A Prophet seasonality: its name, period in days and Fourier order."""

    name: str
    period_days: float
    fourier_order: int


def seasonalities(ds: pd.Series) -> list[Seasonality]:
    """The seasonalities the readings at times ``ds`` can show, with Fourier orders sized to their sampling.

    A period is fitted when the times span at least :data:`MIN_PERIODS` of it
    and it holds at least :data:`MIN_READINGS_PER_PERIOD` readings at the
    sampling interval (the median gap). Its Fourier order is at most half the
    readings in one period (more terms than that alias) and at most
    :data:`MAX_ORDER`: sub-daily data gets daily and weekly seasonalities once
    it spans two weeks, hourly data daily order 10 and weekly order 42.
    """
    times = pd.to_datetime(ds)
    if times.nunique() < 2:
        return []
    interval = sampling_interval(times)
    span = times.max() - times.min()
    chosen = []
    for name, days in PERIODS.items():
        period = DAY * days
        per_period = period / interval
        if span >= MIN_PERIODS * period and per_period >= MIN_READINGS_PER_PERIOD:
            chosen.append(Seasonality(name, days, min(MAX_ORDER[name], int(per_period // 2))))
    return chosen


def prophet_model(frame: pd.DataFrame, interval_width: float, uncertainty: bool = True) -> Any:
    """A Prophet with the seasonalities of :func:`seasonalities`, not yet fitted.

    ``uncertainty=False`` draws no interval (``predict`` is then several times
    faster), for a model whose interval is calibrated instead.
    """
    from prophet import Prophet  # slow to import, and only training needs it

    model = Prophet(
        interval_width=interval_width,
        daily_seasonality=False,
        weekly_seasonality=False,
        yearly_seasonality=False,
        uncertainty_samples=1000 if uncertainty else 0,
    )
    for season in seasonalities(frame["ds"]):
        model.add_seasonality(name=season.name, period=season.period_days, fourier_order=season.fourier_order)
    return model


def _fit_one(kind: str, frame: pd.DataFrame, interval_width: float, uncertainty: bool) -> Any:
    if kind == "trend":
        from Models_analysis.adapters import TrendModel

        return TrendModel(interval_width).fit(frame)
    if kind == "mstl":
        from Models_analysis.mstl import MSTLModel

        return MSTLModel(interval_width).fit(frame)  # it sets outliers aside itself, in its decomposition
    if kind == "prophet-plain":
        # Prophet with its own defaults and interval: what train fitted before its seasonalities and calibration.
        from prophet import Prophet

        plain = Prophet(interval_width=interval_width)
        plain.fit(frame)
        return plain
    if kind != "prophet":
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")

    def fit_prophet(part: pd.DataFrame) -> Any:
        model = prophet_model(part, interval_width, uncertainty)
        model.fit(part)
        return model

    flagged = seasonal_outliers(frame)
    if flagged is None:
        return fit_without_outliers(fit_prophet, frame)
    if flagged.any() and (~flagged).sum() >= 2:
        frame = frame[~flagged].reset_index(drop=True)
    return fit_prophet(frame)


def fit(
    kind: str,
    frame: pd.DataFrame,
    interval_width: float,
    calibrate: bool = True,
    horizon: pd.Timedelta = ONE_DAY,
    progress: bool = True,
) -> Any:
    """Fit the model, printing the elapsed time while it works (Prophet can take a while; ``progress=False``: quiet).

    With ``calibrate``, the interval is the split-conformal one of
    :func:`Models_analysis.calibration.calibrate`, sized on the errors over the
    last :data:`CALIBRATION_HORIZONS` ``horizon`` stretches of ``frame``
    (``horizon``: how long the model serves before the next refit), and the model is a
    :class:`~Models_analysis.calibration.Calibrated`; without, the model's own interval.
    """
    done = threading.Event()

    def tick() -> None:
        started = time.monotonic()
        while not done.wait(2.0):
            print(f"  still fitting ... {time.monotonic() - started:.0f}s", flush=True)

    ticker = threading.Thread(target=tick, daemon=True)
    if progress:
        ticker.start()
    try:
        if not calibrate:
            return _fit_one(kind, frame, interval_width, uncertainty=True)
        return calibration.calibrate(
            lambda part: _fit_one(kind, part, interval_width, uncertainty=False),
            frame,
            interval_width,
            horizon * CALIBRATION_HORIZONS / CALIBRATION_FOLDS,
            CALIBRATION_FOLDS,
        )
    finally:
        done.set()


def save(
    model: Any,
    frame: pd.DataFrame,
    out: Path,
    name: str,
    source: str,
    interval_width: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle (``extra`` added to its metadata); returns its metadata (with the file's content hash)."""
    metadata = {
        "name": name,
        "kind": type(model.model if isinstance(model, calibration.Calibrated) else model).__name__,
        "trained_at": datetime.now(UTC).isoformat(),
        "source": source,
        "rows": len(frame),
        "train_start": frame["ds"].min().isoformat(),
        "train_end": frame["ds"].max().isoformat(),
        "interval_width": interval_width,
        "calibration": _calibration(model),
        "versions": {pkg: version(pkg) for pkg in ("prophet", "pandas", "numpy", "statsmodels")},
        **(extra or {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    joblib.dump({"model": model, "metadata": metadata}, tmp)
    # Atomic replace: a model service watching the path never reads half a file.
    tmp.replace(out)
    return {**metadata, "hash": file_hash(out)}


def _calibration(model: Any) -> dict[str, Any] | None:
    if not isinstance(model, calibration.Calibrated):
        return None
    return {
        "method": "split conformal on held-out errors",
        "model": type(model.model).__name__,
        "half_width": model.half_width,
        "level": model.level,
        "residuals": model.residuals,
    }


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m Models_analysis.train", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="CSV to train on")
    source.add_argument(
        "--from-mongo", action="store_true", help="train on stored readings (MONGO_URI, MONGO_DATABASE)"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the model (.joblib)")
    parser.add_argument("--kind", choices=KINDS, default="prophet", help="model to fit (default prophet)")
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="keep the model's own interval (default: calibrated on its errors over the last week, held out)",
    )
    parser.add_argument("--value-column", help="CSV: column of values (default: the only column, or 'value')")
    parser.add_argument("--ts-column", help="CSV: column of times (default: none; times are generated)")
    parser.add_argument(
        "--freq", default="1min", help="CSV: spacing of generated times (pandas frequency, default 1min)"
    )
    parser.add_argument("--end", default="now", help="CSV: last generated time, ISO 8601 or 'now' (default)")
    parser.add_argument("--sensor", help="MongoDB: this sensor's readings only (default: all sensors)")
    parser.add_argument("--since", help="MongoDB: readings at or after this time (ISO 8601)")
    parser.add_argument("--until", help="MongoDB: readings before this time (ISO 8601)")
    parser.add_argument("--name", help="the model's name in predictions (default: the output file's stem)")
    parser.add_argument("--interval-width", type=float, default=0.99, help="forecast interval (default 0.99)")
    args = parser.parse_args(argv)
    logs.setup("WARNING", "train")
    try:
        if args.csv:
            end = datetime.now(UTC) if args.end == "now" else parse_timestamp(args.end)
            frame = frame_from_csv(args.csv, args.value_column, args.ts_column, args.freq, end)
            origin = str(args.csv)
        else:
            since = parse_timestamp(args.since) if args.since else None
            until = parse_timestamp(args.until) if args.until else None
            frame = frame_from_mongo(args.sensor, since, until)
            origin = f"mongodb readings, sensor={args.sensor or 'all'}, since={args.since}, until={args.until}"
    except (CsvError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(frame) < 2:
        print(f"error: {len(frame)} usable rows ({origin}); a model needs at least 2", file=sys.stderr)
        return 2
    print(f"fitting {args.kind} on {len(frame)} rows ({frame['ds'].min()} .. {frame['ds'].max()}) ...", flush=True)
    started = time.monotonic()
    model = fit(args.kind, frame, args.interval_width, calibrate=not args.no_calibration)
    metadata = save(model, frame, args.out, args.name or args.out.stem, origin, args.interval_width)
    print(
        f"fitted in {time.monotonic() - started:.1f}s; saved {metadata['name']} (hash {metadata['hash']}) to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
