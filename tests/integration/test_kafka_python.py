"""A user's own kafka-python consumer reads ``analytics`` and ``analytics_results`` as the README documents them.

The services talk to Kafka with confluent-kafka; code users write against the
pipeline (like the seed's model snippet) uses kafka-python. This reads both
topics the way such code does: a plain ``KafkaConsumer`` subscribed to the
topic in a group of its own, ``auto_offset_reset="earliest"`` and
``value_deserializer=json.loads``, on the real Kafka, fed by the real bridge and
model service.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localstack.services import ROOT
from Models_analysis.model import load_model
from pipeline import contract
from tests.conftest import Pipeline
from tests.helpers import payload, publish, reading

with warnings.catch_warnings():
    # kafka-python 3.0.12 loads its protocol schemas, on import, with importlib.resources' deprecated functions.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer

pytestmark = [
    pytest.mark.integration,
    # kafka-python 3.0 still takes a plain function as a deserializer (it wraps it) but warns that this is
    # deprecated; the test reads the topics as code written for kafka-python before 3.0 does.
    pytest.mark.filterwarnings("ignore:value_deserializer does not implement:DeprecationWarning"),
]

#: ISO 8601 in UTC as a reading carries its times: milliseconds and a ``Z``.
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
READING_FIELDS = {"id", "sensor", "ts", "v", "received_at"}
PREDICTION_FIELDS = {"kind", "id", "sensor", "ds", "yhat", "yhat_lower", "yhat_upper", "v", "anomaly", "model"}


def read_as_a_user(bootstrap: str, topic: str, want: int, timeout_s: float = 90.0) -> list[Any]:
    """Every record on ``topic``, read as users' kafka-python code reads it: ``want`` of them, then 2 s quiet."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"user-code-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        value_deserializer=json.loads,
        consumer_timeout_ms=2000,  # iteration ends after 2 s without a record
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < want and time.monotonic() < deadline:
            records.extend(consumer)
    finally:
        consumer.close()
    return records


def parse_iso(text: str, form: re.Pattern[str] = ISO_UTC) -> datetime:
    """A time from a message, which must be ISO 8601 in UTC in ``form``."""
    assert form.match(text), f"{text!r} is not ISO 8601 in UTC ({form.pattern})"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_kafka_python_consumer_reads_readings_and_predictions_as_documented(pipeline: Pipeline) -> None:
    pipeline.start_server()
    pipeline.start_model()
    sensor = pipeline.sensor_id(1)
    # 1,000,000 is far outside any forecast of the demo data: an anomaly whatever the interval.
    items = [reading(sensor, value) for value in (118.4, 95.25, 1_000_000.0)]
    published = {item.id: item for item in items}
    sent_at = datetime.now(UTC)
    codes = publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in items])
    assert codes == [0, 0, 0], "the broker refused a reading"
    bootstrap = pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"]

    readings = read_as_a_user(bootstrap, pipeline.topics["KAFKA_TOPIC_READINGS"], want=len(items))
    assert sorted(r.value["id"] for r in readings) == sorted(published), "each reading once on analytics"
    for record in readings:
        value = record.value
        item = published[value["id"]]
        assert record.key == sensor.encode(), "the Kafka key is the sensor id"
        assert set(value) == READING_FIELDS
        assert value["sensor"] == sensor
        assert value["ts"] == contract.iso(item.ts) and parse_iso(value["ts"]) <= datetime.now(UTC)
        assert value["v"] == item.v and isinstance(value["v"], float)
        received = parse_iso(value["received_at"])
        assert sent_at - timedelta(seconds=1) <= received <= datetime.now(UTC), "received_at is when the bridge took it"

    results = read_as_a_user(bootstrap, pipeline.topics["KAFKA_TOPIC_RESULTS"], want=len(items))
    assert sorted(r.value["id"] for r in results) == sorted(published), "one prediction per reading"
    identity = load_model(ROOT / "models" / "default.joblib").identity
    for record in results:
        value = record.value
        item = published[value["id"]]
        assert record.key == sensor.encode(), "the Kafka key is the sensor id"
        # scored_at (when the model service scored it) comes too, as in the predictions collection.
        assert set(value) == PREDICTION_FIELDS | {"scored_at"}
        assert value["kind"] == "prediction"
        assert value["sensor"] == sensor
        # ds is the reading's own time, to the millisecond the reading carried.
        assert parse_iso(value["ds"]) == parse_iso(contract.iso(item.ts))
        assert value["v"] == item.v
        bounds = (value["yhat_lower"], value["yhat"], value["yhat_upper"])
        assert all(isinstance(x, float) and math.isfinite(x) for x in bounds)
        assert value["yhat_lower"] <= value["yhat"] <= value["yhat_upper"]
        assert value["anomaly"] is (not value["yhat_lower"] <= item.v <= value["yhat_upper"])
        assert value["model"] == {"name": identity.name, "hash": identity.hash}
        assert parse_iso(value["scored_at"]) >= parse_iso(value["ds"])
    by_value = {r.value["v"]: r.value for r in results}
    assert by_value[1_000_000.0]["anomaly"] is True
