"""What the live page reads, kept by the bridge as documents keyed by ``_id``.

A query by anything but ``_id`` reads the whole collection on FerretDB 1.24
(the local stack's MongoDB), so a page that filtered ``readings`` by sensor and
time would slow down with every stored reading. Instead the bridge keeps:

- ``aggregates``: one document per sensor and minute of event time
  (``_id`` = ``<sensor>|<minute>``): ``count``, ``sum``, ``min``, ``max``, the
  minute's ``points`` (id, ts, v) and their ``forecasts`` (id, yhat, interval,
  anomaly), each flush adding one chunk of rows to each (see
  :func:`pipeline.periods.pack_points`). A time range of one sensor is one
  lookup per minute.
- ``aggregates_hourly`` and ``aggregates_daily``: the same totals per hour and
  per day (no points), for long time ranges; kept longer than raw readings.
- ``sensors``: one document per sensor: its ``last`` reading, ``last_seen``,
  ``first_seen``, readings received per minute (``received``, the last
  :data:`RATE_MINUTES` minutes) and ``interval_s``, the median gap between its
  latest readings. The sensors table is a read of this small collection.
- ``recent_anomalies``: one document per bridge (``_id`` = ``name``, its MQTT
  client id) with the latest :data:`RECENT_ANOMALIES` anomalies it stored, of
  any sensor. The page's list of anomalies reads these few documents, not
  one list per sensor: FerretDB decodes every field of every document it reads.

Each is updated in place, by ``_id``, every ``every_s`` (minutes and sensors)
or ``rollup_every_s`` (hours and days), with ``$inc``/``$min``/``$max``/``$push``,
so two bridge replicas add to the same documents. Like ``aggregates.py`` it is
fed only by documents the bridge has just inserted for the first time, and a
write retried after an error skips the documents that already carry this
flush's ``write_id`` (a second replica writing the same document in between
could make it count twice).

The cost: a bridge killed outright loses what it had not written yet (up to
``every_s`` of minutes, ``rollup_every_s`` of hours and days); ``readings``
and ``predictions`` still hold everything.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from pipeline import contract
from pipeline.periods import (
    FLOOR,
    MINUTE,
    PeriodIds,
    Totals,
    epoch_minute,
    pack_forecasts,
    pack_points,
    period_id,
)
from pipeline.retry import RetryError, until_done
from Server import metrics
from Server.settings import Settings
from Server.store import MAX_STATEMENTS, TRANSIENT, Store

logger = logging.getLogger(__name__)

#: Points kept in one minute's document: 100 a second. Past it the minute keeps
#: counting (``dropped_points``), so a runaway sensor cannot grow a document
#: past MongoDB's 16 MiB; its readings are all in ``readings``.
MINUTE_POINTS_MAX = 6000
#: Minutes of received counts kept per sensor (the page's rate uses five).
RATE_MINUTES = 10
#: Latest reading times per sensor used for its usual interval.
RECENT_TS = 20
#: Latest anomalies kept in each bridge's ``recent_anomalies`` document, which the page lists.
RECENT_ANOMALIES = 50
#: Minute documents whose pushed points this bridge remembers (for MINUTE_POINTS_MAX).
REMEMBERED_MINUTES = 100_000
#: (sensor, minute) pairs whose period ids touch() keeps ready; all are forgotten at once past this (9 MB, tracemalloc).
KEYS_REMEMBERED = 10_000

#: An update of one document: its ``_id`` and the update operators.
Update = tuple[str, dict[str, Any]]


@dataclass
class Minute:
    """What a flush adds to one sensor's minute."""

    sensor: str
    start: datetime
    totals: Totals = field(default_factory=Totals)
    points: list[dict[str, Any]] = field(default_factory=list)
    forecasts: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0


@dataclass
class Seen:
    """What a flush adds to one sensor's document."""

    last: dict[str, Any] | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    received: dict[int, int] = field(default_factory=dict)


class Timeline:
    """Collects newly stored readings and predictions, and writes the documents above."""

    # Built like Server.aggregates.Aggregator: both are the bridge's periodic writers.
    def __init__(
        self,
        store: Store,
        stop: threading.Event,
        every_s: float = Settings.model_fields["SERVER_TIMELINE_EVERY_S"].default,
        rollup_every_s: float = 30.0,
        name: str = "bridge-1",
    ) -> None:
        self.store = store
        self.stop = stop
        self.name = name
        self.every_s = every_s
        self.rollup_every_s = rollup_every_s
        self._lock = threading.Lock()
        self._minutes: dict[str, Minute] = {}
        self._rollups: dict[tuple[str, str], tuple[str, datetime, Totals]] = {}
        self._seen: dict[str, Seen] = {}
        self._recent: dict[str, deque[datetime]] = {}
        self._anomalies: deque[dict[str, Any]] = deque(maxlen=RECENT_ANOMALIES)
        self._anomalies_changed = False
        # Until the first flush has read back what this bridge wrote before it restarted.
        self._anomalies_loaded = False
        # Points pushed to each minute document by this bridge, oldest first.
        self._pushed: OrderedDict[str, int] = OrderedDict()
        # Epoch minutes of each sensor's ``received`` this bridge has written.
        self._written_minutes: dict[str, set[int]] = {}
        self._rollups_due = 0.0
        self._keys = PeriodIds(KEYS_REMEMBERED)

    def touch(self, readings: Iterable[contract.Reading]) -> None:
        """Add newly stored readings (their hours and days are added up from the minutes at each flush)."""
        now = None
        with self._lock:
            for r in readings:
                key = self._keys.of(r.sensor, FLOOR[MINUTE](r.ts))[0]
                minute = self._minutes.get(key)
                if minute is None:
                    minute = self._minutes[key] = Minute(r.sensor, FLOOR[MINUTE](r.ts))
                minute.totals.add(r.v)
                if self._pushed.get(key, 0) + len(minute.points) < MINUTE_POINTS_MAX:
                    minute.points.append({"id": r.id, "ts": r.ts, "v": r.v})
                else:
                    minute.dropped += 1
                seen = self._seen.get(r.sensor)
                if seen is None:
                    seen = self._seen[r.sensor] = Seen()
                last = seen.last
                if last is None or r.ts >= last["ts"] and (r.ts, r.v, r.id) > (last["ts"], last["v"], last["id"]):
                    seen.last = {"ts": r.ts, "v": r.v, "id": r.id}
                received = r.received_at or now or (now := datetime.now(UTC))
                if seen.first_seen is None or received < seen.first_seen:
                    seen.first_seen = received
                if seen.last_seen is None or received > seen.last_seen:
                    seen.last_seen = received
                at = epoch_minute(received)
                seen.received[at] = seen.received.get(at, 0) + 1
                recent = self._recent.get(r.sensor)
                if recent is None:
                    recent = self._recent[r.sensor] = deque(maxlen=RECENT_TS)
                recent.append(r.ts)

    def touch_predictions(self, predictions: Iterable[dict[str, Any]]) -> None:
        """Add newly stored predictions (MongoDB documents) to their reading's minute."""
        with self._lock:
            for p in predictions:
                start = FLOOR[MINUTE](p["ds"])
                key = period_id(p["sensor"], start)
                minute = self._minutes.get(key)
                if minute is None:
                    minute = self._minutes[key] = Minute(p["sensor"], start)
                forecast = {k: p[k] for k in ("yhat", "yhat_lower", "yhat_upper", "anomaly")}
                minute.forecasts.append({"id": p["_id"], **forecast})
                if p["anomaly"]:
                    anomaly = {"id": p["_id"], "ts": p["ds"], "v": p.get("v"), **forecast}
                    anomaly["scored_at"] = p.get("scored_at")
                    self._anomalies.append({"sensor": p["sensor"], **anomaly})
                    self._anomalies_changed = True

    def run(self) -> None:
        """Write every ``every_s`` until stopped, and everything once more on the way out."""
        while not self.stop.wait(self.every_s):
            self.flush()
        self.flush(everything=True)

    def flush(self, everything: bool = False) -> int:
        """Write what was added since the last flush; returns how many documents were updated."""
        now = datetime.now(UTC)
        self._load_anomalies()
        with self._lock:
            minutes, self._minutes = self._minutes, {}
            seen, self._seen = self._seen, {}
            anomalies = list(self._anomalies) if self._anomalies_changed else None
            self._anomalies_changed = False
            intervals = {sensor: _interval(self._recent[sensor]) for sensor in seen}
            for minute in minutes.values():
                for rollup_key, begins in self._keys.of(minute.sensor, minute.start)[1] if minute.totals.count else ():
                    if rollup_key not in self._rollups:
                        self._rollups[rollup_key] = (minute.sensor, begins, Totals())
                    self._rollups[rollup_key][2].merge(minute.totals)
            rollups: dict[tuple[str, str], tuple[str, datetime, Totals]] = {}
            if everything or now.timestamp() >= self._rollups_due:
                rollups, self._rollups = self._rollups, {}
                self._rollups_due = now.timestamp() + self.rollup_every_s
            for key, minute in minutes.items():
                self._remember_pushed(key, len(minute.points))
        operations: dict[str, list[Update]] = {
            contract.COLLECTION_AGGREGATES: [_minute_update(key, m) for key, m in minutes.items()],
            contract.COLLECTION_SENSORS: [
                self._sensor_update(sensor, s, intervals.get(sensor), now) for sensor, s in seen.items()
            ],
        }
        if anomalies is not None:
            operations[contract.COLLECTION_RECENT_ANOMALIES] = [(self.name, {"$set": {"anomalies": anomalies}})]
        for (name, key), (sensor, start, totals) in rollups.items():
            operations.setdefault(name, []).append(_rollup_update(key, sensor, start, totals))
        if not any(operations.values()):
            return 0
        write_id = uuid.uuid4().hex  # the same for every retry of this flush
        attempts = itertools.count()
        try:
            with metrics.TIMELINE_FLUSH.time():
                return until_done(
                    lambda: self._write(operations, write_id, retry=next(attempts) > 0),
                    self.stop,
                    "update the live page's documents",
                    TRANSIENT,
                )
        except RetryError:
            logger.warning("stopping with %d minute, sensor and rollup updates not written", _count(operations))
            return 0

    def _remember_pushed(self, key: str, points: int) -> None:
        self._pushed[key] = self._pushed.pop(key, 0) + points
        while len(self._pushed) > REMEMBERED_MINUTES:
            self._pushed.popitem(last=False)

    def _load_anomalies(self) -> None:
        """Once: put back the anomalies this bridge (by its name) had written before it stopped."""
        if self._anomalies_loaded:
            return
        try:
            stored = self.store.db[contract.COLLECTION_RECENT_ANOMALIES].find_one({"_id": self.name})
            # Bridges before recent_anomalies kept them in each sensor's document: read on every poll, for nothing.
            self.store.db[contract.COLLECTION_SENSORS].update_many(
                {"anomalies": {"$exists": True}}, {"$unset": {"anomalies": ""}}
            )
        except TRANSIENT:
            return  # the flush that follows retries until MongoDB answers; read again then
        except PyMongoError:
            # Refused for good: neither is worth stopping the page's documents for.
            logger.exception("could not read back this bridge's recent anomalies or drop older lists; going on")
            stored = None
        with self._lock:
            newer = list(self._anomalies)
            self._anomalies.clear()
            self._anomalies.extend((stored or {}).get("anomalies") or [])
            self._anomalies.extend(newer)
            self._anomalies_changed = self._anomalies_changed or bool(newer)
            self._anomalies_loaded = True

    def _sensor_update(self, sensor: str, seen: Seen, interval: float | None, now: datetime) -> Update:
        """``$max``/``$min``/``$inc`` the sensor's document; drop its received counts older than RATE_MINUTES."""
        written = self._written_minutes.setdefault(sensor, set())
        written.update(seen.received)
        expired = {m for m in written if m <= epoch_minute(now) - RATE_MINUTES}
        written -= expired
        update: dict[str, Any] = {
            "$max": {"last": seen.last, "last_seen": seen.last_seen},
            "$min": {"first_seen": seen.first_seen},
            "$inc": {f"received.{m}": n for m, n in seen.received.items()},
        }
        update["$set"] = {}
        if interval is not None:
            update["$set"]["interval_s"] = interval
        if expired - seen.received.keys():
            update["$unset"] = {f"received.{m}": "" for m in expired - seen.received.keys()}
        return sensor, update

    def _write(self, operations: dict[str, list[Update]], write_id: str, retry: bool) -> int:
        """Apply each collection's upserts in ``update`` commands, each setting ``write_id``.

        What is written is taken out of ``operations``, so a retry (after an error that may or
        may not have reached the server) sends only the rest, and first reads the statements
        whose answer was lost by ``_id``, skipping those that already carry this ``write_id``.
        (A filter on ``write_id`` as well would make FerretDB read the whole collection.)

        A raw command, not pymongo's ``bulk_write``: FerretDB's answer to a batch of upserts
        can lack ``nModified``, which ``bulk_write`` requires. FerretDB also stops a batch at
        its first refused statement even when unordered, so the rest is sent again; and a
        command of many statements can hang it, so they go MAX_STATEMENTS at a time. Returns
        how many documents were created or matched.
        """
        written = 0
        for name in list(operations):
            updates = operations[name]
            if retry and updates:
                updates = self._unwritten(name, updates[:MAX_STATEMENTS], write_id) + updates[MAX_STATEMENTS:]
                operations[name] = updates
            while updates:
                chunk = updates[:MAX_STATEMENTS]
                statements = [_statement(key, update, write_id) for key, update in chunk]
                reply = self.store.db.command("update", name, updates=statements, ordered=False, check=False)
                if not reply.get("ok"):
                    raise OperationFailure(reply.get("errmsg", "update failed"), reply.get("code"), reply)
                written += int(reply.get("n", 0))
                errors = sorted(reply.get("writeErrors", []), key=lambda item: int(item["index"]))
                for item in errors:
                    # Refused for good (say, a value past the server's range): retrying would stop
                    # every later update; readings and predictions hold the data.
                    key = chunk[int(item["index"])][0]
                    logger.error("%s: update of %s not written: %s", name, key, item.get("errmsg"))
                updates = updates[int(errors[-1]["index"]) + 1 if errors else len(chunk) :]
                operations[name] = updates
        return written

    def _unwritten(self, name: str, updates: list[Update], write_id: str) -> list[Update]:
        """Those of ``updates`` whose document does not carry ``write_id`` yet (read by ``_id``)."""
        collection = self.store.db[name]
        return [
            (key, update)
            for key, update in updates
            if (collection.find_one({"_id": key}, {"write_id": 1}) or {}).get("write_id") != write_id
        ]


def _statement(key: str, update: dict[str, Any], write_id: str) -> dict[str, Any]:
    """The upsert of one document by ``_id``, marked with this flush's ``write_id`` and when (``updated_at``)."""
    return {
        "q": {"_id": key},
        "u": {**update, "$set": {**update.get("$set", {}), "write_id": write_id, "updated_at": datetime.now(UTC)}},
        "upsert": True,
    }


def _minute_update(key: str, minute: Minute) -> Update:
    update: dict[str, Any] = {"$setOnInsert": {"sensor": minute.sensor, "minute": minute.start}}
    if minute.totals.count:
        update.update(minute.totals.update())
    if minute.dropped:
        update["$inc"]["dropped_points"] = minute.dropped
    pushes = {}
    if minute.points:
        pushes["points"] = {"$each": [pack_points((p["id"], p["ts"], p["v"]) for p in minute.points)]}
    if minute.forecasts:
        pushes["forecasts"] = {"$each": [pack_forecasts(minute.forecasts)]}
    if pushes:
        update["$push"] = pushes
    return key, update


def _rollup_update(key: str, sensor: str, start: datetime, totals: Totals) -> Update:
    return key, {**totals.update(), "$setOnInsert": {"sensor": sensor, "start": start}}


def _interval(times: Iterable[datetime]) -> float | None:
    """The median gap in seconds between consecutive readings (any order), or None with fewer than two."""
    ordered = sorted(times)
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(ordered, ordered[1:], strict=False)]
    return round(statistics.median(gaps), 3) if gaps else None


def _count(operations: dict[str, list[Update]]) -> int:
    return sum(map(len, operations.values()))
