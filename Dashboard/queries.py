"""Read-only MongoDB queries behind the JSON API: each one by ``_id``, or of a small collection.

FerretDB 1.24 (the local stack's MongoDB) answers only an ``_id`` lookup from an
index: any other filter reads the whole collection, which at a month of readings
takes minutes. So the page never filters ``readings`` or ``predictions``: it
reads the documents the bridge keeps for it (:mod:`Server.timeline`): one per
sensor (``sensors``, a small collection read whole), one per sensor and minute
with that minute's points and forecasts (``aggregates``), per hour and per day
(``aggregates_hourly``, ``aggregates_daily``), each looked up by ``_id``; the
latest anomalies (``recent_anomalies``, one document per bridge); and the newest
of the capped ``rejections`` in insertion order. The model panel reads, by
``_id`` too, the prediction of a recent reading (which model serves the sensor),
that model's running ``accuracy``, the trainer's per-sensor ``model_history``,
rescore's per-sensor ``rescored_models`` and a model's ``rescored`` minutes.
``tests/integration/test_page_queries.py`` runs ``explain`` on every query the
API makes and fails on a scan of a collection that grows with the data.
Times in answers are ISO 8601 UTC strings (see :func:`pipeline.contract.iso`).
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from pipeline import contract, periods

#: A sensor is live while its last reading is younger than this, or than two of its usual intervals.
LIVE_AT_LEAST_S = 30.0
#: Younger than this (and not live): stale; older: silent.
STALE_UNDER_S = 300.0
#: Readings per minute are averaged over this many minutes.
RATE_MINUTES = 5
#: Most points in one series (the newest are kept).
MAX_POINTS = 5000
#: Characters of a rejected payload shown; the rest is cut.
PAYLOAD_PREVIEW = 160
#: The longest range of raw points (one lookup per minute); and of hourly rollups, past which days are read.
RAW_UP_TO = timedelta(hours=3)
HOURLY_UP_TO = timedelta(days=14)
#: The longest range the API serves (raw readings are kept SERVER_RETENTION_RAW_DAYS, rollups longer).
MAX_RANGE = timedelta(days=400)
#: A period whose document was last written more than SETTLED ago changes only by a late reading: it is
#: reused for about CACHE_S, and after that while the hour (or day) holding it has not been written, so a late
#: reading shows within about 1.5 CACHE_S (its hour is written within the bridge's 30 s rollup interval); at most
#: CACHE_MAX documents. A page polling the
#: last hour every 3 s then reads two minutes and two hours from MongoDB, not 61 minutes.
SETTLED = timedelta(minutes=2)
CACHE_S = 60.0
CACHE_MAX = 20_000
#: Lookups sent at once (each on a connection of its own): a cold chart of the last hour is 61 of them.
PARALLEL_LOOKUPS = 8
#: Periods looked up before the first of them is answered (a CSV of a month streams a window at a time).
WINDOW = 240

#: The weekly naive forecast of a reading: the value one WEEK earlier, the reading nearest that time, at
#: most the sensor's usual interval away (at least NAIVE_TOLERANCE_MIN, at most NAIVE_TOLERANCE_MAX).
WEEK = timedelta(days=7)
NAIVE_TOLERANCE_MIN = timedelta(seconds=1)
NAIVE_TOLERANCE_MAX = timedelta(minutes=5)
#: The model panel's figures and a side-by-side comparison cover this much (the live chart's hour).
MODEL_WINDOW = timedelta(minutes=60)

Document = dict[str, Any]
#: The version of the hour (or day) holding a cached period: its ``updated_at``; None for a day.
Version = tuple[str, Any] | None
HOLDER = "holder"
#: The period whose ``updated_at`` says whether a cached minute (or hour) may have changed.
PARENT = {periods.MINUTE: periods.HOUR, periods.HOUR: periods.DAY}


def sensor_state(age_s: float, interval_s: float | None) -> str:
    """``live``, ``stale`` or ``silent`` for a sensor whose last reading is ``age_s`` old."""
    if age_s < LIVE_AT_LEAST_S or (interval_s is not None and age_s < 2 * interval_s):
        return "live"
    return "stale" if age_s < STALE_UNDER_S else "silent"


def resolution(span: timedelta) -> timedelta:
    """The period a chart of ``span`` is drawn in: minutes, hours or days."""
    if span <= RAW_UP_TO:
        return periods.MINUTE
    return periods.HOUR if span <= HOURLY_UP_TO else periods.DAY


def per_minute(received: dict[str, int], now: datetime) -> float:
    """Readings per minute over this minute and the RATE_MINUTES - 1 before it, from ``sensors.received``."""
    current = periods.epoch_minute(now)
    counted = sum(n for minute, n in received.items() if current - RATE_MINUTES < int(minute) <= current)
    return counted / RATE_MINUTES


def preview(payload: str, limit: int = PAYLOAD_PREVIEW) -> tuple[str, bool]:
    """The payload cut to ``limit`` characters, and whether it was cut."""
    return (payload, False) if len(payload) <= limit else (payload[:limit] + "…", True)


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
                return {**metrics[role], "role": role, "decided_at": _iso(decision.get("decided_at"))}
    return None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else contract.iso(moment)


class Reader:
    """The pipeline's database, read for the page (never written)."""

    def __init__(self, db: Database[Document]) -> None:
        self.db = db
        self.sensor_docs = db[contract.COLLECTION_SENSORS]
        self.rejections = db[contract.COLLECTION_REJECTIONS]
        # (collection, _id, projection) -> (monotonic time it expires, document or None, its holder's version).
        self._cache: dict[tuple[str, str, str], tuple[float, Document | None, Version]] = {}
        self._cache_lock = threading.Lock()
        self._lookups = ThreadPoolExecutor(PARALLEL_LOOKUPS, thread_name_prefix="lookup")

    def ping(self) -> bool:
        """Whether MongoDB answers (the dashboard's readiness)."""
        try:
            self.db.client.admin.command("ping")
        except Exception:  # noqa: BLE001 - any failure means: not ready
            return False
        return True

    def sensors(self, now: datetime | None = None) -> list[Document]:
        """Every sensor with its last reading, readings per minute and state, most recently seen first.

        "Seen" is when the bridge received the reading, so a sensor replaying
        old timestamps still counts as live; its last reading is its latest by ``ts``.
        """
        now = now or datetime.now(UTC)
        found = self.sensor_docs.find({}, projection={"write_id": 0})
        rows = [self.row(doc, now) for doc in found if "last" in doc and "last_seen" in doc]
        rows.sort(key=lambda row: (row["age_s"], row["sensor"]))
        return rows

    @staticmethod
    def row(doc: Document, now: datetime) -> Document:
        """One line of the sensors table, from the sensor's document."""
        last, seen, interval = doc["last"], doc["last_seen"], doc.get("interval_s")
        age = max(0.0, (now - seen).total_seconds())
        return {
            "sensor": doc["_id"],
            "last_ts": _iso(last["ts"]),
            "last_value": last["v"],
            "last_seen": _iso(seen),
            "age_s": round(age, 1),
            "interval_s": interval,
            "per_minute": round(per_minute(doc.get("received", {}), now), 2),
            "state": sensor_state(age, interval),
        }

    def _periods(
        self, sensor: str, since: datetime, until: datetime, step: timedelta, projection: Document
    ) -> Iterator[Document]:
        """The stored documents of ``sensor`` for each period of ``step`` in [since, until], oldest first.

        One lookup by ``_id`` per period (a missing period is skipped): FerretDB answers
        ``_id`` equality from its index, but ``$in`` and ranges from a scan. Periods after
        the sensor's latest reading are not looked up; the rest go PARALLEL_LOOKUPS at a
        time, WINDOW periods at once, so a long range streams in bounded memory.
        """
        collection = self.db[periods.COLLECTION[step]]
        settled = datetime.now(UTC) - SETTLED
        latest = self.sensor_docs.find_one({"_id": sensor}, {"last.ts": 1})
        if latest is not None and "last" in latest:
            until = min(until, latest["last"]["ts"])
        starts = periods.starts(since, until, step)
        for first in range(0, len(starts), WINDOW):
            window = starts[first : first + WINDOW]
            keys = [periods.period_id(sensor, start) for start in window]
            versions: list[Version] = [None] * len(window)
            if step in PARENT:
                versions = self._versions(sensor, window, PARENT[step])
            ends = [start + step for start in window]
            found = self._cached(collection, keys, ends, versions, projection, settled)
            yield from ({**doc, "start": start} for start, doc in zip(window, found, strict=True) if doc is not None)

    def _versions(self, sensor: str, starts: list[datetime], parent: timedelta) -> list[Version]:
        """For each period, the version of the period holding it (its hour's or day's ``updated_at``).

        The bridge writes a reading's hour and day with or after its minute, and each write
        sets ``updated_at``: a cached minute whose hour has the version it was cached with
        has not changed since.
        """
        collection = self.db[periods.COLLECTION[parent]]
        holders = sorted({periods.FLOOR[parent](start) for start in starts})
        ids = [periods.period_id(sensor, start) for start in holders]
        docs = self._lookups.map(lambda key: collection.find_one({"_id": key}, {"updated_at": 1}), ids)
        # None: the holder has no document yet; one written before updated_at existed has a version too.
        version = {
            start: None if doc is None else ("written", doc.get("updated_at"))
            for start, doc in zip(holders, docs, strict=True)
        }
        return [(HOLDER, version[periods.FLOOR[parent](start)]) for start in starts]

    def _cached(
        self,
        collection: Collection[Document],
        keys: list[str],
        ends: list[datetime],
        versions: list[Version],
        projection: Document,
        settled: datetime,
    ) -> list[Document | None]:
        """The documents ``keys`` of ``collection`` (their periods ending at ``ends``), from the cache if there.

        Kept only once settled: written last before ``settled`` (``updated_at``), or, for a
        period with no document, ended before it. A minute still being written (the current
        one, or one a sensor fills late from its spool) is read anew at every poll. A kept
        document is used for about CACHE_S, and after that for as long as the period holding
        it keeps the version it had (``versions``; None: no such period).
        """
        shape = repr(sorted(projection.items()))
        now = time.monotonic()
        found: list[Document | None] = [None] * len(keys)
        missing = []
        with self._cache_lock:
            for i, key in enumerate(keys):
                hit = self._cache.get((collection.name, key, shape))
                if hit is not None and (hit[0] > now or (versions[i] is not None and hit[2] == versions[i])):
                    found[i] = hit[1]
                else:
                    missing.append(i)
        fields = {**projection, "updated_at": 1}
        answers = self._lookups.map(lambda i: collection.find_one({"_id": keys[i]}, fields), missing)
        keep = []
        for i, doc in zip(missing, answers, strict=True):
            written = ends[i] if doc is None else doc.pop("updated_at", None) or ends[i]
            found[i] = doc
            # A period with no document whose hour has none either may be one the bridge has just
            # written (its hour follows within the rollup interval): not kept until the hour says.
            unconfirmed = doc is None and versions[i] == (HOLDER, None)
            if written <= settled and not unconfirmed:
                keep.append(((collection.name, keys[i], shape), doc, versions[i]))
        if keep:
            self._keep(keep, now)
        return found

    def _keep(self, entries: list[tuple[tuple[str, str, str], Document | None, Version]], now: float) -> None:
        with self._cache_lock:
            if len(self._cache) + len(entries) > CACHE_MAX:
                expired = [k for k, (until, _, _) in self._cache.items() if until <= now]
                for old in expired or list(self._cache)[: max(len(entries), CACHE_MAX // 10)]:
                    del self._cache[old]
            for entry, doc, version in entries:
                # Each kept between half and one and a half CACHE_S, so the minutes of a chart cached
                # together are read again a few at a time, not all in one poll.
                self._cache[entry] = (now + CACHE_S * random.uniform(0.5, 1.5), doc, version)  # noqa: S311

    def series(self, sensor: str, minutes: int, now: datetime | None = None) -> Document:
        """The sensor's readings of the last ``minutes`` (by event time, at most RAW_UP_TO), each with its forecast."""
        now = now or datetime.now(UTC)
        since = now - min(timedelta(minutes=minutes), RAW_UP_TO)
        points = list(self.points(sensor, since, now))[-MAX_POINTS:]
        return {
            "sensor": sensor,
            "minutes": minutes,
            "points": points,
            "scored": sum(p["yhat"] is not None for p in points),
            "anomalies": sum(bool(p["anomaly"]) for p in points),
        }

    def points(self, sensor: str, since: datetime, until: datetime) -> Iterator[Document]:
        """Each reading of ``sensor`` with ``since <= ts <= until`` and its forecast, oldest first."""
        for reading in self._readings(sensor, since, until):
            yield {**reading, "ts": _iso(reading["ts"])}

    def _readings(self, sensor: str, since: datetime, until: datetime) -> Iterator[Document]:
        """As :meth:`points`, with ``ts`` a datetime."""
        projection = {"points": 1, "forecasts": 1}
        for minute in self._periods(sensor, since, until, periods.MINUTE, projection):
            forecasts = {f["id"]: f for f in periods.forecasts_of(minute)}
            for reading in sorted(periods.points_of(minute), key=lambda p: (p["ts"], p["id"])):
                if not since <= reading["ts"] <= until:
                    continue
                forecast = forecasts.get(reading["id"], {})
                yield {
                    "id": reading["id"],
                    "ts": reading["ts"],
                    "v": reading["v"],
                    "yhat": forecast.get("yhat"),
                    "yhat_lower": forecast.get("yhat_lower"),
                    "yhat_upper": forecast.get("yhat_upper"),
                    "anomaly": forecast.get("anomaly"),
                }

    def model(self, sensor: str, compare: str | None = None, now: datetime | None = None) -> Document:
        """The model serving ``sensor``, its record and accuracy, and the models it was re-scored with.

        Every lookup is by ``_id``: the prediction of the newest scored reading of the
        last MODEL_WINDOW (else of the sensor's latest reading) names the model; its
        running ``accuracy`` is ``<sensor>|<hash>``; the trainer's decisions and rescore's
        runs are one document per sensor. ``weekly`` compares the forecasts of the last
        MODEL_WINDOW with the value a week earlier (the minutes of that hour a week
        before). ``compare``: a model hash from ``rescored``, whose forecasts are set
        beside the live ones over the last MODEL_WINDOW of its latest run.
        """
        now = now or datetime.now(UTC)
        doc = self.sensor_docs.find_one({"_id": sensor}, {"last": 1, "interval_s": 1}) or {}
        shown = list(self._readings(sensor, now - MODEL_WINDOW, now))
        tolerance = naive_tolerance(doc.get("interval_s"))
        if shown:
            since, until = shown[0]["ts"] - WEEK - tolerance, shown[-1]["ts"] - WEEK + tolerance
            earlier = list(self._readings(sensor, since, until))
        else:
            earlier = []
        scored = [p for p in shown if p["yhat"] is not None]
        reading = scored[-1]["id"] if scored else (doc.get("last") or {}).get("id")
        serving = None
        if reading is not None:
            prediction = self.db[contract.COLLECTION_PREDICTIONS].find_one(
                {"_id": reading}, {"model": 1, "scored_at": 1}
            )
            if prediction is not None and prediction.get("model"):
                serving = {**prediction["model"], "reading": reading, "scored_at": _iso(prediction.get("scored_at"))}
        live = None
        if serving is not None:
            live = self.db[contract.COLLECTION_ACCURACY].find_one(
                {"_id": f"{sensor}|{serving['hash']}"}, {"n": 1, "mae": 1, "coverage": 1, "updated_at": 1}
            )
        history = self.db[contract.COLLECTION_MODEL_HISTORY].find_one({"_id": sensor}, {"decisions": 1}) or {}
        decisions = history.get("decisions") or []
        runs = (self.db[contract.COLLECTION_RESCORED_MODELS].find_one({"_id": sensor}, {"runs": 1}) or {}).get(
            "runs"
        ) or []
        chosen = next((r for r in runs if (r.get("model") or {}).get("hash") == compare), None)
        return _jsonable(
            {
                "sensor": sensor,
                "window": {"since": now - MODEL_WINDOW, "until": now},
                "serving": serving,
                "live": None if live is None else {k: live.get(k) for k in ("n", "mae", "coverage", "updated_at")},
                "backtest": None if serving is None else backtest_of(decisions, serving["hash"]),
                "history": decisions,
                "weekly": weekly_naive(shown, earlier, tolerance),
                "rescored": runs,
                "comparison": None if chosen is None else self.comparison(sensor, chosen, now),
            }
        )

    def comparison(self, sensor: str, run: Document, now: datetime) -> Document:
        """A re-scored model's forecasts beside the live ones, reading by reading, over the last MODEL_WINDOW of
        ``run`` (a ``rescored_models`` entry): one ``rescored`` lookup by ``_id`` per minute."""
        model_hash = run["model"]["hash"]
        until = min(run["until"], now) - timedelta(milliseconds=1)  # --until is exclusive
        since = max(run["since"], until - MODEL_WINDOW)
        starts = periods.starts(since, until, periods.MINUTE)
        keys = [f"{sensor}|{model_hash}|{contract.iso(start)}" for start in starts]
        found = self._cached(
            self.db[contract.COLLECTION_RESCORED],
            keys,
            [start + periods.MINUTE for start in starts],
            [None] * len(keys),
            {"forecasts": 1},
            datetime.now(UTC) - SETTLED,
        )
        theirs = [f for doc in found if doc is not None for f in doc.get("forecasts") or []]
        # The re-scored documents hold each reading's time and value: a run older than the raw minutes
        # (SERVER_RETENTION_RAW_DAYS) is still drawn, without the live forecasts.
        live = {reading["id"]: reading for reading in self._readings(sensor, since, until)}
        rows = []
        for other in sorted(theirs, key=lambda f: (f["ts"], f["id"])):
            if not since <= other["ts"] <= until:
                continue
            mine = live.get(other["id"], {})
            rows.append(
                {
                    "ts": _iso(other["ts"]),
                    "v": other["v"],
                    "live": [mine.get("yhat"), mine.get("yhat_lower"), mine.get("yhat_upper")],
                    "model": [other["yhat"], other["yhat_lower"], other["yhat_upper"]],
                }
            )
        both = [r for r in rows if r["live"][0] is not None]
        return {
            "model": run["model"],
            "since": since,
            "until": until,
            "points": rows,
            "live": _accuracy([(r["v"], *r["live"]) for r in both]),
            "rescored": _accuracy([(r["v"], *r["model"]) for r in both]),
        }

    def aggregates(self, sensor: str, minutes: int, now: datetime | None = None) -> Document:
        """Count/mean/min/max of the sensor's readings over the last ``minutes``, per minute, hour or day."""
        now = now or datetime.now(UTC)
        span = min(timedelta(minutes=minutes), MAX_RANGE)
        step = resolution(span)
        projection = {"count": 1, "sum": 1, "min": 1, "max": 1}
        rows = [
            {
                "start": _iso(doc["start"]),
                "count": doc["count"],
                "mean": doc["sum"] / doc["count"],
                "min": doc["min"],
                "max": doc["max"],
            }
            for doc in self._periods(sensor, now - span, now, step, projection)
            if doc.get("count")
        ]
        return {"sensor": sensor, "minutes": minutes, "resolution": _STEP_NAMES[step], "rows": rows}

    def alerts(self, limit: int) -> list[Document]:
        """The latest anomalies, newest first: each bridge keeps its latest in a ``recent_anomalies`` document."""
        found = {
            a["id"]: a
            for doc in self.db[contract.COLLECTION_RECENT_ANOMALIES].find({}, projection={"anomalies": 1})
            for a in doc.get("anomalies") or []
        }
        newest = sorted(found.values(), key=lambda a: (a["ts"], a["id"]), reverse=True)
        return [
            {
                "id": a["id"],
                "sensor": a["sensor"],
                "ts": _iso(a["ts"]),
                "v": a["v"],
                "yhat": a["yhat"],
                "yhat_lower": a["yhat_lower"],
                "yhat_upper": a["yhat_upper"],
                "scored_at": _iso(a.get("scored_at")),
            }
            for a in newest[:limit]
        ]

    def latest_rejections(self, limit: int) -> list[Document]:
        """The latest rejected messages with their reasons, newest first; payloads cut to a preview."""
        found = _newest(self.rejections, "received_at", limit)
        result = []
        for r in found:
            payload, truncated = preview(str(r.get("payload", "")))
            result.append(
                {
                    "id": r["_id"],
                    "received_at": _iso(r.get("received_at")),
                    "transport": r.get("transport"),
                    "topic": r.get("topic"),
                    "kind": r.get("kind"),
                    "reason": r.get("reason"),
                    "size": r.get("size"),
                    "payload_encoding": r.get("payload_encoding"),
                    "payload": payload,
                    # Cut here for the preview, or already when it was kept (past 4 KiB).
                    "truncated": truncated or bool(r.get("truncated")),
                }
            )
        return result


def _newest(collection: Collection[Document], field: str, limit: int) -> list[Document]:
    """The ``limit`` newest documents of a capped collection, read backwards from its end.

    Until the bridge has made the collection capped (or where it does not exist
    yet) FerretDB refuses ``$natural``: then they are sorted by ``field``.
    """
    try:
        return list(collection.find({}).sort("$natural", -1).limit(limit))
    except OperationFailure:
        return list(collection.find({}).sort(field, -1).limit(limit))


def _accuracy(rows: list[tuple[float, float, float, float]]) -> Document:
    """n, MAE and coverage of (v, yhat, lower, upper) rows."""
    if not rows:
        return {"n": 0, "mae": None, "coverage": None}
    return {
        "n": len(rows),
        "mae": sum(abs(v - yhat) for v, yhat, _, _ in rows) / len(rows),
        "coverage": sum(lower <= v <= upper for v, _, lower, upper in rows) / len(rows),
    }


def _jsonable(value: Any) -> Any:
    """``value`` with every datetime as ISO 8601 UTC text, as every answer of the API has them."""
    if isinstance(value, datetime):
        return contract.iso(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_STEP_NAMES = {periods.MINUTE: "minute", periods.HOUR: "hour", periods.DAY: "day"}
