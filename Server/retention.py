"""Retention: each kind of document is deleted once it is older than its setting.

Where the server has TTL indexes (MongoDB) the bridge creates one per rule and
the server deletes. Where it has none (FerretDB 1.24 answers ``createIndexes``
with ``expireAfterSeconds`` by NotImplemented), the bridge deletes, in batches
that cannot stall ingestion:

- it reads the first :data:`BATCH` documents of the collection in insertion
  order, ``_id`` and the rule's date field only: a ``find`` with no filter and
  a limit, which FerretDB answers with SQL ``LIMIT``, not a scan;
- deletes the expired ones by ``_id`` (the index), MAX_STATEMENTS to a command;
- stops at the first document that is not expired, since everything after it
  was inserted later; pauses :data:`PAUSE_S` between batches; and runs again
  every :data:`EVERY_S`.

Each rule's date field is the moment a document was written (``received_at``,
``scored_at``, ``detected_at``) or the period it covers (``minute``, ``start``),
so insertion order is date order, give or take a late reading. A late
reading's minute document is kept until the ones inserted before it expire.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DeleteOne
from pymongo.errors import OperationFailure

from pipeline import contract
from Server import metrics
from Server.settings import Settings
from Server.store import MAX_STATEMENTS, TRANSIENT, Store

logger = logging.getLogger(__name__)

#: Documents read (and at most deleted) per batch, the pause between batches, and between passes
#: (the first pass FIRST_S after start, so a backlog of expired documents goes at once).
BATCH = 500
PAUSE_S = 0.05
EVERY_S = 60.0
FIRST_S = 5.0
#: MongoDB's code for a command or option the server does not implement.
NOT_IMPLEMENTED = 238


@dataclass(frozen=True)
class Rule:
    """Delete documents of ``collection`` whose ``field`` is older than ``days`` (0: keep forever)."""

    collection: str
    field: str
    days: float
    setting: str

    @property
    def age(self) -> timedelta:
        return timedelta(days=self.days)


def rules(settings: Settings) -> list[Rule]:
    """The retention of every collection that grows, from the settings."""
    raw = (settings.SERVER_RETENTION_RAW_DAYS, "SERVER_RETENTION_RAW_DAYS")
    return [
        Rule(contract.COLLECTION_READINGS, "received_at", *raw),
        Rule(contract.COLLECTION_PREDICTIONS, "scored_at", *raw),
        Rule(contract.COLLECTION_PREDICTION_ERRORS, "scored_at", *raw),
        Rule(contract.COLLECTION_AGGREGATES, "minute", *raw),
        Rule(
            contract.COLLECTION_AGGREGATES_HOURLY,
            "start",
            settings.SERVER_RETENTION_HOURLY_DAYS,
            "SERVER_RETENTION_HOURLY_DAYS",
        ),
        Rule(
            contract.COLLECTION_AGGREGATES_DAILY,
            "start",
            settings.SERVER_RETENTION_DAILY_DAYS,
            "SERVER_RETENTION_DAILY_DAYS",
        ),
        Rule(
            contract.COLLECTION_REJECTIONS,
            "received_at",
            settings.SERVER_RETENTION_REJECTIONS_DAYS,
            "SERVER_RETENTION_REJECTIONS_DAYS",
        ),
        Rule(
            contract.COLLECTION_ALERTS,
            "detected_at",
            settings.SERVER_RETENTION_ALERTS_DAYS,
            "SERVER_RETENTION_ALERTS_DAYS",
        ),
    ]


class Retention:
    """Sets up TTL indexes where the server has them, and deletes old documents itself where it has not."""

    def __init__(self, store: Store, stop: threading.Event, all_rules: Iterable[Rule]) -> None:
        self.store = store
        self.stop = stop
        self.rules = [rule for rule in all_rules if rule.days > 0]
        #: The rules the bridge enforces itself (filled by :meth:`setup`).
        self.pruned: list[Rule] = []

    def setup(self) -> list[Rule]:
        """Create a TTL index per rule; the rules the server cannot expire are left to :meth:`prune`."""
        self.pruned = []
        for rule in self.rules:
            if self._ttl_index(rule):
                logger.info("%s: the server deletes documents %s days after %s", rule.collection, rule.days, rule.field)
            else:
                self.pruned.append(rule)
        if self.pruned:
            names = ", ".join(rule.collection for rule in self.pruned)
            logger.info("the server has no TTL indexes for %s: the bridge deletes old documents itself", names)
        return self.pruned

    def _ttl_index(self, rule: Rule) -> bool:
        """Create (or change) the TTL index of ``rule``; False when the server or collection cannot have one."""
        collection = self.store.db[rule.collection]
        seconds = int(rule.age.total_seconds())
        name = f"retention_{rule.field}"
        try:
            existing = collection.index_information().get(name)
            if existing is not None and existing.get("expireAfterSeconds") != seconds:
                self.store.db.command("collMod", rule.collection, index={"name": name, "expireAfterSeconds": seconds})
            elif existing is None:
                collection.create_index([(rule.field, ASCENDING)], name=name, expireAfterSeconds=seconds)
        except OperationFailure as error:
            if error.code != NOT_IMPLEMENTED:
                # MongoDB refuses TTL on a capped collection, for one: the bridge deletes instead.
                logger.info("%s: no TTL index (%s)", rule.collection, error)
            return False
        return True

    def run(self) -> None:
        """Prune FIRST_S after start and then every EVERY_S until stopped; a server away waits for the next pass."""
        wait = FIRST_S
        while not self.stop.wait(wait):
            wait = EVERY_S
            for rule in self.pruned:
                try:
                    self.prune(rule)
                except TRANSIENT as error:
                    logger.warning("retention of %s paused until the next pass: %s", rule.collection, error)

    def prune(self, rule: Rule, now: datetime | None = None) -> int:
        """Delete the documents of ``rule`` older than its age, oldest first, in batches; returns how many."""
        cutoff = (now or datetime.now(UTC)) - rule.age
        collection = self.store.db[rule.collection]
        deleted = 0
        while not self.stop.is_set():
            head = list(collection.find({}, {"_id": 1, rule.field: 1}).limit(BATCH))
            expired, fresh = _split(head, rule.field, cutoff)
            for start in range(0, len(expired), MAX_STATEMENTS):
                chunk = expired[start : start + MAX_STATEMENTS]
                result = collection.bulk_write([DeleteOne({"_id": key}) for key in chunk], ordered=False)
                deleted += result.deleted_count
                metrics.RETENTION_DELETED.labels(rule.collection).inc(result.deleted_count)
            if fresh or len(head) < BATCH or not expired:
                break
            self.stop.wait(PAUSE_S)
        if deleted:
            logger.info("retention: deleted %d documents of %s older than %s", deleted, rule.collection, cutoff)
        return deleted


def _split(head: list[dict[str, Any]], field: str, cutoff: datetime) -> tuple[list[Any], bool]:
    """The ids of the expired documents before the first fresh one, and whether a fresh one was reached.

    A document without the date field is neither: it is kept, and passed over.
    """
    expired: list[Any] = []
    for document in head:
        moment = document.get(field)
        if not isinstance(moment, datetime):
            continue
        if moment >= cutoff:
            return expired, True
        expired.append(document["_id"])
    return expired, False
