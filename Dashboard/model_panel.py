"""The model panel's figures, computed from what :class:`Dashboard.queries.Reader` read.

The forecasts of the last hour beside the weekly naive forecast (the value one WEEK
earlier) over the same readings; a model's holdout scores from the trainer's
decisions; and the accuracy of forecasts set side by side with a re-scored model's.
"""

from __future__ import annotations

import bisect
from datetime import datetime, timedelta

from Dashboard.answers import Document, iso

#: The weekly naive forecast of a reading: the value one WEEK earlier, the reading nearest that time, at
#: most the sensor's usual interval away (at least NAIVE_TOLERANCE_MIN, at most NAIVE_TOLERANCE_MAX).
WEEK = timedelta(days=7)
NAIVE_TOLERANCE_MIN = timedelta(seconds=1)
NAIVE_TOLERANCE_MAX = timedelta(minutes=5)
#: The model panel's figures and a side-by-side comparison cover this much (the live chart's hour).
MODEL_WINDOW = timedelta(minutes=60)


def pair_week_earlier(now: list[datetime], earlier: list[datetime], tolerance: timedelta) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``: reading ``now[i]`` and the reading ``earlier[j]`` nearest to one WEEK before it.

    Both lists sorted by time. Never more than ``tolerance`` from the week-earlier time;
    each reading of either list in at most one pair (a sensor read faster now than a
    week ago has readings without one). Greedy in time order: each reading takes the
    nearest week-earlier reading still free.
    """
    pairs = []
    used = [False] * len(earlier)
    first = 0
    for i, moment in enumerate(now):
        target = moment - WEEK
        while first < len(earlier) and (used[first] or earlier[first] < target - tolerance):
            first += 1
        best = None
        end = bisect.bisect_right(earlier, target + tolerance, lo=first)
        for j in range(first, end):
            if not used[j] and (best is None or abs(earlier[j] - target) < abs(earlier[best] - target)):
                best = j
        if best is not None:
            used[best] = True
            pairs.append((i, best))
    return pairs


def naive_tolerance(interval_s: float | None) -> timedelta:
    """How far from the week-earlier time a reading may be to stand for it: the sensor's usual interval."""
    if interval_s is None:
        return NAIVE_TOLERANCE_MAX
    return min(NAIVE_TOLERANCE_MAX, max(NAIVE_TOLERANCE_MIN, timedelta(seconds=interval_s)))


def _mae(errors: list[float]) -> Document:
    return {"n": len(errors), "mae": sum(errors) / len(errors) if errors else None}


def weekly_naive(points: list[Document], earlier: list[Document], tolerance: timedelta) -> Document:
    """The forecasts' MAE against the weekly naive's over the same readings.

    ``points``: the readings shown, ``{ts, v, yhat}`` (``yhat`` None: not scored);
    ``earlier``: the readings of the same span a week before, ``{ts, v}``. Each figure
    says over how many readings it is: ``forecast`` every scored reading, ``naive``
    every reading with one a week earlier, ``forecast_paired`` those of them that are
    scored too (the fair comparison: ``ratio`` is its MAE over the naive's on them).
    """
    points = sorted(points, key=lambda p: p["ts"])
    earlier = sorted(earlier, key=lambda p: p["ts"])
    pairs = pair_week_earlier([p["ts"] for p in points], [p["ts"] for p in earlier], tolerance)
    scored = [abs(p["v"] - p["yhat"]) for p in points if p["yhat"] is not None]
    naive = [abs(points[i]["v"] - earlier[j]["v"]) for i, j in pairs]
    both = [
        (abs(points[i]["v"] - points[i]["yhat"]), abs(points[i]["v"] - earlier[j]["v"]))
        for i, j in pairs
        if points[i]["yhat"] is not None
    ]
    fair, fair_naive = _mae([f for f, _ in both]), _mae([n for _, n in both])
    ratio = fair["mae"] / fair_naive["mae"] if fair["n"] and fair_naive["mae"] else None
    return {
        "readings": len(points),
        "earlier_readings": len(earlier),
        "tolerance_s": tolerance.total_seconds(),
        "forecast": _mae(scored),
        "naive": _mae(naive),
        "forecast_paired": fair,
        "naive_paired": fair_naive,
        "ratio": ratio,
        "text": describe_weekly(len(points), len(earlier), _mae(scored), fair, fair_naive),
    }


def _number(value: float) -> str:
    return f"{value:.4g}"


def describe_weekly(readings: int, earlier: int, forecast: Document, fair: Document, naive: Document) -> str:
    """One sentence for the page: the forecasts' MAE, and the weekly naive's on the same readings."""
    if not readings:
        return "no reading in the last hour"
    said = (
        f"forecast MAE {_number(forecast['mae'])} over {forecast['n']} readings"
        if forecast["n"]
        else f"none of the {readings} readings has a forecast"
    )
    if not earlier or not naive["n"]:
        why = "no reading a week earlier" if not earlier else "no reading a week earlier near their times"
        return f"{said}; weekly naive: {why}"
    return (
        f"{said}; on the {fair['n']} with a reading a week earlier: forecast {_number(fair['mae'])}, "
        f"weekly naive {_number(naive['mae'])}" + (f" ({fair['mae'] / naive['mae']:.2f}×)" if naive["mae"] else "")
    )


def backtest_of(decisions: list[Document], model_hash: str) -> Document | None:
    """The holdout scores of a model in the trainer's latest decision that scored it (as challenger or incumbent)."""
    for decision in decisions:
        metrics = decision.get("metrics") or {}
        for role in ("challenger", "incumbent"):
            who = decision.get("model") if role == "challenger" else decision.get("incumbent")
            if (who or {}).get("hash") == model_hash and metrics.get(role):
                return {**metrics[role], "role": role, "decided_at": iso(decision.get("decided_at"))}
    return None


def accuracy(rows: list[tuple[float, float, float, float]]) -> Document:
    """n, MAE and coverage of (v, yhat, lower, upper) rows."""
    if not rows:
        return {"n": 0, "mae": None, "coverage": None}
    return {
        "n": len(rows),
        "mae": sum(abs(v - yhat) for v, yhat, _, _ in rows) / len(rows),
        "coverage": sum(lower <= v <= upper for v, _, lower, upper in rows) / len(rows),
    }
