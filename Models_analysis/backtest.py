"""Walk-forward backtest: how well a model kind would have forecast a series, replayed as the service serves it.

    python -m Models_analysis.backtest --csv data.csv --ts-column time --value-column count --out bt.json
    python -m Models_analysis.backtest --sensor sensor-1 --since 2026-11-01 --until 2026-12-01 --out bt.json

The model is refitted every ``--refit-every`` (default 1d) on the trailing
``--window`` (default 28d) of readings, and every later reading is forecast
by the model that would have been serving it then, fitted only on readings
before its refit. Each model kind (``--kinds``, fitted as
``Models_analysis.train`` fits it) is compared with the seasonal-naive
baselines, the same time one day earlier and one week earlier (a "day" is
``--season`` readings, by default as many as fit in 24 hours at the
series' sampling interval), on the readings every one of them forecast:
MAE, MAE relative to the weekly naive, coverage of the forecast interval,
its mean width and its nominal level. Writes the figures as JSON (``--out``)
and a plot (actual, forecast, interval, anomalies; ``--plot``). The readings
come from a CSV or from the ``readings`` stored in MongoDB (MONGO_URI,
MONGO_DATABASE, as the services read them). Bad input stops it with exit code 2,
a database that cannot be read with exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pymongo.errors import PyMongoError
from tqdm import tqdm

from Models_analysis import adaptive, baselines, walkforward
from Models_analysis.baselines import human
from Models_analysis.walkforward import Fitter, Replay
from pipeline import logs
from pipeline.csv_rows import CsvError, parse_timestamp, read_rows

#: The baselines every backtest includes, and the one MAE is taken relative to.
NAIVE_DAY, NAIVE_WEEK = "naive-day", "naive-week"
REFERENCE = NAIVE_WEEK
#: A window must hold this many daily seasons: a week for the weekly naive to repeat, and a day of its errors.
MIN_WINDOW_SEASONS = 8


class BacktestError(ValueError):
    """Input the backtest cannot use; the message says what and why."""


def _train_fitter(kind: str, interval_width: float, calibrate: bool, horizon: pd.Timedelta) -> Fitter:
    """A kind as ``python -m Models_analysis.train --kind <kind>`` fits it."""

    def fit(frame: pd.DataFrame) -> Any:
        from Models_analysis import train

        if kind.startswith("prophet"):
            import prophet  # noqa: F401 - importing it sets its logger to INFO: once imported, quiet it again

            logging.getLogger("prophet").setLevel(logging.WARNING)
        # train.fit prints "still fitting ..." every 2 s for a person training by hand; here a progress bar shows it.
        with contextlib.redirect_stdout(io.StringIO()):
            return train.fit(kind, frame, interval_width, calibrate=calibrate, horizon=horizon)

    return fit


#: Model kinds the backtest replays: name -> ((interval width, refit interval) -> fitter). A new kind is one
#: entry here. Calibrated kinds hold out the last three refit intervals of each window (see train.fit).
MODEL_KINDS: dict[str, Callable[[float, pd.Timedelta], Fitter]] = {
    # As train fits it and the service serves it: seasonalities from the data, a calibrated interval.
    "prophet": lambda width, every: _train_fitter("prophet", width, True, every),
    # The same Prophet with its own interval: what calibration changes.
    "prophet-uncalibrated": lambda width, every: _train_fitter("prophet", width, False, every),
    # Prophet's own defaults and interval: what train fitted before (issue #13).
    "prophet-plain": lambda width, every: _train_fitter("prophet-plain", width, False, every),
    "mstl": lambda width, every: _train_fitter("mstl", width, True, every),
    "trend": lambda width, every: _train_fitter("trend", width, True, every),
}


@dataclass(frozen=True)
class Plan:
    """How a series is replayed: window, refit interval, sampling interval, daily season, interval level."""

    window: pd.Timedelta
    refit_every: pd.Timedelta
    interval: pd.Timedelta
    #: Readings in one daily season (the daily naive's lag; the weekly naive's is 7 times it).
    season: int
    season_given: bool
    interval_width: float
    #: The served kinds' intervals adapt per reading with this step, as the service's (MODEL_ADAPTIVE_GAMMA).
    adaptive_gamma: float = adaptive.DEFAULT_GAMMA

    @property
    def daily_lag(self) -> pd.Timedelta:
        return self.season * self.interval

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window.total_seconds(),
            "refit_every_s": self.refit_every.total_seconds(),
            "sampling_interval_s": self.interval.total_seconds(),
            "season_readings": self.season,
            "season_from": "--season" if self.season_given else "the sampling interval",
            "daily_lag_s": self.daily_lag.total_seconds(),
            "weekly_lag_s": 7 * self.daily_lag.total_seconds(),
            "interval_width": self.interval_width,
            "adaptive_gamma": self.adaptive_gamma,
        }


def plan_for(
    series: pd.DataFrame,
    window: pd.Timedelta,
    refit_every: pd.Timedelta,
    season: int | None,
    interval_width: float,
    adaptive_gamma: float = adaptive.DEFAULT_GAMMA,
) -> Plan:
    """Check the settings against the series and infer what was not given; BacktestError says what is wrong."""
    if window <= pd.Timedelta(0) or refit_every <= pd.Timedelta(0):
        raise BacktestError("--window and --refit-every must be positive durations")
    if not 0 < interval_width < 1:
        raise BacktestError(f"--interval-width must be between 0 and 1 (exclusive), not {interval_width}")
    if not 0 <= adaptive_gamma < 1:
        raise BacktestError(f"--adaptive-gamma must be at least 0 and below 1, not {adaptive_gamma}")
    if season is not None and season < 1:
        raise BacktestError(f"--season must be at least 1 reading, not {season}")
    if series["ds"].nunique() < 2:
        raise BacktestError(f"the {len(series)} reading(s) are all at one time: a backtest needs a series")
    try:
        interval = baselines.sampling_interval(series["ds"])
        readings = season if season is not None else baselines.readings_per_day(interval)
    except ValueError as error:
        raise BacktestError(f"{error} (give --season, the readings in one daily season)") from None
    plan = Plan(window, refit_every, interval, readings, season is not None, interval_width, adaptive_gamma)
    first, last = series["ds"].iloc[0], series["ds"].iloc[-1]
    if first + window > last:
        raise BacktestError(
            f"too little data for one window: the readings span {human(last - first)} ({first} to {last}), "
            f"and a backtest needs more than one --window ({human(window)}) so that readings come after it"
        )
    if window < MIN_WINDOW_SEASONS * plan.daily_lag:
        raise BacktestError(
            f"--window {human(window)} is shorter than {MIN_WINDOW_SEASONS} daily seasons ({MIN_WINDOW_SEASONS} x "
            f"{human(plan.daily_lag)}): the weekly naive needs a week to repeat and a day of its errors "
            "to size its interval"
        )
    return plan


def fitters(plan: Plan, kinds: Sequence[str]) -> dict[str, Fitter]:
    """The model kinds asked for, then the two seasonal-naive baselines."""
    chosen: dict[str, Fitter] = {kind: MODEL_KINDS[kind](plan.interval_width, plan.refit_every) for kind in kinds}
    tolerance = plan.interval / 2
    for name, lag in ((NAIVE_DAY, plan.daily_lag), (NAIVE_WEEK, 7 * plan.daily_lag)):
        chosen[name] = _naive_fitter(lag, plan.interval_width, tolerance)
    return chosen


def _naive_fitter(lag: pd.Timedelta, width: float, tolerance: pd.Timedelta) -> Fitter:
    return lambda frame: baselines.SeasonalNaive(lag, width, tolerance).fit(frame)


def run(
    series: pd.DataFrame, plan: Plan, kinds: Sequence[str], progress: bool = True
) -> tuple[Replay, dict[str, dict[str, Any]]]:
    """Replay ``series`` (``ds`` naive UTC sorted, ``y``) with the kinds and baselines; the replay and its scores."""
    count = len(walkforward.folds(series["ds"].iloc[0], series["ds"].iloc[-1], plan.window, plan.refit_every))
    with tqdm(total=count, unit=" refits", file=sys.stderr, disable=not progress) as bar:
        replay = walkforward.walk_forward(
            series, plan.window, plan.refit_every, fitters(plan, kinds), on_fold=lambda _: bar.update()
        )
    if not replay.fitted_folds:
        raise BacktestError("no window held 2 readings or more: nothing could be fitted (a series with long gaps?)")
    for kind, failures in replay.failures.items():
        if len(failures) == replay.fitted_folds:
            raise BacktestError(f"{kind} failed on every refit ({len(failures)}); the first: {failures[0]}")
    replay.points = adaptive.adapt_points(replay.points, kinds, plan.interval_width, plan.adaptive_gamma)
    metrics = walkforward.evaluate(replay, REFERENCE)
    for kind, values in metrics.items():
        values["nominal"] = plan.interval_width
        values["failed_folds"] = len(replay.failures.get(kind, []))
        seconds = replay.fit_seconds.get(kind, [])
        values["fit_seconds_mean"] = sum(seconds) / len(seconds) if seconds else math.nan
    return replay, metrics


# --------------------------------------------------------------------------- reading the series


def prepare(
    frame: pd.DataFrame, since: datetime | None, until: datetime | None, resample: pd.Timedelta | None
) -> pd.DataFrame:
    """Sorted by time (``ds`` naive UTC, ``y``), cut to [since, until), optionally averaged into bins."""
    ds = pd.to_datetime(frame["ds"])
    keep = pd.Series(True, index=frame.index)
    if since is not None:
        keep &= ds >= pd.Timestamp(since.astimezone(UTC).replace(tzinfo=None))
    if until is not None:
        keep &= ds < pd.Timestamp(until.astimezone(UTC).replace(tzinfo=None))
    out = pd.DataFrame({"ds": ds[keep], "y": frame["y"][keep].astype(float)}).sort_values("ds", kind="stable")
    if resample is not None:
        out = out.set_index("ds")["y"].resample(resample).mean().dropna().reset_index()
    return out.reset_index(drop=True)


def load_csv(path: Path, ts_column: str, value_column: str | None) -> pd.DataFrame:
    """The CSV's readings; a row whose time or value does not parse is an error naming its line."""
    rows = read_rows(path, value_column, ts_column, strict=True)
    return pd.DataFrame(
        {"ds": pd.to_datetime([r.ts.astimezone(UTC).replace(tzinfo=None) for r in rows if r.ts is not None])}
        | {"y": [r.value for r in rows]}
    )


def load_mongo(sensor: str, since: datetime | None, until: datetime | None) -> pd.DataFrame:
    """A sensor's stored readings in [since, until), read as ``train --from-mongo`` reads them."""
    from Models_analysis.train import frame_from_mongo

    return frame_from_mongo(sensor, since, until)


# --------------------------------------------------------------------------- the command line

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|h|d|w)\s*$")
_UNITS = {"s": "seconds", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def duration(text: str) -> pd.Timedelta:
    """A duration such as 30s, 15min, 6h, 1d, 4w (argparse type)."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30min, 6h, 1d or 4w")
    return pd.Timedelta(**{_UNITS[match[2]]: float(match[1])})


def moment(text: str) -> datetime:
    """An ISO 8601 time, no zone meaning UTC (argparse type)."""
    try:
        return parse_timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (like 2026-11-01 or 2026-11-01T12:00Z)"
        ) from None


def kinds_list(text: str) -> list[str]:
    """Comma-separated model kinds (argparse type)."""
    chosen = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in MODEL_KINDS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {unknown or text!r}; choose from {', '.join(MODEL_KINDS)}")
    return chosen


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    p = argparse.ArgumentParser(prog="python -m Models_analysis.backtest", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="a CSV with a time column and a value column")
    source.add_argument("--sensor", help="a sensor's stored readings (MONGO_URI, MONGO_DATABASE)")
    p.add_argument("--ts-column", default="timestamp", help="CSV: column of times, ISO 8601 (default timestamp)")
    p.add_argument("--value-column", help="CSV: column of values (default: the other column, or 'value')")
    p.add_argument("--since", type=moment, help="readings at or after this time (ISO 8601, no zone = UTC)")
    p.add_argument("--until", type=moment, help="readings before this time")
    p.add_argument("--window", type=duration, default=duration("28d"), help="trailing window fitted (default 28d)")
    p.add_argument("--refit-every", type=duration, default=duration("1d"), help="time between refits (default 1d)")
    p.add_argument("--season", type=int, help="readings in one daily season (default: 24 h at the sampling interval)")
    p.add_argument(
        "--kinds", type=kinds_list, default=["prophet"], help=f"model kinds, comma-separated: {', '.join(MODEL_KINDS)}"
    )
    p.add_argument("--interval-width", type=float, default=0.99, help="nominal interval level (default 0.99, train's)")
    p.add_argument(
        "--adaptive-gamma",
        type=float,
        default=adaptive.DEFAULT_GAMMA,
        help=f"intervals adapt per reading as the service's, MODEL_ADAPTIVE_GAMMA ({adaptive.DEFAULT_GAMMA}; 0: off)",
    )
    p.add_argument("--resample", type=duration, help="average the readings into bins of this length first")
    p.add_argument("--out", type=Path, default=Path("backtest.json"), help="JSON figures (default backtest.json)")
    p.add_argument("--plot", type=Path, help="PNG plot (default: --out with .png)")
    p.add_argument("--forecasts", type=Path, help="also write every forecast as CSV (kind, origin, ds, y, yhat, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Load, replay, score, write; exit 2 on input the backtest cannot use."""
    args = parser().parse_args(argv)
    logs.setup("WARNING", "backtest")
    started = time.monotonic()
    try:
        if args.since and args.until and args.since >= args.until:
            raise BacktestError(f"--since {args.since.isoformat()} is not before --until {args.until.isoformat()}")
        if args.csv is not None:
            raw = load_csv(args.csv, args.ts_column, args.value_column)
            source: dict[str, Any] = {"csv": str(args.csv), "ts_column": args.ts_column}
        else:
            raw = load_mongo(args.sensor, args.since, args.until)
            source = {"sensor": args.sensor}
        source |= {"since": args.since and args.since.isoformat(), "until": args.until and args.until.isoformat()}
        series = prepare(raw, args.since, args.until, args.resample)
        if series.empty:
            raise BacktestError(f"no readings of {_describe(source)}")
        plan = plan_for(series, args.window, args.refit_every, args.season, args.interval_width, args.adaptive_gamma)
        replay, metrics = run(series, plan, args.kinds, progress=not args.no_progress)
    except (BacktestError, CsvError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    except OSError as error:
        sys.stderr.write(f"error: {error.filename or ''}: {error.strerror or error}\n")
        return 2
    except PyMongoError as error:
        sys.stderr.write(f"error: cannot read the readings from MongoDB: {error}\n")
        return 1
    document = report(series, plan, replay, metrics, source, args.kinds, time.monotonic() - started)
    write_json(document, args.out)
    plot_path = args.plot or args.out.with_suffix(".png")
    from Models_analysis.backtest_plot import plot

    plot(series, replay, args.kinds[0], plot_path, title=_describe(source))
    if args.forecasts is not None:
        replay.points.to_csv(args.forecasts, index=False)
    sys.stdout.write(summary(metrics) + f"\nwrote {args.out} and {plot_path}\n")
    return 0


def report(
    series: pd.DataFrame,
    plan: Plan,
    replay: Replay,
    metrics: dict[str, dict[str, Any]],
    source: dict[str, Any],
    kinds: Sequence[str],
    seconds: float,
) -> dict[str, Any]:
    """The JSON document: where the readings came from, the plan, the folds, the figures per kind."""
    return {
        "source": source
        | {"readings": len(series), "first": str(series["ds"].iloc[0])}
        | {"last": str(series["ds"].iloc[-1])},
        "plan": plan.as_dict(),
        "kinds": list(kinds),
        "baselines": [NAIVE_DAY, NAIVE_WEEK],
        "reference": REFERENCE,
        "folds": {"fitted": replay.fitted_folds, "readings_skipped": replay.skipped},
        "failures": {kind: messages[:5] for kind, messages in replay.failures.items()},
        "metrics": metrics,
        "seconds": round(seconds, 1),
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    """Write ``document`` with NaN as null (JSON has no NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(document), indent=2) + "\n")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity (nested in dicts and lists) as None: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def summary(metrics: dict[str, dict[str, Any]]) -> str:
    """The figures as a small text table."""
    lines = [f"{'kind':<12} {'n':>7} {'MAE':>12} {'MAE/weekly':>10} {'coverage':>9} {'width':>12} {'nominal':>8}"]
    for kind, m in metrics.items():
        lines.append(
            f"{kind:<12} {m['n']:>7} {m['mae']:>12.4g} {m['mae_relative']:>10.3f} {m['coverage']:>9.3f} "
            f"{m['mean_width']:>12.4g} {m['nominal']:>8}"
        )
    return "\n".join(lines)


def _describe(source: dict[str, Any]) -> str:
    where = f"sensor {source['sensor']}" if "sensor" in source else source["csv"]
    span = f" from {source['since'] or 'the start'} until {source['until'] or 'the end'}"
    return where + (span if source.get("since") or source.get("until") else "")


if __name__ == "__main__":
    raise SystemExit(main())
