"""Retention on the real FerretDB: no TTL indexes there, so the bridge deletes old documents itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from pymongo import monitoring

from pipeline import contract
from pipeline.settings import MongoSettings
from Server import retention
from Server.retention import Retention, Rule
from Server.store import Store
from tests.conftest import Pipeline
from tests.helpers import CommandLog

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
#: Each rule with the date field it reads; one day each.
RULES = [
    Rule(contract.COLLECTION_READINGS, "received_at", 1, "SERVER_RETENTION_RAW_DAYS"),
    Rule(contract.COLLECTION_PREDICTIONS, "scored_at", 1, "SERVER_RETENTION_RAW_DAYS"),
    Rule(contract.COLLECTION_PREDICTION_ERRORS, "scored_at", 1, "SERVER_RETENTION_RAW_DAYS"),
    Rule(contract.COLLECTION_AGGREGATES, "minute", 1, "SERVER_RETENTION_RAW_DAYS"),
    Rule(contract.COLLECTION_AGGREGATES_HOURLY, "start", 2, "SERVER_RETENTION_HOURLY_DAYS"),
    Rule(contract.COLLECTION_AGGREGATES_DAILY, "start", 3, "SERVER_RETENTION_DAILY_DAYS"),
    Rule(contract.COLLECTION_REJECTIONS, "received_at", 1, "SERVER_RETENTION_REJECTIONS_DAYS"),
    Rule(contract.COLLECTION_ALERTS, "detected_at", 1, "SERVER_RETENTION_ALERTS_DAYS"),
]


@pytest.fixture
def store(pipeline: Pipeline) -> Iterator[Store]:
    """A database of this test's own: retention reads each collection from its oldest document."""
    settings = MongoSettings.model_validate(
        {"MONGO_URI": pipeline.stack.env["MONGO_URI"], "MONGO_DATABASE": f"{pipeline.name}_retention"}
    )
    opened = Store(settings)
    yield opened
    opened.client.drop_database(settings.MONGO_DATABASE)
    opened.close()


def test_old_documents_of_every_kind_are_deleted(store: Store) -> None:
    store.ensure_capped(contract.COLLECTION_REJECTIONS, 2**20, "SERVER_REJECTIONS_MAX_MB")
    store.ensure_capped(contract.COLLECTION_ALERTS, 2**20, "SERVER_ALERTS_MAX_MB")
    keeper = Retention(store, threading.Event(), [*RULES, Rule("forever", "at", 0, "NONE")])
    assert keeper.setup() == RULES, "FerretDB has no TTL indexes: the bridge deletes, and never a rule of 0 days"
    for rule in RULES:
        # Oldest first, as they are written; ages in days, either side of the rule's.
        ages = [rule.days + 5, rule.days + 0.01, rule.days - 0.01, 0.0]
        documents = [{"_id": f"{rule.collection}-{age}", rule.field: NOW - timedelta(days=age)} for age in ages]
        store.db[rule.collection].insert_many(documents)

    def deleted(collection: str) -> float:
        return REGISTRY.get_sample_value("pipeline_retention_deleted_total", {"collection": collection}) or 0.0

    for rule in RULES:
        before = deleted(rule.collection)
        assert keeper.prune(rule, now=NOW) == 2, rule.collection
        assert deleted(rule.collection) - before == 2, "counted in pipeline_retention_deleted_total"
        left = sorted(d["_id"] for d in store.db[rule.collection].find({}))
        assert left == sorted(f"{rule.collection}-{age}" for age in (rule.days - 0.01, 0.0)), rule.collection
        assert keeper.prune(rule, now=NOW) == 0, "nothing more to delete"


def test_pruning_reads_from_the_oldest_in_batches_and_stops_at_the_first_fresh(
    store: Store, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = pipeline.stack.env["MONGO_URI"]
    monkeypatch.setattr(retention, "BATCH", 50)
    rule = RULES[0]
    old = [{"_id": f"old-{i:03}", rule.field: NOW - timedelta(days=3)} for i in range(120)]
    fresh = {"_id": "fresh", rule.field: NOW}
    late = {"_id": "late-old", rule.field: NOW - timedelta(days=3)}
    store.db[rule.collection].insert_many([*old, fresh, late])

    finds = CommandLog("find")
    monitoring.register(finds)  # before the client exists: it applies to clients made from now on
    watched = Store(MongoSettings.model_validate({"MONGO_URI": uri, "MONGO_DATABASE": store.db.name}))
    try:
        assert Retention(watched, threading.Event(), [rule]).prune(rule, now=NOW) == 120
    finally:
        watched.close()
    assert [(c["filter"], c["limit"]) for c in finds.commands] == [({}, 50)] * 3, "no filter: SQL LIMIT, no scan"
    left = [d["_id"] for d in store.db[rule.collection].find({})]
    assert left == ["fresh", "late-old"], "inserted after a fresh one: kept until that one expires"


def test_alerts_are_a_capped_collection(store: Store) -> None:
    # An alerts collection from before: not capped, with an alert in it.
    store.db[contract.COLLECTION_ALERTS].insert_one({"_id": "a1", "sensor": "s", "detected_at": NOW})
    store.ensure_capped(contract.COLLECTION_ALERTS, 3 * 2**20, "SERVER_ALERTS_MAX_MB")
    options = store.db[contract.COLLECTION_ALERTS].options()
    assert options.get("capped") is True and options.get("size") == 3 * 2**20
    kept = [n for n in store.db.list_collection_names() if n.startswith(f"{contract.COLLECTION_ALERTS}_uncapped_")]
    assert len(kept) == 1 and store.db[kept[0]].find_one({"_id": "a1"}) is not None, "the old alerts are kept"
    newest = [f"a{i}" for i in range(5)]
    store.db[contract.COLLECTION_ALERTS].insert_many([{"_id": key, "detected_at": NOW} for key in newest])
    found = store.db[contract.COLLECTION_ALERTS].find({}).sort("$natural", -1).limit(2)
    assert [d["_id"] for d in found] == ["a4", "a3"], "the page reads the newest first"


def test_ferretdb_gets_no_secondary_index_and_loses_those_made_before(store: Store) -> None:
    """FerretDB answers no filter from a secondary index: each would only slow every insert."""
    readings = store.db[contract.COLLECTION_READINGS]
    readings.create_index([("sensor", 1), ("ts", 1)])  # as an earlier bridge made it
    store.db[contract.COLLECTION_PREDICTIONS].insert_one({"_id": "p"})
    assert store.is_ferretdb()
    store.ensure_indexes()
    assert set(readings.index_information()) == {"_id_"}
    assert set(store.db[contract.COLLECTION_PREDICTIONS].index_information()) == {"_id_"}


def test_a_large_batch_is_deleted_in_commands_ferretdb_can_take(store: Store) -> None:
    """A delete command of more than about 100 statements hangs FerretDB 1.24: a batch goes in smaller ones."""
    rule = RULES[0]
    store.db[rule.collection].insert_many(
        [{"_id": f"old-{i:04}", rule.field: NOW - timedelta(days=3)} for i in range(retention.BATCH)]
    )
    pruned: list[int] = []
    worker = threading.Thread(
        target=lambda: pruned.append(Retention(store, threading.Event(), [rule]).prune(rule, NOW))
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the deletes hung FerretDB"
    assert pruned == [retention.BATCH] and store.db[rule.collection].find_one({}) is None
