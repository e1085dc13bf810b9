"""What each message becomes in MongoDB and on Kafka, field by field, and what the bridge does on MQTT's callbacks.

Found by mutation testing (`make mutation`): these fields and callbacks were reached by the unit
tests but pinned by none of them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import REGISTRY

from pipeline import contract
from tests.unit.test_orderings import (
    _no_settings_from_the_environment,  # noqa: F401 - the same isolation from the caller's shell
    make_bridge,
)

TS = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 27, 10, 0, 1, tzinfo=UTC)
MODEL = contract.ModelIdentity(name="m", hash="h")


def test_a_reading_as_a_document_and_as_a_message() -> None:
    reading = contract.Reading(id="r-1", sensor="s-1", ts=TS, v=1.5, received_at=RECEIVED, zone="north")
    assert reading.to_document() == {
        "_id": "r-1",
        "sensor": "s-1",
        "ts": TS,
        "v": 1.5,
        "received_at": RECEIVED,
        "zone": "north",
    }
    assert reading.to_message() == {
        "id": "r-1",
        "sensor": "s-1",
        "ts": "2026-11-27T10:00:00.000Z",
        "v": 1.5,
        "received_at": "2026-11-27T10:00:01.000Z",
        "zone": "north",
    }
    bare = contract.Reading(id="r-2", sensor="s-1", ts=TS, v=2.0)
    assert bare.to_document() == {"_id": "r-2", "sensor": "s-1", "ts": TS, "v": 2.0}


def prediction(v: float) -> contract.Prediction:
    return contract.Prediction(
        id="r-1", sensor="s-1", ds=TS, yhat=10.0, yhat_lower=8.0, yhat_upper=12.0, v=v, anomaly=True, model=MODEL,
        scored_at=RECEIVED,
    )  # fmt: skip


def test_a_prediction_and_a_prediction_error_as_documents() -> None:
    assert prediction(11.0).to_document() == {
        "_id": "r-1",
        "sensor": "s-1",
        "ds": TS,
        "yhat": 10.0,
        "yhat_lower": 8.0,
        "yhat_upper": 12.0,
        "v": 11.0,
        "anomaly": True,
        "model": {"name": "m", "hash": "h"},
        "scored_at": RECEIVED,
    }
    error = contract.PredictionError(id="r-2", sensor="s-1", reason="no model", model=MODEL, scored_at=RECEIVED)
    assert error.to_document() == {
        "_id": "r-2",
        "sensor": "s-1",
        "reason": "no model",
        "model": {"name": "m", "hash": "h"},
        "scored_at": RECEIVED,
    }


def test_an_alert_says_which_side_of_the_interval_and_by_how_much() -> None:
    above, below, edge = (contract.Alert.of(prediction(v)) for v in (15.0, 5.0, 12.0))
    assert (above.direction, above.miss) == ("above", 3.0)
    assert (below.direction, below.miss) == ("below", 3.0)
    assert edge.direction == "below", "on the upper bound is not above it"
    assert above.to_document() == {
        "_id": "r-1",
        "sensor": "s-1",
        "ts": TS,
        "v": 15.0,
        "yhat": 10.0,
        "yhat_lower": 8.0,
        "yhat_upper": 12.0,
        "direction": "above",
        "miss": 3.0,
        "model": {"name": "m", "hash": "h"},
        "detected_at": RECEIVED,
    }


# --- the bridge's MQTT callbacks --------------------------------------------------------------


def code(name: str, packet: int = PacketTypes.CONNACK) -> ReasonCode:
    return ReasonCode(packet, name)


def test_on_connect_the_bridge_subscribes_to_its_shared_subscription_at_qos_1_and_tags_the_connection() -> None:
    built = make_bridge(MQTT_SHARE_GROUP="blue")
    bridge, client = built.bridge, built.client
    bridge._on_connect(cast(Any, client), None, SimpleNamespace(session_present=True), code("Success"), None)
    assert bridge.connection == 1
    [topics] = client.subscriptions
    assert [(topic, options.QoS) for topic, options in topics] == [
        ("$share/blue/sensors/+/readings", 1),
        ("$SYS/broker/store/messages/count", 0),
        ("$SYS/broker/store/messages/bytes", 0),
    ]
    assert not bridge.connected.is_set(), "ready only once the broker granted the subscription"
    bridge._on_connect(cast(Any, client), None, SimpleNamespace(session_present=False), code("Not authorized"), None)
    assert bridge.connection == 1 and len(client.subscriptions) == 1, "a refused connection subscribes to nothing"


def test_the_bridge_is_ready_once_subscribed_and_not_after_a_disconnect() -> None:
    built = make_bridge()
    bridge = built.bridge
    granted, refused = code("Granted QoS 1", PacketTypes.SUBACK), code("Not authorized", PacketTypes.SUBACK)
    bridge._on_subscribe(cast(Any, None), None, 1, [refused, granted], None)
    assert not bridge.connected.is_set(), "the readings' subscription refused: not ready"
    bridge._on_subscribe(cast(Any, None), None, 1, [granted, refused], None)
    assert bridge.connected.is_set(), "only $SYS refused: ready, without the broker's queue depth"
    bridge._on_disconnect(cast(Any, None), None, None, code("Unspecified error", PacketTypes.DISCONNECT), None)
    assert not bridge.connected.is_set()


def test_a_message_is_queued_with_the_connection_it_came_on_and_sys_topics_set_gauges() -> None:
    built = make_bridge()
    bridge = built.bridge
    bridge.connection = 3
    message = mock.Mock(_topic=b"sensors/s-1/readings", payload=b"{}", mid=7, qos=1)
    bridge._on_message(cast(Any, None), None, message)
    queued = bridge.inbox.get_nowait()
    assert (queued.topic, queued.connection, queued.mid) == ("sensors/s-1/readings", 3, 7)
    assert queued.received_at.tzinfo is not None and abs((datetime.now(UTC) - queued.received_at).total_seconds()) < 60
    depth = mock.Mock(_topic=b"$SYS/broker/store/messages/count", payload=b"42", mid=0, qos=0)
    bridge._on_message(cast(Any, None), None, depth)
    assert REGISTRY.get_sample_value("pipeline_broker_stored_messages") == 42.0
    assert bridge.inbox.empty(), "a $SYS message is not a reading"
