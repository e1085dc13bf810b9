"""Per-minute aggregates per sensor (count, sum, mean, min, max), kept in MongoDB ``aggregates``.

What the peers compute with Kafka Streams, done here by event time and
exactly once: the bridge notes which (sensor, minute) windows its newly
stored readings fall in, and every few seconds each touched window is
recomputed from the stored readings and written whole (``_id`` =
"<sensor>|<minute>"). Recomputing instead of incrementing makes the write
idempotent and lets late readings land in their own, older window.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReplaceOne

from pipeline import contract
from pipeline.retry import RetryError, until_done
from Server.store import TRANSIENT, Store

logger = logging.getLogger(__name__)

WINDOW = timedelta(minutes=1)


def window_of(moment: datetime) -> datetime:
    """The start of the minute ``moment`` falls in (UTC)."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def aggregate_id(sensor: str, minute: datetime) -> str:
    """The aggregate document's id for one sensor and minute."""
    return f"{sensor}|{contract.iso(minute)}"


def summarize(sensor: str, minute: datetime, values: list[float]) -> dict[str, Any]:
    """The aggregate document for one window's values."""
    total = sum(values)
    return {
        "_id": aggregate_id(sensor, minute),
        "sensor": sensor,
        "minute": minute,
        "count": len(values),
        "sum": total,
        "mean": total / len(values),
        "min": min(values),
        "max": max(values),
    }


class Aggregator:
    """Recomputes touched windows every ``every_s`` seconds, in its own thread."""

    def __init__(self, store: Store, stop: threading.Event, every_s: float = 5.0) -> None:
        self.store = store
        self.stop = stop
        self.every_s = every_s
        self._touched: set[tuple[str, datetime]] = set()
        self._lock = threading.Lock()

    def touch(self, readings: Iterable[contract.Reading]) -> None:
        """Note the windows of newly stored readings (called by the bridge)."""
        windows = {(r.sensor, window_of(r.ts)) for r in readings}
        with self._lock:
            self._touched |= windows

    def run(self) -> None:
        """Flush touched windows until stopped, and once more on the way out."""
        while not self.stop.wait(self.every_s):
            self.flush()
        self.flush()

    def flush(self) -> int:
        """Recompute and store every touched window; returns how many were written."""
        with self._lock:
            touched, self._touched = self._touched, set()
        if not touched:
            return 0
        try:
            # On stop, one attempt: a window not written now is recomputed when
            # its sensor's next reading arrives.
            return until_done(lambda: self._write(touched), self.stop, "update aggregates", TRANSIENT)
        except RetryError:
            logger.warning("stopping with %d aggregate windows not updated", len(touched))
            return 0
        except Exception:
            with self._lock:
                self._touched |= touched
            raise

    def _write(self, touched: set[tuple[str, datetime]]) -> int:
        by_sensor: dict[str, set[datetime]] = defaultdict(set)
        for sensor, minute in touched:
            by_sensor[sensor].add(minute)
        operations = []
        readings = self.store.db[contract.COLLECTION_READINGS]
        for sensor, minutes in by_sensor.items():
            values: dict[datetime, list[float]] = defaultdict(list)
            query = {"sensor": sensor, "ts": {"$gte": min(minutes), "$lt": max(minutes) + WINDOW}}
            for document in readings.find(query, projection={"ts": 1, "v": 1, "_id": 0}):
                minute = window_of(document["ts"])
                if minute in minutes:
                    values[minute].append(document["v"])
            for minute, window in values.items():
                document = summarize(sensor, minute, window)
                operations.append(ReplaceOne({"_id": document["_id"]}, document, upsert=True))
        if operations:
            self.store.db[contract.COLLECTION_AGGREGATES].bulk_write(operations, ordered=False)
        return len(operations)
