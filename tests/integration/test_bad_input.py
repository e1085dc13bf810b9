"""Every kind of bad payload over real MQTT: kept byte-exact with its reason, the flow unharmed."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import contract
from tests.bad_payloads import bad_payloads
from tests.conftest import Pipeline, wait_for
from tests.helpers import consume, payload, publish, reading

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
