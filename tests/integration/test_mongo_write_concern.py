"""The pipeline's MongoDB client on the real FerretDB: writes with w=majority and retryable writes succeed.

FerretDB cannot replicate: it accepts a write concern and ignores it, so these
tests cannot show a majority being waited for (that needs the replica set of
docker-compose.replicaset.yml, held to its settings by
tests/unit/test_compose_replicaset.py). They show what can be shown here: the
write concern is on every write the services send, the server takes them, the
bridge's store still tells redeliveries (duplicate keys) from new readings
under it, the whole pipeline stores everything with the options spelled out
in MONGO_URI, and a MONGO_URI asking for unacknowledged writes stops the bridge
at start.
"""

from __future__ import annotations

import uuid
from typing import Any

from pymongo import InsertOne, UpdateOne, WriteConcern

from pipeline import contract
from pipeline.mongo import mongo_client
from pipeline.settings import MongoSettings
from Server.store import Store
from tests.conftest import Pipeline, RunningStack, wait_for
from tests.helpers import CommandLog

#: The write commands the services send.
WRITES = {"insert", "update", "delete"}


def with_options(uri: str, options: str) -> str:
    return uri + ("&" if "?" in uri else "?") + options


def settings_of(stack: RunningStack, uri: str | None = None) -> MongoSettings:
    return MongoSettings(MONGO_URI=uri or stack.env["MONGO_URI"], MONGO_DATABASE=stack.env["MONGO_DATABASE"])


def test_every_write_carries_w_majority_and_ferretdb_takes_it(stack: RunningStack) -> None:
    log = CommandLog(*WRITES)
    client = mongo_client(settings_of(stack), event_listeners=[log], serverSelectionTimeoutMS=10_000)
    try:
        assert client.write_concern == WriteConcern(w="majority")
        assert client.options.retry_writes is True
        collection = client[stack.env["MONGO_DATABASE"]][f"wc_{uuid.uuid4().hex[:8]}"]
        assert collection.insert_many([{"_id": i} for i in range(10)], ordered=False).acknowledged
        assert collection.update_one({"_id": 0}, {"$set": {"v": 1}}).modified_count == 1
        result = collection.bulk_write([InsertOne({"_id": 10}), UpdateOne({"_id": 1}, {"$set": {"v": 2}})])
        assert result.inserted_count == 1 and result.modified_count == 1
        assert collection.delete_one({"_id": 2}).deleted_count == 1
        assert collection.count_documents({}) == 10
        collection.drop()
    finally:
        client.close()
    sent = [c for c in log.commands if next(iter(c)) in WRITES]
    assert len(sent) == 5, sent
    for command in sent:
        assert command.get("writeConcern") == {"w": "majority"}, command


def test_the_bridges_store_tells_duplicates_from_new_readings_under_the_write_concern(stack: RunningStack) -> None:
    store = Store(settings_of(stack))
    try:
        assert store.client.write_concern == WriteConcern(w="majority")
        name = f"wc_{uuid.uuid4().hex[:8]}"
        documents: list[dict[str, Any]] = [{"_id": f"r{i}", "value": float(i)} for i in range(5)]
        first = store.insert_new(name, documents)
        assert first.new == 5 and not first.duplicates and not first.refused
        again = store.insert_new(name, [*documents[3:], {"_id": "r5", "value": 5.0}])
        assert again.new == 1 and again.duplicates == {0, 1} and not again.refused
        store.db[name].drop()
    finally:
        store.close()


def test_the_pipeline_stores_everything_with_the_options_spelled_in_mongo_uri(pipeline: Pipeline) -> None:
    uri = with_options(pipeline.stack.env["MONGO_URI"], "w=majority&retryWrites=true&retryReads=true&journal=true")
    pipeline.start_server(MONGO_URI=uri)
    pipeline.start_model()
    count = 200
    sensor = pipeline.start_sensor(1, SENSOR_MAX_READINGS=str(count), SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    assert sensor.wait(120) == 0, sensor.log_tail()
    query = {"sensor": pipeline.sensor_id(1)}
    readings = pipeline.db[contract.COLLECTION_READINGS]
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    wait_for(lambda: readings.count_documents(query) >= count, 60, f"{count} readings", pipeline.logs)
    wait_for(lambda: predictions.count_documents(query) >= count, 120, f"{count} predictions", pipeline.logs)
    assert readings.count_documents(query) == predictions.count_documents(query) == count


def test_a_bridge_asked_for_unacknowledged_writes_stops_at_start_naming_mongo_uri(pipeline: Pipeline) -> None:
    uri = with_options(pipeline.stack.env["MONGO_URI"], "w=0")
    bridge = pipeline.start_server(wait=False, MONGO_URI=uri)
    code = bridge.wait(60)
    pipeline.processes.remove(bridge)  # it was meant to stop
    log = bridge.log_tail()
    assert code == 2, log
    assert "invalid settings, the service cannot start" in log and "MONGO_URI: w=0" in log
    assert pipeline.stack.env["MONGO_APP_PASSWORD"] not in log
    assert "Traceback" not in log


def test_the_dashboard_builds_the_same_client_and_stops_at_start_on_a_mongo_uri_it_refuses(pipeline: Pipeline) -> None:
    uri = with_options(pipeline.stack.env["MONGO_URI"], "w=0")
    dashboard = pipeline.start_dashboard(wait=False, MONGO_URI=uri)
    code = dashboard.wait(60)
    pipeline.processes.remove(dashboard)  # it was meant to stop
    log = dashboard.log_tail()
    assert code == 2, log
    assert "invalid settings, the service cannot start" in log and "MONGO_URI: w=0" in log
    assert pipeline.stack.env["MONGO_APP_PASSWORD"] not in log
