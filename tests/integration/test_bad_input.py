"""Every kind of bad payload over real MQTT: kept byte-exact with its reason, the flow unharmed."""

from __future__ import annotations

import base64
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

    kept = {_raw(d): d for d in rejections.find({"topic": topic})}
    for raw, reason in bad:
        assert raw in kept, f"payload {raw[:60]!r} was not kept byte-exact"
        assert reason in kept[raw]["reason"], f"{raw[:60]!r}: reason {kept[raw]['reason']!r} lacks {reason!r}"

    dead = consume(
        pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"], pipeline.topics["KAFKA_TOPIC_DEADLETTER"], want=len(bad)
    )
    assert sorted(_raw(json.loads(m.value())) for m in dead) == sorted(raw for raw, _ in bad)
    assert server.alive, "a bad payload must never stop the bridge"
    # Counted by reason on /metrics.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.env['HEALTH_PORT']}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    counted = sum(s.value for s in families["pipeline_rejections"].samples if s.name == "pipeline_rejections_total")
    assert counted == len(bad)
    reasons = {
        s.labels["reason"] for s in families["pipeline_rejections"].samples if s.name == "pipeline_rejections_total"
    }
    assert "payload is not JSON" in reasons


def _raw(document: dict[str, object]) -> bytes:
    text = str(document["payload"])
    return base64.b64decode(text) if document["payload_encoding"] == "base64" else text.encode()
