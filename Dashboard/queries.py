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

The per-period lookups and their cache are :mod:`Dashboard.lookups`; the model
panel's figures are computed in :mod:`Dashboard.model_panel`. Times in answers
are ISO 8601 UTC strings (:mod:`Dashboard.answers`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from Dashboard.answers import Document, iso, jsonable
from Dashboard.lookups import PeriodLookups, settled_at
from Dashboard.model_panel import MODEL_WINDOW, WEEK, accuracy, backtest_of, naive_tolerance, weekly_naive
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


class Reader:
    """The pipeline's database, read for the page (never written)."""

    def __init__(self, db: Database[Document]) -> None:
        self.db = db
        self.sensor_docs = db[contract.COLLECTION_SENSORS]
        self.rejections = db[contract.COLLECTION_REJECTIONS]
        self.lookups = PeriodLookups(db)

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
            "last_ts": iso(last["ts"]),
            "last_value": last["v"],
            "last_seen": iso(seen),
            "age_s": round(age, 1),
            "interval_s": interval,
            "per_minute": round(per_minute(doc.get("received", {}), now), 2),
            "state": sensor_state(age, interval),
        }

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
            yield {**reading, "ts": iso(reading["ts"])}

    def _readings(self, sensor: str, since: datetime, until: datetime) -> Iterator[Document]:
        """As :meth:`points`, with ``ts`` a datetime."""
        projection = {"points": 1, "forecasts": 1}
        for minute in self.lookups.documents(sensor, since, until, periods.MINUTE, projection):
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
                serving = {**prediction["model"], "reading": reading, "scored_at": iso(prediction.get("scored_at"))}
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
        return jsonable(
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
        found = self.lookups.cached(
            self.db[contract.COLLECTION_RESCORED],
            keys,
            [start + periods.MINUTE for start in starts],
            [None] * len(keys),
            {"forecasts": 1},
            settled_at(),
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
                    "ts": iso(other["ts"]),
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
            "live": accuracy([(r["v"], *r["live"]) for r in both]),
            "rescored": accuracy([(r["v"], *r["model"]) for r in both]),
        }

    def aggregates(self, sensor: str, minutes: int, now: datetime | None = None) -> Document:
        """Count/mean/min/max of the sensor's readings over the last ``minutes``, per minute, hour or day."""
        now = now or datetime.now(UTC)
        span = min(timedelta(minutes=minutes), MAX_RANGE)
        step = resolution(span)
        projection = {"count": 1, "sum": 1, "min": 1, "max": 1}
        rows = [
            {
                "start": iso(doc["start"]),
                "count": doc["count"],
                "mean": doc["sum"] / doc["count"],
                "min": doc["min"],
                "max": doc["max"],
            }
            for doc in self.lookups.documents(sensor, now - span, now, step, projection)
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
                "ts": iso(a["ts"]),
                "v": a["v"],
                "yhat": a["yhat"],
                "yhat_lower": a["yhat_lower"],
                "yhat_upper": a["yhat_upper"],
                "scored_at": iso(a.get("scored_at")),
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
                    "received_at": iso(r.get("received_at")),
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


_STEP_NAMES = {periods.MINUTE: "minute", periods.HOUR: "hour", periods.DAY: "day"}
