"""Retention's choice between a TTL index (MongoDB) and deleting itself (FerretDB), with a stand-in store."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from pymongo.errors import OperationFailure

from Server.retention import NOT_IMPLEMENTED, Retention, Rule, _split
from Server.store import Store

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


class Collection:
    """Records index creation; answers as MongoDB (TTL allowed), FerretDB (NotImplemented) or a capped collection."""

    def __init__(self, server: str, existing: dict[str, Any]) -> None:
        self.server, self.existing = server, existing
        self.created: list[tuple[list[tuple[str, int]], str, int]] = []

    def index_information(self) -> dict[str, Any]:
        return self.existing

    def create_index(self, keys: list[tuple[str, int]], name: str, expireAfterSeconds: int) -> str:  # noqa: N803
        if self.server == "ferretdb":
            raise OperationFailure('Index option "expireAfterSeconds" is not implemented yet', NOT_IMPLEMENTED)
        if self.server == "capped":
            raise OperationFailure("cannot create a TTL index on a capped collection", 67)
        self.created.append((keys, name, expireAfterSeconds))
        return name


class Db:
    """The database: every name is the one collection; commands are recorded."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.commands: list[Any] = []

    def __getitem__(self, name: str) -> Collection:
        return self.collection

    def command(self, *args: Any, **kwargs: Any) -> None:
        self.commands.append((args, kwargs))


def store_of(server: str, existing: dict[str, Any] | None = None) -> tuple[Store, Collection, list[Any]]:
    collection = Collection(server, existing or {})
    db = Db(collection)
    return cast(Store, SimpleNamespace(db=db)), collection, db.commands


RULE = Rule("readings", "received_at", 2, "SERVER_RETENTION_RAW_DAYS")


def test_mongodb_gets_a_ttl_index_and_the_bridge_deletes_nothing() -> None:
    store, collection, _ = store_of("mongodb")
    assert Retention(store, threading.Event(), [RULE]).setup() == []
    assert collection.created == [([("received_at", 1)], "retention_received_at", 2 * 86400)]


def test_a_changed_retention_changes_the_ttl_index() -> None:
    store, collection, commands = store_of("mongodb", {"retention_received_at": {"expireAfterSeconds": 86400}})
    assert Retention(store, threading.Event(), [RULE]).setup() == []
    assert commands == [
        (("collMod", "readings"), {"index": {"name": "retention_received_at", "expireAfterSeconds": 2 * 86400}})
    ]
    assert collection.created == []


def test_ferretdb_and_capped_collections_are_pruned_by_the_bridge() -> None:
    for server in ("ferretdb", "capped"):
        store, _, _ = store_of(server)
        assert Retention(store, threading.Event(), [RULE]).setup() == [RULE], server


def test_a_rule_of_zero_days_keeps_everything() -> None:
    store, collection, _ = store_of("mongodb")
    forever = Rule("aggregates_daily", "start", 0, "SERVER_RETENTION_DAILY_DAYS")
    assert Retention(store, threading.Event(), [forever]).setup() == [] and collection.created == []


@given(ages=st.lists(st.one_of(st.none(), st.floats(0, 10)), max_size=30), days=st.floats(0.5, 5))
def test_expired_are_taken_up_to_the_first_fresh_one(ages: list[float | None], days: float) -> None:
    cutoff = NOW - timedelta(days=days)
    head = [{"_id": i} | ({} if age is None else {"at": NOW - timedelta(days=age)}) for i, age in enumerate(ages)]
    expired, fresh = _split(head, "at", cutoff)
    first_fresh = next(
        (i for i, age in enumerate(ages) if age is not None and NOW - timedelta(days=age) >= cutoff), None
    )
    before = ages if first_fresh is None else ages[:first_fresh]
    assert fresh == (first_fresh is not None)
    assert expired == [i for i, age in enumerate(before) if age is not None], "every dated document before it"
