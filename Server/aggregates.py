"""Derived views kept in MongoDB: per-minute aggregates per sensor, and online model accuracy.

``aggregates``: count, sum, mean, min and max of each sensor's readings per
minute of event time (``_id`` = "<sensor>|<minute>"), what the peers compute
with Kafka Streams. ``accuracy``: per sensor and model, the mean absolute
error and the share of observations inside the forecast interval (coverage),
overall and per hour (``_id`` = "<sensor>|<model hash>" and
"<sensor>|<model hash>|<hour>"), so a person can see a model drift.

Both are fed only by documents the bridge has just inserted for the first
time (a redelivery is a duplicate key and contributes nothing), merged in
memory, and written every few seconds as increments (``$inc``, ``$min``,
``$max``) followed by the derived means. Increments, not re-reads: FerretDB
scans a whole collection for a range query, which would not scale. The cost:
contributions merged but not yet written when the bridge is killed are lost
from these views (never from ``readings`` or ``predictions``), and late
readings still land in their own, older window.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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


@dataclass
class Window:
    """What a batch adds to one (sensor, minute) window."""

    count: int
    total: float
    low: float
    high: float

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def merge(self, other: Window) -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)


@dataclass
class Score:
    """What a batch adds to one accuracy document."""

    name: str
    n: int = 0
    abs_error: float = 0.0
    inside: int = 0

    def merge(self, other: Score) -> None:
        self.n += other.n
        self.abs_error += other.abs_error
        self.inside += other.inside


class Aggregator:
    """Merges contributions from the bridge's threads and writes them every ``every_s`` seconds."""

    def __init__(self, store: Store, stop: threading.Event, every_s: float = 5.0) -> None:
        self.store = store
        self.stop = stop
        self.every_s = every_s
        self._windows: dict[tuple[str, datetime], Window] = {}
        self._scores: dict[str, Score] = {}
        self._lock = threading.Lock()

    def touch(self, readings: Iterable[contract.Reading]) -> None:
        """Add newly stored readings to their windows."""
        with self._lock:
            for reading in readings:
                key = (reading.sensor, window_of(reading.ts))
                window = self._windows.get(key)
                if window is None:
                    self._windows[key] = Window(1, reading.v, reading.v, reading.v)
                else:
                    window.add(reading.v)

    def touch_accuracy(self, predictions: Iterable[dict[str, Any]]) -> None:
        """Add newly stored predictions (MongoDB documents) to their sensor's and model's accuracy."""
        with self._lock:
            for p in predictions:
                score = Score(
                    p["model"]["name"], 1, abs(p["v"] - p["yhat"]), int(p["yhat_lower"] <= p["v"] <= p["yhat_upper"])
                )
                base = f"{p['sensor']}|{p['model']['hash']}"
                hour = p["ds"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
                for key in (base, f"{base}|{contract.iso(hour)}"):
                    current = self._scores.get(key)
                    if current is None:
                        self._scores[key] = Score(score.name, score.n, score.abs_error, score.inside)
                    else:
                        current.merge(score)

    def run(self) -> None:
        """Write until stopped, and once more on the way out."""
        while not self.stop.wait(self.every_s):
            self.flush()
        self.flush()

    def flush(self) -> int:
        """Write what was merged since the last flush; returns how many documents were updated."""
        with self._lock:
            windows, self._windows = self._windows, {}
            scores, self._scores = self._scores, {}
        if not windows and not scores:
            return 0
        try:
            return until_done(
                lambda: self._write_windows(windows) + self._write_scores(scores),
                self.stop,
                "update aggregates and accuracy",
                TRANSIENT,
            )
        except RetryError:
            logger.warning("stopping with %d aggregate and accuracy updates not written", len(windows) + len(scores))
            return 0

    def _write_windows(self, windows: dict[tuple[str, datetime], Window]) -> int:
        collection = self.store.db[contract.COLLECTION_AGGREGATES]
        written = 0
        while windows:
            (sensor, minute), window = next(iter(windows.items()))
            key = aggregate_id(sensor, minute)
            document = collection.find_one_and_update(
                {"_id": key},
                {
                    "$inc": {"count": window.count, "sum": window.total},
                    "$min": {"min": window.low},
                    "$max": {"max": window.high},
                    "$setOnInsert": {"sensor": sensor, "minute": minute},
                },
                upsert=True,
                return_document=True,
            )
            # Added: drop it, so a retry after an error does not add it twice.
            del windows[(sensor, minute)]
            written += 1
            collection.update_one({"_id": key}, {"$set": {"mean": document["sum"] / document["count"]}})
        return written

    def _write_scores(self, scores: dict[str, Score]) -> int:
        collection = self.store.db[contract.COLLECTION_ACCURACY]
        written = 0
        while scores:
            key, score = next(iter(scores.items()))
            sensor, model_hash, *hour = key.split("|")
            document = collection.find_one_and_update(
                {"_id": key},
                {
                    "$inc": {"n": score.n, "abs_error_sum": score.abs_error, "inside": score.inside},
                    "$setOnInsert": {
                        "sensor": sensor,
                        "model": {"name": score.name, "hash": model_hash},
                        "hour": datetime.fromisoformat(hour[0]) if hour else None,
                    },
                },
                upsert=True,
                return_document=True,
            )
            del scores[key]
            written += 1
            collection.update_one(
                {"_id": key},
                {
                    "$set": {
                        "mae": document["abs_error_sum"] / document["n"],
                        "coverage": document["inside"] / document["n"],
                        "updated_at": datetime.now(UTC),
                    }
                },
            )
        return written
