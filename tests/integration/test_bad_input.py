"""Every kind of bad payload over real MQTT: kept byte-exact with its reason, the flow unharmed."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pipeline import contract
from Server.ingest import prepare
from tests.bad_payloads import bad_payloads
from tests.conftest import Pipeline, wait_for
from tests.helpers import consume, payload, publish, reading
from tests.unit.test_fuzz import SENSOR as FUZZ_SENSOR
from tests.unit.test_fuzz import payloads

pytestmark = pytest.mark.integration


def test_bad_payloads_between_valid_readings(pipeline: Pipeline) -> None:
    server = pipeline.start_server()
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    bad = bad_payloads(sensor)
    assert len(bad) >= 30
    good = [reading(sensor, float(i)) for i in range(len(bad) + 1)]
    stream: list[bytes] = []
    for i, (raw, _) in enumerate(bad):
        stream += [payload(good[i]), raw]
    stream.append(payload(good[-1]))
    assert publish(pipeline.stack.env, sensor, topic, stream) == [0] * len(stream)

    readings = pipeline.db[contract.COLLECTION_READINGS]
    rejections = pipeline.db[contract.COLLECTION_REJECTIONS]
    wait_for(
        lambda: readings.count_documents({"sensor": sensor}) == len(good), 60, "every valid reading", pipeline.logs
    )
    wait_for(lambda: rejections.count_documents({"topic": topic}) == len(bad), 60, "every rejection", pipeline.logs)
    assert {d["_id"] for d in readings.find({"sensor": sensor})} == {r.id for r in good}

    kept = {d["sha256"]: d for d in rejections.find({"topic": topic})}
    for raw, reason in bad:
        document = kept.get(hashlib.sha256(raw).hexdigest())
        assert document is not None, f"payload {raw[:60]!r} was not kept"
        assert_kept(raw, document)
        assert reason in document["reason"], f"{raw[:60]!r}: reason {document['reason']!r} lacks {reason!r}"
        assert document["kind"] in contract.REJECT_KINDS

    dead = consume(
        pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"], pipeline.topics["KAFKA_TOPIC_DEADLETTER"], want=len(bad)
    )
    records = [json.loads(m.value()) for m in dead]
    assert sorted(r["sha256"] for r in records) == sorted(hashlib.sha256(raw).hexdigest() for raw, _ in bad)
    assert server.alive, "a bad payload must never stop the bridge"
    # Counted by reason on /metrics.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.env['HEALTH_PORT']}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    counted = sum(s.value for s in families["pipeline_rejections"].samples if s.name == "pipeline_rejections_total")
    assert counted == len(bad)
    reasons = {
        s.labels["reason"] for s in families["pipeline_rejections"].samples if s.name == "pipeline_rejections_total"
    }
    # Labels come from the fixed set of kinds, never from the payload.
    assert "not_json" in reasons and reasons <= set(contract.REJECT_KINDS)


def assert_kept(raw: bytes, document: dict[str, object]) -> None:
    """A rejection keeps the payload byte-exact, or (past MAX_KEPT_BYTES) a prefix with the size and SHA-256."""
    text = str(document["payload"])
    kept = base64.b64decode(text) if document["payload_encoding"] == "base64" else text.encode()
    assert document["size"] == len(raw) and document["sha256"] == hashlib.sha256(raw).hexdigest()
    if len(raw) <= contract.MAX_KEPT_BYTES:
        assert kept == raw and document["truncated"] is False, f"payload {raw[:60]!r} was not kept byte-exact"
    else:
        assert document["truncated"] is True and raw.startswith(kept)
        assert contract.MAX_KEPT_BYTES - 3 <= len(kept) <= contract.MAX_KEPT_BYTES


@settings(max_examples=1, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(payloads.filter(lambda raw: len(raw) <= 64 * 1024), min_size=80, max_size=80))
def test_a_generated_sample_of_hostile_payloads_over_the_real_broker(pipeline: Pipeline, sample: list[bytes]) -> None:
    """Every payload of a sample the fuzzer generates is stored or rejected with a reason; the flow goes on."""
    server = pipeline.start_server(SERVER_MAX_PAYLOAD_BYTES=str(contract.MAX_PAYLOAD_LIMIT))
    model = pipeline.start_model()
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    # The fuzzer's readings speak for sensor "s-1"; here they speak for this test's sensor.
    sample = [raw.replace(json.dumps(FUZZ_SENSOR).encode(), json.dumps(sensor).encode()) for raw in sample]
    expected_ids: set[str] = set()
    expected_rejected: set[str] = set()
    for raw in sample:
        try:
            expected_ids.add(prepare(raw, topic, datetime.now(UTC), contract.MAX_PAYLOAD_LIMIT).reading.id)
        except contract.ContractError:
            expected_rejected.add(hashlib.sha256(raw).hexdigest())
    good = [reading(sensor, float(i)) for i in range(len(sample) + 1)]
    stream: list[bytes] = []
    for i, raw in enumerate(sample):
        stream += [payload(good[i]), raw]
    stream.append(payload(good[-1]))
    assert publish(pipeline.stack.env, sensor, topic, stream) == [0] * len(stream)

    readings = pipeline.db[contract.COLLECTION_READINGS]
    rejections = pipeline.db[contract.COLLECTION_REJECTIONS]
    every_id = expected_ids | {r.id for r in good}
    wait_for(lambda: readings.count_documents({"sensor": sensor}) >= len(every_id), 90, "every reading", pipeline.logs)
    wait_for(
        lambda: rejections.count_documents({"topic": topic}) >= len(expected_rejected), 90, "rejections", pipeline.logs
    )
    assert {d["_id"] for d in readings.find({"sensor": sensor})} == every_id
    kept = {d["sha256"]: d for d in rejections.find({"topic": topic})}
    assert set(kept) == expected_rejected
    for document in kept.values():
        assert document["reason"] and document["kind"] in contract.REJECT_KINDS
        assert document["kind"] != "unexpected", f"the contract let a failure through: {document['reason']}"
    predictions = pipeline.db[contract.COLLECTION_PREDICTIONS]
    wait_for(
        lambda: predictions.count_documents({"_id": {"$in": sorted(every_id)}}) == len(every_id),
        90,
        "a prediction for every reading",
        pipeline.logs,
    )
    assert server.alive and model.alive, "hostile payloads must never stop the bridge or the model service"


def test_rejections_are_a_capped_collection_of_the_configured_size(pipeline: Pipeline) -> None:
    database = f"{pipeline.name}db"
    server = pipeline.start_server(MONGO_DATABASE=database, SERVER_REJECTIONS_MAX_MB="1")
    options = pipeline.stack.mongo()[database][contract.COLLECTION_REJECTIONS].options()
    assert options.get("capped") is True and options.get("size") == 1024 * 1024, options
    server.stop()
    pipeline.processes.remove(server)

    # A collection made before the cap existed: FerretDB cannot convert it, so it is kept under
    # another name and a capped one takes its place.
    old = f"{pipeline.name}old"
    pipeline.stack.mongo()[old][contract.COLLECTION_REJECTIONS].insert_one({"_id": "x"})
    server = pipeline.start_server(MONGO_DATABASE=old)
    olddb = pipeline.stack.mongo()[old]
    assert olddb[contract.COLLECTION_REJECTIONS].options().get("capped") is True
    kept = [n for n in olddb.list_collection_names() if n.startswith(f"{contract.COLLECTION_REJECTIONS}_uncapped_")]
    assert len(kept) == 1 and olddb[kept[0]].find_one({"_id": "x"}) is not None


def test_the_deadletter_topic_is_bounded_in_bytes(pipeline: Pipeline) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    from pipeline.kafka import DEADLETTER_RETENTION_BYTES

    pipeline.start_server()
    admin = AdminClient({"bootstrap.servers": pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"]})
    topic = pipeline.topics["KAFKA_TOPIC_DEADLETTER"]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["retention.bytes"].value == str(DEADLETTER_RETENTION_BYTES)
    readings = ConfigResource(ConfigResource.Type.TOPIC, pipeline.topics["KAFKA_TOPIC_READINGS"])
    assert admin.describe_configs([readings])[readings].result(timeout=30)["retention.bytes"].value == "-1"
