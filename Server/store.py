"""MongoDB writes keyed by the reading id, so a redelivered message changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure

from pipeline import contract
from pipeline.settings import MongoSettings

logger = logging.getLogger(__name__)

DUPLICATE_KEY = 11000

#: MongoDB errors worth waiting out: the server is away or busy. Anything else
#: (say, refused credentials) also retries, loudly, rather than lose data.
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionFailure, OperationFailure)


class Store:
    """The pipeline's MongoDB database."""

    def __init__(self, settings: MongoSettings) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            settings.MONGO_URI.get_secret_value(),
            tz_aware=True,
            serverSelectionTimeoutMS=5000,
            connectTimeoutMS=5000,
            appname="pipeline-server",
        )
        self.db = self.client[settings.MONGO_DATABASE]

    def ensure_indexes(self) -> None:
        """Indexes for the queries people and the dashboard make (by sensor, by time)."""
        self.db[contract.COLLECTION_READINGS].create_index([("sensor", ASCENDING), ("ts", ASCENDING)])
        self.db[contract.COLLECTION_PREDICTIONS].create_index([("sensor", ASCENDING), ("ds", ASCENDING)])
        self.db[contract.COLLECTION_REJECTIONS].create_index([("received_at", ASCENDING)])
        self.db[contract.COLLECTION_AGGREGATES].create_index([("sensor", ASCENDING), ("minute", ASCENDING)])
        self.db[contract.COLLECTION_ALERTS].create_index([("ts", ASCENDING)])

    def ping(self) -> None:
        """Raise unless the server answers."""
        self.client.admin.command("ping")

    def existing_ids(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already stored (one indexed query)."""
        if not ids:
            return set()
        found = self.db[collection].find({"_id": {"$in": list(ids)}}, projection={"_id": 1})
        return {document["_id"] for document in found}

    def insert_new(self, collection: str, documents: Sequence[dict[str, Any]]) -> tuple[int, dict[int, str]]:
        """Insert documents whose ``_id`` is not stored yet.

        Returns (how many were new, {index: reason} for documents the server
        refused for another reason than a duplicate key). A duplicate key is a
        redelivery and is not an error. Connection errors propagate (retry).
        """
        if not documents:
            return 0, {}
        try:
            result = self.db[collection].insert_many(list(documents), ordered=False)
            return len(result.inserted_ids), {}
        except BulkWriteError as error:
            details = error.details
            refused = {
                e["index"]: f"MongoDB refused the document: {e.get('errmsg', 'unknown error')}"
                for e in details.get("writeErrors", [])
                if e.get("code") != DUPLICATE_KEY
            }
            return int(details.get("nInserted", 0)), refused

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
