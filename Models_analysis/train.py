"""Train a Prophet model from a CSV and save it with its metadata.

    python -m Models_analysis.train --csv Data_collection/demo_data.csv --out models/default.joblib

A CSV with a time column (``--ts-column``) is fitted on those times. A CSV of
values only (the seed's demo_data.csv) gets times ``--freq`` apart ending at
``--end`` (default: now), so the model forecasts around the present.
The file holds ``{"model": Prophet, "metadata": {...}}``; see Models_analysis.model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from Models_analysis.model import file_hash
from pipeline import logs
from pipeline.csv_rows import CsvError, parse_timestamp, read_rows

logger = logging.getLogger("Models_analysis.train")


def frame_from_csv(
    path: Path, value_column: str | None, ts_column: str | None, freq: str, end: datetime
) -> pd.DataFrame:
    """The training frame (``ds`` naive UTC, ``y``) from a CSV."""
    rows = read_rows(path, value_column, ts_column)
    if ts_column:
        ds = pd.to_datetime([r.ts.astimezone(UTC).replace(tzinfo=None) for r in rows if r.ts is not None])
    else:
        ds = pd.date_range(end=end.astimezone(UTC).replace(tzinfo=None), periods=len(rows), freq=freq)
    return pd.DataFrame({"ds": ds, "y": [r.value for r in rows]})


def fit_prophet(frame: pd.DataFrame, interval_width: float) -> Any:
    """Fit Prophet (imported here: it is slow to import and only training needs it)."""
    from prophet import Prophet

    model = Prophet(interval_width=interval_width)
    model.fit(frame)
    return model


def save(model: Any, frame: pd.DataFrame, out: Path, name: str, source: str, interval_width: float) -> dict[str, Any]:
    """Write the bundle; returns its metadata (with the file's content hash)."""
    metadata = {
        "name": name,
        "kind": type(model).__name__,
        "trained_at": datetime.now(UTC).isoformat(),
        "source": source,
        "rows": len(frame),
        "train_start": frame["ds"].min().isoformat(),
        "train_end": frame["ds"].max().isoformat(),
        "interval_width": interval_width,
        "versions": {pkg: version(pkg) for pkg in ("prophet", "pandas", "numpy")},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    joblib.dump({"model": model, "metadata": metadata}, tmp)
    # Atomic replace: a model service watching the path never reads half a file.
    tmp.replace(out)
    return {**metadata, "hash": file_hash(out)}


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m Models_analysis.train", description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, required=True, help="CSV to train on")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model (.joblib)")
    parser.add_argument("--value-column", help="column of values (default: the only column, or 'value')")
    parser.add_argument("--ts-column", help="column of times (default: none; times are generated)")
    parser.add_argument("--freq", default="1min", help="spacing of generated times (pandas frequency, default 1min)")
    parser.add_argument("--end", default="now", help="last generated time, ISO 8601 or 'now' (default)")
    parser.add_argument("--name", help="the model's name in predictions (default: the output file's stem)")
    parser.add_argument("--interval-width", type=float, default=0.99, help="forecast interval (default 0.99)")
    args = parser.parse_args(argv)
    logs.setup("INFO", "train")
    try:
        end = datetime.now(UTC) if args.end == "now" else parse_timestamp(args.end)
        frame = frame_from_csv(args.csv, args.value_column, args.ts_column, args.freq, end)
    except (CsvError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(frame) < 2:
        print(f"error: {args.csv} has {len(frame)} usable rows; Prophet needs at least 2", file=sys.stderr)
        return 2
    print(f"fitting Prophet on {len(frame)} rows ({frame['ds'].min()} .. {frame['ds'].max()}) ...", flush=True)
    started = time.monotonic()
    model = fit_prophet(frame, args.interval_width)
    metadata = save(model, frame, args.out, args.name or args.out.stem, str(args.csv), args.interval_width)
    print(
        f"fitted in {time.monotonic() - started:.1f}s; saved {metadata['name']} (hash {metadata['hash']}) to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
