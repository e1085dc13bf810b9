"""The walk-forward backtest: metrics and naive baselines on numbers worked out by hand, no peeking, bad input."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from Models_analysis import backtest
from Models_analysis.baselines import SeasonalNaive, readings_per_day, sampling_interval, z_score
from Models_analysis.walkforward import Fold, evaluate, folds, relative, scores, walk_forward

START = pd.Timestamp("2026-11-02 00:00:00")  # a Monday; naive UTC like the frames train fits on
Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal
Z99 = 2.5758293035489004  # the 99.5 % quantile


def hourly(values: list[float], start: pd.Timestamp = START) -> pd.DataFrame:
    return pd.DataFrame({"ds": pd.date_range(start, periods=len(values), freq="h"), "y": [float(v) for v in values]})


# --------------------------------------------------------------------------- metrics


def test_scores_worked_by_hand() -> None:
    y = np.array([10.0, 12.0, 9.0])
    found = scores(y, np.array([11.0, 12.0, 6.0]), np.array([9.0, 12.5, 5.0]), np.array([13.0, 13.0, 8.0]))
    # |10-11| + |12-12| + |9-6| = 4 over 3; only 10 lies in its interval [9, 13]; widths 4, 0.5, 3.
    assert found.n == 3
    assert found.mae == pytest.approx(4 / 3)
    assert found.coverage == pytest.approx(1 / 3)
    assert found.mean_width == pytest.approx(2.5)


def test_an_interval_bound_counts_as_inside_and_no_points_is_nan() -> None:
    assert scores(np.array([5.0]), np.array([4.0]), np.array([5.0]), np.array([5.0])).coverage == 1.0
    empty = scores(np.array([]), np.array([]), np.array([]), np.array([]))
    assert empty.n == 0 and math.isnan(empty.mae) and math.isnan(empty.coverage)


def test_relative_mae() -> None:
    assert relative(3.0, 4.0) == 0.75
    assert math.isnan(relative(3.0, 0.0)) and math.isnan(relative(3.0, math.nan))


# --------------------------------------------------------------------------- naive baselines


def test_sampling_interval_is_the_median_gap_and_a_day_of_it_is_the_season() -> None:
    ds = pd.Series(START + pd.to_timedelta([0, 10, 20, 20, 50], unit="min"))  # gaps 10, 10, (0), 30
    assert sampling_interval(ds) == pd.Timedelta(minutes=10)
    assert readings_per_day(pd.Timedelta(minutes=30)) == 48
    assert readings_per_day(pd.Timedelta(hours=1)) == 24
    with pytest.raises(ValueError, match="less than a day apart"):
        readings_per_day(pd.Timedelta(days=1))
    with pytest.raises(ValueError, match="fewer than two distinct times"):
        sampling_interval(pd.Series([START, START]))


def test_z_scores() -> None:
    assert z_score(0.95) == pytest.approx(Z95)
    assert z_score(0.99) == pytest.approx(Z99)
    with pytest.raises(ValueError):
        z_score(1.0)


def test_seasonal_naive_worked_by_hand() -> None:
    # Hours 0..3 hold 1, 2, 4, 7; a season of 2 hours. One-season errors in the window: 4-1 = 3, 7-2 = 5,
    # so sigma = sqrt((9 + 25) / 2) = sqrt(17).
    model = SeasonalNaive(timedelta(hours=2), interval_width=0.95).fit(hourly([1, 2, 4, 7]))
    assert model.sigma == pytest.approx(math.sqrt(17))
    wanted = pd.DataFrame({"ds": START + pd.to_timedelta([4, 5, 6, 7], unit="h")})
    out = model.predict(wanted)
    # Hours 4 and 5 are one season past hours 2 and 3 (4 and 7); hours 6 and 7 are more than a season after
    # the last reading (hour 3), so they repeat the last season seen: two seasons back, hours 2 and 3 again.
    assert out["yhat"].tolist() == [4.0, 7.0, 4.0, 7.0]
    half = Z95 * math.sqrt(17) * np.array([1, 1, math.sqrt(2), math.sqrt(2)])
    assert np.allclose(out["yhat_upper"] - out["yhat"], half)
    assert np.allclose(out["yhat"] - out["yhat_lower"], half)
    assert out["ds"].tolist() == wanted["ds"].tolist()


def test_seasonal_naive_has_no_forecast_where_the_season_before_is_missing() -> None:
    frame = hourly([1, 2, 3, 4, 5, 6]).drop(index=[3]).reset_index(drop=True)  # hour 3 is missing
    model = SeasonalNaive(timedelta(hours=3), interval_width=0.95, tolerance=timedelta(minutes=30)).fit(frame)
    out = model.predict(pd.DataFrame({"ds": START + pd.to_timedelta([6, 7, 8], unit="h")}))
    # Hour 6 wants hour 3 (missing); hours 7 and 8 want hours 4 and 5.
    assert math.isnan(out["yhat"][0]) and out["yhat"][1:].tolist() == [5.0, 6.0]
    # The one-season errors whose pair exists: 5-2 = 3 and 6-3 = 3 (hour 4's pair, hour 1, is there; 3's is not).
    assert model.sigma == pytest.approx(3.0)


# --------------------------------------------------------------------------- walk-forward


def test_folds_worked_by_hand() -> None:
    day = pd.Timedelta(days=1)
    found = folds(START, START + 10 * day, 3 * day, 2 * day)
    assert [f.origin for f in found] == [START + n * day for n in (3, 5, 7, 9)]
    assert found[0] == Fold(START, START + 3 * day, START + 5 * day)
    assert folds(START, START + 2 * day, 3 * day, day) == []
    assert [f.origin for f in folds(START, START + 3 * day, 3 * day, day)] == [START + 3 * day]


class MeanModel:
    """Forecasts the mean of what it was fitted on, with an interval of ±1."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.level = float(frame["y"].mean())

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        n = len(frame)
        return pd.DataFrame({"yhat": [self.level] * n, "yhat_lower": [self.level - 1] * n}).assign(
            yhat_upper=self.level + 1
        )


def test_walk_forward_and_evaluate_worked_by_hand() -> None:
    series = hourly([1, 2, 3, 4, 5, 6, 7, 8])
    fitters = {
        "mean": MeanModel,
        "naive": lambda frame: SeasonalNaive(timedelta(hours=2), interval_width=0.95).fit(frame),
    }
    replay = walk_forward(series, pd.Timedelta(hours=4), pd.Timedelta(hours=2), fitters)
    # Refits at hours 4 (fitted on hours 0-3) and 6 (on hours 2-5), each serving two hours.
    assert replay.fitted_folds == 2 and replay.skipped == 0 and not replay.failures
    mean = replay.points[replay.points["kind"] == "mean"]
    assert mean["yhat"].tolist() == [2.5, 2.5, 4.5, 4.5]
    assert mean["origin"].tolist() == [START + pd.Timedelta(hours=h) for h in (4, 4, 6, 6)]
    naive = replay.points[replay.points["kind"] == "naive"]
    assert naive["yhat"].tolist() == [3.0, 4.0, 5.0, 6.0]  # two hours earlier
    figures = evaluate(replay, reference="naive")
    # mean: errors 2.5, 3.5, 2.5, 3.5 -> MAE 3; nothing within ±1; width 2.
    assert figures["mean"] == {
        "n": 4,
        "mae": 3.0,
        "coverage": 0.0,
        "mean_width": 2.0,
        "missing": 0,
        "mae_relative": 1.5,
    }
    # naive: every error is 2; its window's one-season errors are all 2 too, so sigma = 2 and every reading
    # lies inside ±1.96 * 2.
    assert figures["naive"]["mae"] == 2.0 and figures["naive"]["mae_relative"] == 1.0
    assert figures["naive"]["coverage"] == 1.0
    assert figures["naive"]["mean_width"] == pytest.approx(2 * Z95 * 2)


def test_kinds_are_scored_on_the_readings_all_of_them_forecast() -> None:
    series = hourly([1, 2, 3, 4, 5, 6, 7, 8])

    def failing_once(frame: pd.DataFrame) -> MeanModel:
        if frame["ds"].iloc[-1] == START + pd.Timedelta(hours=5):
            raise RuntimeError("no convergence")
        return MeanModel(frame)

    replay = walk_forward(series, pd.Timedelta(hours=4), pd.Timedelta(hours=2), {"a": MeanModel, "b": failing_once})
    assert len(replay.failures["b"]) == 1 and "RuntimeError: no convergence" in replay.failures["b"][0]
    figures = evaluate(replay, reference="a")
    # b has no forecast for hours 6 and 7, so a is scored on hours 4 and 5 only: errors 2.5 and 3.5.
    assert figures["a"]["n"] == 2 and figures["a"]["mae"] == 3.0 and figures["a"]["missing"] == 0
    assert figures["b"]["n"] == 2 and figures["b"]["missing"] == 2


def test_a_window_with_too_few_readings_is_skipped() -> None:
    series = pd.concat([hourly([1, 2, 3]), hourly([9, 9], START + pd.Timedelta(hours=10))], ignore_index=True)
    replay = walk_forward(series, pd.Timedelta(hours=3), pd.Timedelta(hours=1), {"mean": MeanModel})
    # Refits at hours 3..11. Hour 10's window [7, 10) is empty and hour 11's, [8, 11), holds hour 10 alone:
    # both skipped; the other refits serve no reading.
    assert replay.fitted_folds == 0 and replay.skipped == 2 and replay.points.empty


class Spy:
    """A model that forecasts when its training data ended: yhat = the last time it saw, in seconds."""

    def __init__(self, frame: pd.DataFrame) -> None:
        seconds = (frame["ds"] - START) / pd.Timedelta(seconds=1)
        self.first, self.last = float(seconds.min()), float(seconds.max())

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        n = len(frame)
        return pd.DataFrame({"yhat": [self.last] * n, "yhat_lower": [self.first] * n, "yhat_upper": [self.last] * n})


@given(
    offsets=st.lists(st.integers(0, 3000), min_size=2, max_size=60).map(sorted),
    window=st.integers(1, 800),
    refit=st.integers(1, 500),
)
def test_no_forecast_ever_sees_its_own_future(offsets: list[int], window: int, refit: int) -> None:
    series = pd.DataFrame({"ds": [START + pd.Timedelta(minutes=m) for m in offsets], "y": [0.0] * len(offsets)})
    replay = walk_forward(series, pd.Timedelta(minutes=window), pd.Timedelta(minutes=refit), {"spy": Spy})
    points = replay.points
    for row in points.itertuples():
        at = (row.ds - START).total_seconds()
        origin = (row.origin - START).total_seconds()
        assert row.yhat < origin <= at, "fitted only on readings before its refit, which is not after the reading"
        assert row.yhat_lower >= origin - window * 60, "fitted on the trailing window only"
        # The model serving a reading is the latest refit at or before it.
        assert origin == offsets[0] * 60 + (window + (at / 60 - offsets[0] - window) // refit * refit) * 60
    # Every reading after the first window is forecast once, or counted as skipped.
    after = sum(1 for m in offsets if m >= offsets[0] + window)
    assert points["i"].is_unique and len(points) + replay.skipped == after


# --------------------------------------------------------------------------- the command line


def daily_pattern_csv(path: Path, days: int = 10, header: str = "timestamp,value") -> Path:
    """Hourly: a daily wave plus growth of 0.01 an hour, so the day-earlier value is always 0.24 lower."""
    lines = [header]
    for h in range(days * 24):
        at = START + pd.Timedelta(hours=h)
        lines.append(f"{at.isoformat()},{100 + 10 * math.sin(2 * math.pi * h / 24) + 0.01 * h!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args: str) -> int:
    return backtest.main(list(args))


def test_backtest_of_a_csv_worked_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = daily_pattern_csv(tmp_path / "wave.csv")
    out = tmp_path / "bt.json"
    code = run("--csv", str(csv), "--window", "8d", "--kinds", "prophet,trend", "--out", str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "refits" in captured.err, "a progress bar on stderr"
    document: dict[str, Any] = json.loads(out.read_text())
    assert document["plan"]["season_readings"] == 24 and document["plan"]["window_s"] == 8 * 86400
    assert document["folds"] == {"fitted": 2, "readings_skipped": 0}  # refits at days 8 and 9
    metrics = document["metrics"]
    assert list(metrics) == ["prophet", "trend", "naive-day", "naive-week"]
    day, week = metrics["naive-day"], metrics["naive-week"]
    assert day["n"] == week["n"] == metrics["prophet"]["n"] == 48
    # Each day is the day before plus 0.24, so the daily naive is off by 0.24, the weekly by 7 x 0.24; the daily
    # naive's errors in its window are all 0.24, so its interval is ±z99 x 0.24 and holds every reading.
    assert day["mae"] == pytest.approx(0.24) and week["mae"] == pytest.approx(1.68)
    assert day["mae_relative"] == pytest.approx(1 / 7) and week["mae_relative"] == 1.0
    assert day["coverage"] == 1.0 and day["mean_width"] == pytest.approx(2 * Z99 * 0.24)
    assert all(m["nominal"] == 0.99 for m in metrics.values())
    assert metrics["prophet"]["mae"] < metrics["trend"]["mae"], "Prophet sees the daily wave, a line does not"
    png = tmp_path / "bt.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "naive-week" in captured.out and f"wrote {out}" in captured.out


def test_the_new_kinds_replay_through_the_backtest_and_their_calibrated_intervals_hold(tmp_path: Path) -> None:
    assert set(backtest.MODEL_KINDS) == {"prophet", "prophet-uncalibrated", "prophet-plain", "mstl", "trend"}
    noise = np.random.default_rng(5).normal(0, 0.5, 10 * 24)
    ds = pd.date_range(START, periods=10 * 24, freq="h")
    wave = 100 + 10 * np.sin(2 * np.pi * np.arange(10 * 24) / 24)
    csv = tmp_path / "noisy.csv"
    pd.DataFrame({"timestamp": ds.strftime("%Y-%m-%dT%H:%M:%S"), "value": wave + noise}).to_csv(csv, index=False)
    out = tmp_path / "bt.json"
    code = run(
        "--csv", str(csv), "--window", "8d", "--kinds", "prophet,mstl", "--interval-width", "0.95", "--out", str(out)
    )
    assert code == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert all(m["failed_folds"] == 0 and m["n"] == 48 for m in metrics.values())  # refits at days 8 and 9
    for kind in ("prophet", "mstl"):
        # Within the noise (mean absolute value 0.4) of the wave; the interval, sized on the errors of the
        # last 4 days held out (96), holds at least 41 of the 48: 3 binomial sd (1.5) below the 45.6 expected.
        assert metrics[kind]["mae"] < 0.8, kind
        assert metrics[kind]["coverage"] >= 41 / 48, kind


def test_resampled_readings_are_replayed_at_the_new_interval(tmp_path: Path) -> None:
    csv = daily_pattern_csv(tmp_path / "wave.csv")
    out = tmp_path / "bt.json"
    assert run("--csv", str(csv), "--window", "8d", "--resample", "2h", "--kinds", "trend", "--out", str(out)) == 0
    document = json.loads(out.read_text())
    assert document["source"]["readings"] == 10 * 12
    assert document["plan"]["season_readings"] == 12 and document["plan"]["sampling_interval_s"] == 7200
    # A 2-hour mean a day later is still 0.24 higher, and a week later 1.68.
    metrics = document["metrics"]
    assert metrics["naive-day"]["n"] == 24 and metrics["naive-day"]["mae"] == pytest.approx(0.24)
    assert metrics["naive-week"]["mae"] == pytest.approx(1.68)


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (
            "timestamp,value\n2026-11-02T00:00:00,1\nyesterday,2\n",
            [],
            "line 3: time 'yesterday' in column 'timestamp' is not ISO 8601",
        ),
        ("timestamp,value\n2026-11-02T00:00:00,1\n2026-11-02T01:00:00,many\n", [], "line 3: value 'many'"),
        ("time,value\n2026-11-02T00:00:00,1\n", [], "no column 'timestamp'; the columns are ['time', 'value']"),
        (None, ["--window", "28d"], "too little data for one window: the readings span 9d 23h"),
        (None, ["--window", "7d"], "--window 7d is shorter than 8 daily seasons (8 x 1d)"),
        (None, ["--window", "8d", "--season", "0"], "--season must be at least 1 reading"),
        (None, ["--window", "8d", "--interval-width", "1.5"], "--interval-width must be between 0 and 1"),
        (None, ["--window", "8d", "--since", "2026-11-05", "--until", "2026-11-04"], "is not before --until"),
        (None, ["--window", "8d", "--since", "2027-01-01"], "data.csv from 2027-01-01T00:00:00+00:00 until the end"),
        (
            "timestamp,value\n2026-11-02T00:00:00,1\n2026-11-02T00:00:00,2\n",
            [],
            "the 2 reading(s) are all at one time",
        ),
        (
            None,
            ["--window", "8d", "--interval-width", "0.5"],
            "trend failed on every refit (2); the first: fold at 2026-11-10 00:00:00: ValueError: interval_width must",
        ),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, args: list[str], message: str
) -> None:
    csv = tmp_path / "data.csv"
    if content is None:
        daily_pattern_csv(csv)
    else:
        csv.write_text(content)
    assert run("--csv", str(csv), "--kinds", "trend", "--out", str(tmp_path / "o.json"), *args) == 2
    err = capsys.readouterr().err
    assert any(line.startswith("error: ") and message in line for line in err.splitlines()), err
    assert not (tmp_path / "o.json").exists()


def test_daily_readings_need_a_season(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "daily.csv"
    csv.write_text("timestamp,value\n" + "".join(f"2026-01-{d:02d},{d}\n" for d in range(1, 31)))
    assert run("--csv", str(csv), "--kinds", "trend", "--out", str(tmp_path / "o.json")) == 2
    assert "readings are 1d apart" in capsys.readouterr().err


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.json")) == 2
    assert f"error: {tmp_path / 'nope.csv'}: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "a month"], "'a month' is not a duration like 30min, 6h, 1d or 4w"),
        (["--kinds", "prophet,arima"], "unknown kind(s) ['arima']"),
        (["--since", "last week"], "'last week' is not an ISO 8601 time"),
    ],
)
def test_bad_options_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        run("--csv", str(daily_pattern_csv(tmp_path / "d.csv")), *args)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_stored_readings_need_the_mongo_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MONGO_URI", raising=False)
    with pytest.raises(SystemExit) as stopped:
        run("--sensor", "s1")
    assert stopped.value.code == 2 and "MONGO_URI is not set" in capsys.readouterr().err


def test_durations() -> None:
    assert backtest.duration("28d") == pd.Timedelta(days=28)
    assert backtest.duration("1.5h") == pd.Timedelta(minutes=90)
    assert backtest.duration("30min") == pd.Timedelta(minutes=30)
    assert backtest.duration("2w") == pd.Timedelta(days=14)
