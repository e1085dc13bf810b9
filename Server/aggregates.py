"""Online model accuracy kept in MongoDB, per sensor and model, running and per hour.

``accuracy``: per sensor and model, the mean absolute error and the share of
observations inside the forecast interval (coverage) (``_id`` =
"<sensor>|<model hash>"), each written at most every 30 s, at its own moment in
that interval, so a flush writes a share of them. ``accuracy_hourly`` the same
per hour (``_id`` = "<sensor>|<model hash>|<hour>"), written once, whole, when
the hour has settled (no prediction added for SERVER_AGGREGATE_SETTLE_S), so a
person can see a model drift. The bridge remembers the totals it last wrote (it
reads them once by ``_id``), so the update that adds to them also sets the MAE
and coverage: no reader sees totals without them.

Fed only by predictions the bridge has just inserted for the first time (a
redelivery is a duplicate key and contributes nothing); the readings and
predictions also go on to :class:`Server.timeline.Timeline`, which keeps the
documents the live page reads. Every update selects by ``_id`` alone, the only
filter FerretDB answers from an index. A write retried after an error adds the
condition ``write_id`` != this flush's id, so a retry never adds twice.

The cost: what is merged but not written yet is lost if the bridge is killed
(never anything in ``readings`` or ``predictions``): up to an hour of hourly
accuracy, 30 s of the running totals.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from pipeline import contract
from pipeline.retry import RetryError, until_done
from Server.store import TRANSIENT, Store
from Server.timeline import Timeline

logger = logging.getLogger(__name__)


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

    # Built like Server.timeline.Timeline (a store, the stop event, how often to write): both are the bridge's
    # periodic writers, each of its own documents.
    def __init__(
        self,
        store: Store,
        stop: threading.Event,
        every_s: float = 5.0,
        settle_s: float = 10.0,
        max_open: int = 10_000,
        totals_every_s: float = 30.0,
        timeline: Timeline | None = None,
    ) -> None:
        self.store = store
        self.timeline = timeline
        self.stop = stop
        self.every_s = every_s
        self.settle_s = settle_s
        self.max_open = max_open
        self.totals_every_s = totals_every_s
        # When each running total was last written (monotonic): each is written at most
        # every totals_every_s, so a flush writes a share of them, not all at once.
        self._totals_written: dict[str, float] = {}
        # The totals (n, abs_error_sum, inside) of each accuracy document as this bridge last wrote them.
        self._stored: dict[str, tuple[int, float, int]] = {}
        # Open hours: what is not written yet, and when each was last added to (monotonic).
        self._hourly: dict[str, Score] = {}
        self._touched: dict[Any, float] = {}
        # Running totals added since the last flush, per "<sensor>|<model hash>".
        self._scores: dict[str, Score] = {}
        self._lock = threading.Lock()

    def touch(self, readings: Iterable[contract.Reading]) -> None:
        """Pass newly stored readings on to the timeline."""
        if self.timeline is not None:
            self.timeline.touch(readings)

    def touch_accuracy(self, predictions: Iterable[dict[str, Any]]) -> None:
        """Add newly stored predictions (MongoDB documents) to their sensor's and model's accuracy."""
        predictions = list(predictions)
        if self.timeline is not None:
            self.timeline.touch_predictions(predictions)
        now = time.monotonic()
        with self._lock:
            for p in predictions:
                score = Score(
                    p["model"]["name"], 1, abs(p["v"] - p["yhat"]), int(p["yhat_lower"] <= p["v"] <= p["yhat_upper"])
                )
                base = f"{p['sensor']}|{p['model']['hash']}"
                hour = p["ds"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
                hourly = f"{base}|{contract.iso(hour)}"
                for key, scores in ((base, self._scores), (hourly, self._hourly)):
                    current = scores.get(key)
                    if current is None:
                        scores[key] = Score(score.name, score.n, score.abs_error, score.inside)
                    else:
                        current.merge(score)
                self._touched[hourly] = now

    def run(self) -> None:
        """Write until stopped, and everything once more on the way out."""
        while not self.stop.wait(self.every_s):
            self.flush()
        self.flush(everything=True)

    def _settled(self, open_: dict[Any, Any], now: float, everything: bool) -> dict[Any, Any]:
        """Take out of ``open_`` what had nothing added for ``settle_s`` (and the oldest past ``max_open``)."""
        keys = [k for k in open_ if everything or now - self._touched[k] >= self.settle_s]
        if len(open_) - len(keys) > self.max_open:
            chosen = set(keys)
            rest = sorted((k for k in open_ if k not in chosen), key=self._touched.__getitem__)
            keys += rest[: len(open_) - len(keys) - self.max_open]
        taken = {k: open_.pop(k) for k in keys}
        for k in keys:
            self._touched.pop(k, None)
        return taken

    def _due_totals(self, now: float, everything: bool) -> dict[str, Score]:
        """Take the running totals not written for ``totals_every_s`` (new ones at once).

        After its first write, each total is written at its own phase of the
        interval (from a hash of its key): totals that started together (every
        sensor, when the bridge starts) would otherwise stay due together.
        """
        due = [
            k
            for k in self._scores
            if everything or now - self._totals_written.get(k, float("-inf")) >= self.totals_every_s
        ]
        for key in due:
            if key in self._totals_written:
                self._totals_written[key] = now
            else:
                phase = zlib.crc32(key.encode()) % 1000 / 1000
                self._totals_written[key] = now - phase * self.totals_every_s
        return {k: self._scores.pop(k) for k in due}

    def flush(self, everything: bool = False) -> int:
        """Write the settled windows and the running totals; returns how many documents were written."""
        now = time.monotonic()
        with self._lock:
            hourly = self._settled(self._hourly, now, everything)
            scores = self._due_totals(now, everything)
        if not hourly and not scores:
            return 0
        write_id = uuid.uuid4().hex  # the same for every retry of this flush
        attempts = itertools.count()
        pending = {
            contract.COLLECTION_ACCURACY_HOURLY: {key: _score_document(key, score) for key, score in hourly.items()},
        }
        try:
            return until_done(
                lambda: self._write_pending(pending, scores, write_id, retry=next(attempts) > 0),
                self.stop,
                "update aggregates and accuracy",
                TRANSIENT,
            )
        except RetryError:
            unwritten = sum(map(len, pending.values())) + len(scores)
            logger.warning("stopping with %d aggregate and accuracy updates not written", unwritten)
            return 0

    def _write_pending(
        self, pending: dict[str, dict[str, dict[str, Any]]], scores: dict[str, Score], write_id: str, retry: bool
    ) -> int:
        return self._write_settled(pending, write_id, retry) + self._write_scores(scores, write_id, retry)

    def _write_settled(self, pending: dict[str, dict[str, dict[str, Any]]], write_id: str, retry: bool) -> int:
        """Insert settled windows whole (``pending``: collection -> id -> document); merge where one exists."""
        written = 0
        for name, documents in pending.items():
            keys = list(documents)
            inserted = self.store.insert_new(name, [{**documents[k], "write_id": write_id} for k in keys])
            for index, reason in inserted.refused.items():
                # A derived document the server refuses would be refused forever: retrying it would stop
                # every later aggregate. readings and predictions still hold what it summed.
                logger.error("%s %s not written: %s", name, keys[index], reason)
            for index, key in enumerate(keys):
                if index in inserted.refused:
                    del documents[key]
                    continue
                if index in inserted.duplicates:
                    self._merge(name, documents[key], write_id, retry)
                del documents[key]
                written += 1
        return written

    def _merge(self, name: str, document: dict[str, Any], write_id: str, retry: bool) -> None:
        """Add a window to the stored one; on a ``retry``, only if this flush has not already (``write_id``)."""
        collection = self.store.db[name]
        update: dict[str, Any] = {"$inc": {k: document[k] for k in _ADDED}, "$set": {"write_id": write_id}}
        stored = collection.find_one_and_update(_select(document["_id"], write_id, retry), update, return_document=True)
        if stored is not None:
            collection.update_one({"_id": document["_id"]}, {"$set": _derived(stored)})

    def _write_scores(self, scores: dict[str, Score], write_id: str, retry: bool) -> int:
        """Add the running totals to ``accuracy`` and set its MAE and coverage in the same update."""
        collection = self.store.db[contract.COLLECTION_ACCURACY]
        written = 0
        while scores:
            key, score = next(iter(scores.items()))
            sensor, model_hash = key.split("|")
            update: dict[str, Any] = {
                "$inc": {"n": score.n, "abs_error_sum": score.abs_error, "inside": score.inside},
                "$set": {"write_id": write_id},
                "$setOnInsert": {"sensor": sensor, "model": {"name": score.name, "hash": model_hash}},
            }
            known = self._stored.get(key)
            if known is None:
                # New to this bridge: read what is stored (by _id, cheap), so the one update below
                # also sets MAE and coverage and no reader ever sees totals without them.
                found = collection.find_one({"_id": key}, {"n": 1, "abs_error_sum": 1, "inside": 1})
                known = (found["n"], found["abs_error_sum"], found["inside"]) if found else (0, 0.0, 0)
            expected = {"n": known[0] + score.n, "abs_error_sum": known[1] + score.abs_error}
            expected["inside"] = known[2] + score.inside
            update["$set"].update(_derived(expected))
            try:
                stored = collection.find_one_and_update(
                    _select(key, write_id, retry), update, upsert=True, return_document=True
                )
            except DuplicateKeyError:
                stored = None  # the filter missed because this flush's retry already added it
            del scores[key]
            if stored is not None:
                self._stored[key] = (stored["n"], stored["abs_error_sum"], stored["inside"])
                if (stored["n"], stored["inside"]) != (expected["n"], expected["inside"]):
                    # Another writer (a second replica) added to it meanwhile: set them from what is stored.
                    collection.update_one({"_id": key}, {"$set": _derived(stored)})
                written += 1
        return written


def _select(key: str, write_id: str, retry: bool) -> dict[str, Any]:
    """The filter of an update: the ``_id``; on a retry also "not yet written by this flush"."""
    return {"_id": key, "write_id": {"$ne": write_id}} if retry else {"_id": key}


#: The fields a merge adds to a stored hour.
_ADDED = ("n", "abs_error_sum", "inside")


def _derived(document: dict[str, Any]) -> dict[str, Any]:
    """The MAE and coverage computed from a document's totals."""
    return {
        "mae": document["abs_error_sum"] / document["n"],
        "coverage": document["inside"] / document["n"],
        "updated_at": datetime.now(UTC),
    }


def _score_document(key: str, score: Score) -> dict[str, Any]:
    sensor, model_hash, hour = key.split("|")
    document = {
        "_id": key,
        "sensor": sensor,
        "model": {"name": score.name, "hash": model_hash},
        "hour": datetime.fromisoformat(hour),
        "n": score.n,
        "abs_error_sum": score.abs_error,
        "inside": score.inside,
    }
    return document | _derived(document)
