"""The backtest's picture: what was observed, what the serving model forecast, its interval, and the anomalies.

Two panels: the whole replay, and its last week up close. Anomalies are
readings outside the forecast interval, as the service flags them; lines
break where readings are missing. Drawn
with matplotlib (a dependency of Prophet) without a display.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from Models_analysis.walkforward import Replay

#: The close-up panel shows this much of the end of the replay.
CLOSE_UP = pd.Timedelta(days=7)


def plot(series: pd.DataFrame, replay: Replay, kind: str, path: Path, title: str) -> Path:
    """Write the PNG to ``path`` for ``kind``'s forecasts; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import ConciseDateFormatter

    points = _broken(replay.points[replay.points["kind"] == kind].sort_values("ds"))
    series = _broken(series)
    figure, axes = plt.subplots(2, 1, figsize=(12, 7), constrained_layout=True)
    if points.empty:
        start, end = series["ds"].iloc[0], series["ds"].iloc[-1]
    else:
        start, end = points["ds"].iloc[0], points["ds"].iloc[-1]
    spans = [(start, end), (max(start, end - CLOSE_UP), end)]
    for axis, (low, high) in zip(axes, spans, strict=True):
        seen = series[(series["ds"] >= low) & (series["ds"] <= high)]
        mine = points[(points["ds"] >= low) & (points["ds"] <= high)]
        outside = mine[(mine["y"] < mine["yhat_lower"]) | (mine["y"] > mine["yhat_upper"])]
        axis.fill_between(
            mine["ds"], mine["yhat_lower"], mine["yhat_upper"], color="tab:blue", alpha=0.2, label="interval"
        )
        axis.plot(seen["ds"], seen["y"], color="black", linewidth=0.6, label="actual")
        axis.plot(mine["ds"], mine["yhat"], color="tab:blue", linewidth=0.9, label=f"forecast ({kind})")
        axis.scatter(outside["ds"], outside["y"], color="tab:red", s=10, zorder=3, label=f"anomalies ({len(outside)})")
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_formatter(ConciseDateFormatter(axis.xaxis.get_major_locator()))
    axes[0].set_title(f"{title}: walk-forward forecasts of {kind}")
    axes[1].set_title(f"the last {CLOSE_UP.days} days")
    axes[0].legend(loc="upper left", fontsize="small", ncols=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _broken(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a row of NaN values in every gap over twice the usual spacing, so lines do not bridge it."""
    if len(frame) < 3:
        return frame
    gaps = frame["ds"].diff()
    usual = gaps[gaps > pd.Timedelta(0)].median()
    at = frame.index[gaps > 2 * usual]
    if not len(at):
        return frame
    breaks = pd.DataFrame({"ds": frame.loc[at, "ds"] - usual})
    return pd.concat([frame, breaks], ignore_index=True).sort_values("ds", kind="stable", ignore_index=True)
