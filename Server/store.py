"""MongoDB writes keyed by the reading id, so a redelivered message changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

from pipeline import contract
from pipeline.mongo import mongo_client
from pipeline.settings import MongoSettings
from Server import metrics

logger = logging.getLogger(__name__)

DUPLICATE_KEY = 11000

#: MongoDB errors worth waiting out: the server is away or busy. Anything else
#: (say, refused credentials) also retries, loudly, rather than lose data.
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionFailure, OperationFailure)


#: Most statements sent in one ``update`` or ``delete`` command. FerretDB 1.24 keeps each
#: statement's query open until the command ends, from a pool of 100 SQLite connections: a
#: command of more statements than that waits forever for its own connections, and every
#: other client with it (measured here: 101 statements passed, 150 hung the server).
MAX_STATEMENTS = 50

#: Secondary indexes per collection (on MongoDB; FerretDB uses none).
SECONDARY_INDEXES: dict[str, list[tuple[str, int]]] = {
    contract.COLLECTION_READINGS: [("sensor", ASCENDING), ("ts", ASCENDING)],
    contract.COLLECTION_PREDICTIONS: [("sensor", ASCENDING), ("ds", ASCENDING)],
    contract.COLLECTION_ACCURACY_HOURLY: [("sensor", ASCENDING), ("hour", ASCENDING)],
}


#: Every secondary index an earlier bridge made (collection, index name), dropped on FerretDB.
EARLIER_INDEXES = [
    (contract.COLLECTION_READINGS, "sensor_1_ts_1"),
    (contract.COLLECTION_PREDICTIONS, "sensor_1_ds_1"),
    (contract.COLLECTION_REJECTIONS, "received_at_1"),
    (contract.COLLECTION_AGGREGATES, "sensor_1_minute_1"),
    (contract.COLLECTION_ALERTS, "ts_1"),
    (contract.COLLECTION_ACCURACY_HOURLY, "sensor_1_hour_1"),
]


@dataclass(frozen=True)
class Inserted:
    """What an insert did: how many documents were new, which were already there, which were refused."""

    new: int
    duplicates: set[int]
    refused: dict[int, str]

    def is_new(self, index: int) -> bool:
        """Whether the document at ``index`` was stored by this insert."""
        return index not in self.duplicates and index not in self.refused


class WriteNotConfirmed(OperationFailure):
    """The primary took an insert but its write concern (``w=majority``) was not confirmed.

    A replica set may yet roll such a write back, so nothing may be acknowledged
    on it: the caller tries the batch again (an OperationFailure is transient).
    ``inserted`` is what the primary took, for the caller to count once the
    batch is done (the retry answers those documents as duplicates).
    """

    def __init__(self, error: BulkWriteError, inserted: Inserted) -> None:
        concern = error.details.get("writeConcernErrors") or [{}]
        super().__init__(
            f"MongoDB did not confirm the write concern: {concern[0].get('errmsg', 'no reason given')}",
            concern[0].get("code"),
            error.details,
        )
        self.inserted = inserted


class Store:
    """The pipeline's MongoDB database."""

    def __init__(self, settings: MongoSettings) -> None:
        self.client: MongoClient[dict[str, Any]] = mongo_client(
            settings,
            tz_aware=True,
            serverSelectionTimeoutMS=5000,
            connectTimeoutMS=5000,
            appname="pipeline-server",
        )
        self.db = self.client[settings.MONGO_DATABASE]

    def ensure_capped(self, name: str, max_bytes: int, setting: str) -> None:
        """Make collection ``name`` capped at ``max_bytes`` (the value of ``setting``), so it cannot fill the disk.

        The oldest documents go first once it is full, and the page reads the newest
        in insertion order (``$natural``), which FerretDB answers without reading the
        rest. A collection made before this existed is converted where the server can
        (MongoDB's ``convertToCapped``); where it cannot (FerretDB 1.24) it is renamed
        ``<name>_uncapped_<time>``, kept, and a capped one made in its place. FerretDB
        trims a capped collection in the background, about once a minute.
        """
        if name not in self.db.list_collection_names(filter={"name": name}):
            self.db.create_collection(name, capped=True, size=max_bytes)
            logger.info("created %s, capped at %d bytes", name, max_bytes)
            return
        options = self.db[name].options()
        if options.get("capped"):
            if options.get("size") != max_bytes:
                logger.warning(
                    "%s is capped at %s bytes, not %s's %d; drop it to change the size",
                    name,
                    options.get("size"),
                    setting,
                    max_bytes,
                )
            return
        try:
            self.db.command("convertToCapped", name, size=max_bytes)
            logger.info("converted %s to a capped collection of %d bytes", name, max_bytes)
        except OperationFailure as error:
            kept = f"{name}_uncapped_{datetime.now(UTC):%Y%m%dT%H%M%S}"
            self.db[name].rename(kept)
            self.db.create_collection(name, capped=True, size=max_bytes)
            logger.warning(
                "%s could not be made capped here (%s): renamed it %s and made a capped one", name, error, kept
            )

    def is_ferretdb(self) -> bool:
        """Whether the server is FerretDB (its ``buildInfo`` says so)."""
        return "ferretdbVersion" in self.db.command("buildInfo")

    def ensure_indexes(self) -> None:
        """Indexes for the queries people make by sensor and time (exports, mongo-express, the shell).

        Not on FerretDB: it answers every filter but ``_id`` equality with a scan, so a
        secondary index would serve no query and only cost each insert (measured here:
        49,000 inserts/s without, 21,000 with the readings' two). The page needs none:
        it reads by ``_id`` (``Server/timeline.py``). Indexes an older bridge made there
        are dropped.
        """
        if self.is_ferretdb():
            dropped = []
            for name, index in EARLIER_INDEXES:
                if index in self.db[name].index_information():
                    self.db[name].drop_index(index)
                    dropped.append(f"{name}.{index}")
            logger.info("FerretDB uses no secondary index: none made%s", f"; dropped {dropped}" if dropped else "")
            return
        for name, keys in SECONDARY_INDEXES.items():
            self.db[name].create_index(keys)

    def ping(self) -> None:
        """Raise unless the server answers."""
        self.client.admin.command("ping")

    def insert_new(self, collection: str, documents: Sequence[dict[str, Any]]) -> Inserted:
        """Insert documents whose ``_id`` is not stored yet.

        A duplicate key is a redelivery, not an error: it is reported in
        ``duplicates``. A document the server refuses for another reason is
        reported in ``refused`` with the reason. Connection errors propagate
        (the caller retries the batch; what was inserted then shows as duplicates).
        """
        if not documents:
            return Inserted(0, set(), {})
        try:
            with metrics.MONGO_WRITE.labels(collection).time():
                result = self.db[collection].insert_many(list(documents), ordered=False)
            return Inserted(len(result.inserted_ids), set(), {})
        except BulkWriteError as error:
            duplicates: set[int] = set()
            refused: dict[int, str] = {}
            for item in error.details.get("writeErrors", []):
                if item.get("code") == DUPLICATE_KEY:
                    duplicates.add(item["index"])
                else:
                    refused[item["index"]] = f"MongoDB refused the document: {item.get('errmsg', 'unknown error')}"
            inserted = Inserted(int(error.details.get("nInserted", 0)), duplicates, refused)
            if error.details.get("writeConcernErrors"):
                raise WriteNotConfirmed(error, inserted) from error
            return inserted

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
