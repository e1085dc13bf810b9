"""Derived views kept in MongoDB: per-minute aggregates per sensor, and online model accuracy.

``aggregates``: count, sum, mean, min and max of each sensor's readings per minute.

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


def accuracy(sensor: str, name: str, model_hash: str, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """The accuracy document for one sensor and model over ``predictions`` (each with v, yhat, bounds, ds)."""
    errors = [abs(p["v"] - p["yhat"]) for p in predictions]
    inside = sum(p["yhat_lower"] <= p["v"] <= p["yhat_upper"] for p in predictions)
    return {
        "_id": f"{sensor}|{model_hash}",
        "sensor": sensor,
        "model": {"name": name, "hash": model_hash},
        "n": len(predictions),
        "mae": sum(errors) / len(errors),
        "coverage": inside / len(predictions),
        "from": min(p["ds"] for p in predictions),
        "to": max(p["ds"] for p in predictions),
        "updated_at": datetime.now(UTC),
    }


class Aggregator:
    """Recomputes touched windows every ``every_s`` seconds, in its own thread."""

    def __init__(self, store: Store, stop: threading.Event, every_s: float = 5.0, accuracy_window: int = 100) -> None:
        self.store = store
        self.stop = stop
        self.every_s = every_s
        self.accuracy_window = accuracy_window
        self._touched: set[tuple[str, datetime]] = set()
        self._models: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def touch(self, readings: Iterable[contract.Reading]) -> None:
        """Note the windows of newly stored readings (called by the bridge)."""
        windows = {(r.sensor, window_of(r.ts)) for r in readings}
        with self._lock:
            self._touched |= windows

    def touch_accuracy(self, pairs: Iterable[tuple[str, str, str]]) -> None:
        """Note (sensor, model name, model hash) pairs with newly stored predictions."""
        with self._lock:
            self._models |= set(pairs)

    def run(self) -> None:
        """Flush touched windows until stopped, and once more on the way out."""
        while not self.stop.wait(self.every_s):
            self.flush()
        self.flush()

    def flush(self) -> int:
        """Recompute and store every touched window; returns how many were written."""
        with self._lock:
            touched, self._touched = self._touched, set()
            models, self._models = self._models, set()
        if not touched and not models:
            return 0
        try:
            # On stop, one attempt: a window not written now is recomputed when
            # its sensor's next reading arrives.
            return until_done(
                lambda: self._write(touched) + self._write_accuracy(models), self.stop, "update aggregates", TRANSIENT
            )
        except RetryError:
            logger.warning("stopping with %d aggregate windows not updated", len(touched) + len(models))
            return 0
        except Exception:
            with self._lock:
                self._touched |= touched
                self._models |= models
            raise

    def _write_accuracy(self, models: set[tuple[str, str, str]]) -> int:
        operations = []
        predictions = self.store.db[contract.COLLECTION_PREDICTIONS]
        for sensor, name, model_hash in models:
            latest = list(
                predictions.find(
                    {"sensor": sensor, "model.hash": model_hash},
                    projection={"v": 1, "yhat": 1, "yhat_lower": 1, "yhat_upper": 1, "ds": 1, "_id": 0},
                )
                .sort("ds", -1)
                .limit(self.accuracy_window)
            )
            if latest:
                document = accuracy(sensor, name, model_hash, latest)
                operations.append(ReplaceOne({"_id": document["_id"]}, document, upsert=True))
        if operations:
            self.store.db[contract.COLLECTION_ACCURACY].bulk_write(operations, ordered=False)
        return len(operations)

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
