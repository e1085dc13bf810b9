"""Read-only MongoDB queries behind the JSON API: each one by ``_id``, or of a small collection.

FerretDB 1.24 (the local stack's MongoDB) answers only an ``_id`` lookup from an
index: any other filter reads the whole collection, which at a month of readings
takes minutes. So the page never filters ``readings`` or ``predictions``: it
reads the documents the bridge keeps for it (:mod:`Server.timeline`): one per
sensor (``sensors``, a small collection read whole), one per sensor and minute
with that minute's points and forecasts (``aggregates``), per hour and per day
(``aggregates_hourly``, ``aggregates_daily``), each looked up by ``_id``; the
latest anomalies (``recent_anomalies``, one document per bridge); and the newest
of the capped ``rejections`` in insertion order.
``tests/integration/test_page_queries.py`` runs ``explain`` on every query the
API makes and fails on a scan of a collection that grows with the data.
Times in answers are ISO 8601 UTC strings (see :func:`pipeline.contract.iso`).
"""

from __future__ import annotations

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
#: reading shows within the bridge's rollup interval (30 s); at most CACHE_MAX documents. A page polling the
#: last hour every 3 s then reads two minutes and two hours from MongoDB, not 61 minutes.
SETTLED = timedelta(minutes=2)
CACHE_S = 60.0
CACHE_MAX = 20_000
#: Lookups sent at once (each on a connection of its own): a cold chart of the last hour is 61 of them.
PARALLEL_LOOKUPS = 8
#: Periods looked up before the first of them is answered (a CSV of a month streams a window at a time).
WINDOW = 240

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
        projection = {"points": 1, "forecasts": 1}
        for minute in self._periods(sensor, since, until, periods.MINUTE, projection):
            forecasts = {f["id"]: f for f in periods.forecasts_of(minute)}
            for reading in sorted(periods.points_of(minute), key=lambda p: (p["ts"], p["id"])):
                if not since <= reading["ts"] <= until:
                    continue
                forecast = forecasts.get(reading["id"], {})
                yield {
                    "id": reading["id"],
                    "ts": _iso(reading["ts"]),
                    "v": reading["v"],
                    "yhat": forecast.get("yhat"),
                    "yhat_lower": forecast.get("yhat_lower"),
                    "yhat_upper": forecast.get("yhat_upper"),
                    "anomaly": forecast.get("anomaly"),
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


_STEP_NAMES = {periods.MINUTE: "minute", periods.HOUR: "hour", periods.DAY: "day"}
