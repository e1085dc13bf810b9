"""Read-only MongoDB queries behind the JSON API.

Only plain ``find``/``distinct`` with filters, sorts, limits and projections;
everything else is computed here in Python, because FerretDB 1.24 (the local
stack's MongoDB) lacks most aggregation operators. FerretDB also uses no index:
each query reads the whole collection (about 1 s per 10,000 readings), so the
sensors table costs one query per poll, not one per sensor: the readings of the
last 5 minutes give every live or stale sensor at once, and only silent sensors
are looked up one by one, at most every few minutes (see ``CACHE_S``).
Times in answers are ISO 8601 UTC strings (see :func:`pipeline.contract.iso`).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

from pipeline import contract

#: A sensor is live while its last reading is younger than this, or than two of its usual intervals.
LIVE_AT_LEAST_S = 30.0
#: Younger than this (and not live): stale; older: silent.
STALE_UNDER_S = 300.0
#: Readings per minute are averaged over this window.
RATE_WINDOW = timedelta(minutes=5)
#: Latest readings per sensor used to learn its usual interval.
RECENT_READINGS = 20
#: Most readings read for the sensors table (those of the last RATE_WINDOW).
MAX_RECENT = 100_000
#: How long the list of sensors and a silent sensor's last reading are reused.
#: Shorter than RATE_WINDOW, so a cached answer is never wrong: a sensor that
#: sends again is among the recent readings for longer than this.
CACHE_S = 240.0
#: Most points in one series (the newest are kept).
MAX_POINTS = 5000
#: Characters of a rejected payload shown; the rest is cut.
PAYLOAD_PREVIEW = 160

Document = dict[str, Any]


def sensor_state(age_s: float, interval_s: float | None) -> str:
    """``live``, ``stale`` or ``silent`` for a sensor whose last reading is ``age_s`` old."""
    if age_s < LIVE_AT_LEAST_S or (interval_s is not None and age_s < 2 * interval_s):
        return "live"
    return "stale" if age_s < STALE_UNDER_S else "silent"


def usual_interval(times: list[datetime]) -> float | None:
    """The median gap in seconds between consecutive readings (any order), or None with fewer than two."""
    ordered = sorted(times)
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(ordered, ordered[1:], strict=False)]
    return statistics.median(gaps) if gaps else None


def preview(payload: str, limit: int = PAYLOAD_PREVIEW) -> tuple[str, bool]:
    """The payload cut to ``limit`` characters, and whether it was cut."""
    return (payload, False) if len(payload) <= limit else (payload[:limit] + "…", True)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else contract.iso(moment)


class Reader:
    """The pipeline's database, read for the page (never written)."""

    def __init__(self, db: Database[Document]) -> None:
        self.db = db
        self.readings = db[contract.COLLECTION_READINGS]
        self.predictions = db[contract.COLLECTION_PREDICTIONS]
        self.rejections = db[contract.COLLECTION_REJECTIONS]
        self.aggregates = db[contract.COLLECTION_AGGREGATES]
        self._lock = threading.Lock()
        self._sensors: tuple[float, set[str]] | None = None
        self._latest: dict[str, tuple[float, list[Document]]] = {}

    def ping(self) -> bool:
        """Whether MongoDB answers (the dashboard's readiness)."""
        try:
            self.db.client.admin.command("ping")
        except Exception:  # noqa: BLE001 - any failure means: not ready
            return False
        return True

    def sensors(self, now: datetime | None = None) -> list[Document]:
        """Every sensor with its last reading, readings per minute and state, most recently seen first.

        "Seen" is when the bridge received the reading (``received_at``), so a
        sensor replaying old timestamps still counts as live; its last reading
        is its latest by ``ts``.
        """
        now = now or datetime.now(UTC)
        recent: dict[str, list[Document]] = defaultdict(list)
        found = self.readings.find(
            {"received_at": {"$gte": now - RATE_WINDOW}},
            projection={"_id": 0, "sensor": 1, "ts": 1, "v": 1, "received_at": 1},
        ).limit(MAX_RECENT)
        for doc in found:
            recent[doc["sensor"]].append(doc)
        rows = [self._row(sensor, docs, now) for sensor, docs in recent.items()]
        for sensor in self._known_sensors() - recent.keys():
            latest = self._latest_readings(sensor)
            if latest:
                rows.append(self._row(sensor, latest, now, counted=False))
        rows.sort(key=lambda row: (row["age_s"], row["sensor"]))
        return rows

    @staticmethod
    def _row(sensor: str, docs: list[Document], now: datetime, counted: bool = True) -> Document:
        docs.sort(key=lambda doc: doc["ts"])
        last = docs[-1]
        seen = max(doc.get("received_at") or doc["ts"] for doc in docs)
        interval = usual_interval([doc["ts"] for doc in docs[-RECENT_READINGS:]])
        age = max(0.0, (now - seen).total_seconds())
        per_minute = len(docs) / (RATE_WINDOW.total_seconds() / 60) if counted else 0.0
        return {
            "sensor": sensor,
            "last_ts": _iso(last["ts"]),
            "last_value": last["v"],
            "last_seen": _iso(seen),
            "age_s": round(age, 1),
            "interval_s": None if interval is None else round(interval, 3),
            "per_minute": round(per_minute, 2),
            "state": sensor_state(age, interval),
        }

    def _known_sensors(self) -> set[str]:
        with self._lock:
            cached = self._sensors
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        sensors = set(self.readings.distinct("sensor"))
        with self._lock:
            self._sensors = (time.monotonic(), sensors)
        return sensors

    def _latest_readings(self, sensor: str) -> list[Document]:
        """A quiet sensor's latest readings by ``ts`` (one indexed query on MongoDB), reused for CACHE_S."""
        with self._lock:
            cached = self._latest.get(sensor)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return list(cached[1])
        latest = list(
            self.readings.find({"sensor": sensor}, projection={"_id": 0, "ts": 1, "v": 1, "received_at": 1})
            .sort("ts", DESCENDING)
            .limit(RECENT_READINGS)
        )
        with self._lock:
            self._latest[sensor] = (time.monotonic(), latest)
        return list(latest)

    def series(self, sensor: str, minutes: int, now: datetime | None = None) -> Document:
        """The sensor's readings of the last ``minutes`` (by event time), each with its prediction if scored."""
        since = (now or datetime.now(UTC)) - timedelta(minutes=minutes)
        readings = list(
            self.readings.find({"sensor": sensor, "ts": {"$gte": since}}, projection={"ts": 1, "v": 1})
            .sort("ts", DESCENDING)
            .limit(MAX_POINTS)
        )
        readings.reverse()
        predictions: dict[str, Document] = {}
        if readings:
            # A prediction's ds is its reading's ts, so one indexed range finds them all.
            found = self.predictions.find(
                {"sensor": sensor, "ds": {"$gte": readings[0]["ts"]}},
                projection={"yhat": 1, "yhat_lower": 1, "yhat_upper": 1, "anomaly": 1},
            ).limit(2 * MAX_POINTS)
            predictions = {p["_id"]: p for p in found}
        points = []
        for reading in readings:
            prediction = predictions.get(reading["_id"], {})
            points.append(
                {
                    "id": reading["_id"],
                    "ts": _iso(reading["ts"]),
                    "v": reading["v"],
                    "yhat": prediction.get("yhat"),
                    "yhat_lower": prediction.get("yhat_lower"),
                    "yhat_upper": prediction.get("yhat_upper"),
                    "anomaly": prediction.get("anomaly"),
                }
            )
        return {
            "sensor": sensor,
            "minutes": minutes,
            "points": points,
            "scored": sum(p["yhat"] is not None for p in points),
            "anomalies": sum(bool(p["anomaly"]) for p in points),
        }

    def alerts(self, limit: int) -> list[Document]:
        """The latest anomalies (predictions whose observed value is outside the interval), newest first."""
        found = (
            self.predictions.find(
                {"anomaly": True},
                projection={"sensor": 1, "ds": 1, "v": 1, "yhat": 1, "yhat_lower": 1, "yhat_upper": 1, "scored_at": 1},
            )
            .sort("scored_at", DESCENDING)
            .limit(limit)
        )
        return [
            {
                "id": p["_id"],
                "sensor": p["sensor"],
                "ts": _iso(p["ds"]),
                "v": p["v"],
                "yhat": p["yhat"],
                "yhat_lower": p["yhat_lower"],
                "yhat_upper": p["yhat_upper"],
                "scored_at": _iso(p.get("scored_at")),
            }
            for p in found
        ]

    def latest_rejections(self, limit: int) -> list[Document]:
        """The latest rejected messages with their reasons, newest first; payloads cut to a preview."""
        found = self.rejections.find({}).sort("received_at", DESCENDING).limit(limit)
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

    def minute_aggregates(self, sensor: str, minutes: int, now: datetime | None = None) -> list[Document]:
        """Per-minute count/mean/min/max of the sensor's readings, as the bridge stores them in ``aggregates``.

        Empty while the collection has none (the dashboard never computes them itself). The
        mean is ``sum / count`` of the same document: the bridge's ``$inc`` of both is atomic,
        while its stored ``mean`` is set by a second update a reader can arrive before.
        """
        since = (now or datetime.now(UTC)) - timedelta(minutes=minutes)
        found = (
            self.aggregates.find(
                {"sensor": sensor, "minute": {"$gte": since}},
                projection={"minute": 1, "count": 1, "sum": 1, "min": 1, "max": 1},
            )
            .sort("minute", ASCENDING)
            .limit(minutes + 1)
        )
        return [
            {
                "minute": _iso(a["minute"]),
                "count": a["count"],
                "mean": a["sum"] / a["count"],
                "min": a["min"],
                "max": a["max"],
            }
            for a in found
        ]
