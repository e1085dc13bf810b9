"""Hostile MQTT clients against the real broker: nobody but the bridge's user can take the bridge's
client id (its session, its queue), the bridge's user publishes nothing, a sensor cannot take
another's session, and a message over the size limit never reaches the bridge.

Mosquitto finds a session by client id alone; the client_owners plugin (mosquitto/plugin/) refuses
a CONNECT whose client id belongs to another user before the broker looks for that session.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from localstack.stack import MOSQUITTO_CONF, MOSQUITTO_PATH_SETTINGS, sensor_accounts
from pipeline import contract
from tests.conftest import Pipeline, RunningStack, holds_for, wait_for
from tests.helpers import connack, consume, payload, publish, reading

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 135
BAD_AUTHENTICATION_METHOD = 140
PACKET_TOO_LARGE = 149
#: mosquitto/mosquitto.conf: max_packet_size.
MAX_PACKET_SIZE = 262144


# --- clients ------------------------------------------------------------------------------


def logins(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Every kind of credential the broker knows: the bridge's, the fleet's, and two sensors' own."""
    own = sensor_accounts(env["MQTT_SENSOR_ACCOUNTS"])
    return {
        "bridge": (env["MQTT_SERVER_USERNAME"], env["MQTT_SERVER_PASSWORD"]),
        "fleet": (env["MQTT_SENSOR_USERNAME"], env["MQTT_SENSOR_PASSWORD"]),
        "own-1": ("own-1", own["own-1"]),
        "own-2": ("own-2", own["own-2"]),
    }


@dataclass
class Held:
    """A client that stays connected, recording its disconnections, PUBACK codes and messages."""

    client: mqtt.Client
    disconnects: list[int] = field(default_factory=list)
    acks: dict[int, int] = field(default_factory=dict)
    received: list[mqtt.MQTTMessage] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    connack_properties: dict[str, Any] = field(default_factory=dict)

    def publish_and_wait(self, topic: str, data: bytes, timeout_s: float = 15.0) -> int:
        """Publish at QoS 1; the PUBACK's reason code, -1 if none came."""
        mid = self.client.publish(topic, data, qos=1).mid
        deadline = time.monotonic() + timeout_s
        while mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks.get(mid, -1)


@contextmanager
def held(env: dict[str, str], client_id: str, login: tuple[str, str], subscribe: str | None = None) -> Iterator[Held]:
    """A connected MQTT 5 client (clean start, session expiry 0) for the length of the block."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(*login)
    state = Held(client)
    connected = threading.Event()
    refused: list[int] = []

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, properties: Any) -> None:
        if rc.is_failure:
            refused.append(rc.value)
        else:
            state.connack_properties.update(properties.json() if properties else {})
            connected.set()
            if subscribe:
                c.subscribe(subscribe, qos=1)

    client.on_connect = on_connect
    client.on_disconnect = lambda _c, _u, _f, rc, _p: state.disconnects.append(rc.value)
    client.on_publish = lambda _c, _u, mid, rc, _p: state.acks.__setitem__(mid, rc.value)
    client.on_subscribe = lambda _c, _u, _m, _codes, _p: state.subscribed.set()
    client.on_message = lambda _c, _u, message: state.received.append(message)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]), clean_start=True, properties=properties)
    client.loop_start()
    try:
        assert connected.wait(10), f"{client_id} could not connect: {refused}"
        if subscribe:
            assert state.subscribed.wait(10), f"{client_id}: no SUBACK"
        yield state
    finally:
        client.disconnect()
        client.loop_stop()


# --- evidence that the bridge was not disturbed -----------------------------------------------


def broker_log(pipeline: Pipeline) -> str:
    return pipeline.stack.stack.log_path("mosquitto").read_text(errors="replace")


def sessions_opened(pipeline: Pipeline, client_id: str) -> int:
    """How many times the broker's log shows ``client_id`` connecting."""
    return len(re.findall(rf"New client connected from \S+ as {re.escape(client_id)} \(", broker_log(pipeline)))


def bridge_connections(server: Any) -> float:
    """The bridge's own count of MQTT connections (the first and every reconnect)."""
    url = f"http://127.0.0.1:{server.env['HEALTH_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^pipeline_connections_total\{server="mqtt"\} (\S+)$', text, re.M)
    assert found, "the bridge's /metrics has no pipeline_connections_total{server=mqtt}"
    return float(found[1])


def stored_once_each(pipeline: Pipeline, ids: list[str]) -> None:
    """Every reading in MongoDB, and once each on the Kafka topic the bridge feeds."""
    readings = pipeline.db[contract.COLLECTION_READINGS]
    wait_for(
        lambda: readings.count_documents({"_id": {"$in": ids}}) == len(ids), 60, "every reading stored", pipeline.logs
    )
    records = consume(pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"], pipeline.topics["KAFKA_TOPIC_READINGS"])
    forwarded = [json.loads(m.value())["id"] for m in records]
    assert sorted(i for i in forwarded if i in set(ids)) == sorted(ids), "each reading once in Kafka"


# --- the bridge's client id -----------------------------------------------------------------

#: Credentials a hostile client may hold that are not the bridge's (None: anonymous).
NOT_THE_BRIDGE = ["fleet", "own-1", "anonymous", "bridge user, wrong password"]


def hostile_login(env: dict[str, str], who: str) -> tuple[str, str] | None:
    if who == "anonymous":
        return None
    if who == "bridge user, wrong password":
        return (env["MQTT_SERVER_USERNAME"], "not-the-password")
    return logins(env)[who]


@pytest.mark.parametrize("who", NOT_THE_BRIDGE)
def test_no_other_credential_can_take_the_bridges_client_id(pipeline: Pipeline, who: str) -> None:
    """Every way in with the bridge's client id is refused, and the connected bridge never notices:
    it is not disconnected, and the readings published meanwhile are each stored once."""
    env = pipeline.stack.env
    server = pipeline.start_server()
    bridge_id = server.env["MQTT_CLIENT_ID"]
    login = hostile_login(env, who)
    opened, connections = sessions_opened(pipeline, bridge_id), bridge_connections(server)
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    sent: list[str] = []
    with held(env, sensor, logins(env)["fleet"]) as publisher:

        def publish_one() -> None:
            item = reading(sensor, float(len(sent)))
            assert publisher.publish_and_wait(topic, payload(item)) == 0
            sent.append(item.id)

        for clean_start in (True, False, True):
            publish_one()
            assert connack(env, bridge_id, login, clean_start=clean_start) == NOT_AUTHORIZED
            publish_one()
        # MQTT 3.1.1 and the websockets listener take the same check; MQTT 5 enhanced
        # authentication, which would skip it, is not offered at all.
        assert connack(env, bridge_id, login, protocol=mqtt.MQTTv311) == NOT_AUTHORIZED
        publish_one()
        assert connack(env, bridge_id, login, websockets=True) == NOT_AUTHORIZED
        publish_one()
        assert connack(env, bridge_id, login, auth_method="SCRAM-SHA-1") == BAD_AUTHENTICATION_METHOD
        publish_one()

    stored_once_each(pipeline, sent)
    assert server.alive
    assert bridge_connections(server) == connections, "the bridge was disconnected"
    assert sessions_opened(pipeline, bridge_id) == opened
    assert f"Client {bridge_id} already connected" not in broker_log(pipeline)


def test_a_clean_start_cannot_drop_the_queue_of_a_stopped_bridge(pipeline: Pipeline) -> None:
    """While the bridge is stopped its persistent session queues the readings; a clean start with its
    client id under any other credential is refused, and the restarted bridge stores every reading."""
    env = pipeline.stack.env
    server = pipeline.start_server()
    bridge_id = server.env["MQTT_CLIENT_ID"]
    assert server.stop() == 0
    sensor = pipeline.sensor_id(1)
    items = [reading(sensor, float(i)) for i in range(40)]
    codes = publish(env, sensor, contract.readings_topic(sensor), [payload(item) for item in items[:20]])
    assert codes == [0] * 20, "the stopped bridge's session takes the readings"
    for who in NOT_THE_BRIDGE:
        assert connack(env, bridge_id, hostile_login(env, who), clean_start=True) == NOT_AUTHORIZED, who
    codes = publish(env, sensor, contract.readings_topic(sensor), [payload(item) for item in items[20:]])
    assert codes == [0] * 20, "the session is still there after the attempts"
    pipeline.start_server()
    stored_once_each(pipeline, [item.id for item in items])


# --- the bridge's user ----------------------------------------------------------------------


def test_the_bridges_user_publishes_nowhere(pipeline: Pipeline) -> None:
    """Not under a sensor's topic, not under its own client id's (which the fleet's pattern would
    grant), nowhere: MQTT 5 PUBACK 135, and nothing reaches the bridge. Nor may it use a client id
    that is not the bridge's."""
    env = pipeline.stack.env
    server = pipeline.start_server()
    bridge = logins(env)["bridge"]
    sensor = pipeline.sensor_id(1)
    my_id = f"{pipeline.name}-bridge-9"
    forged = [reading(sensor, 1.0), reading(my_id, 2.0)]
    topics = {
        contract.readings_topic(sensor): payload(forged[0]),
        contract.readings_topic(my_id): payload(forged[1]),
        f"sensors/{my_id}": b"{}",
        "commands/everyone": b"{}",
        "top-level": b"{}",
        "$SYS/broker/uptime": b"0",
    }
    with held(env, f"{pipeline.name}-bridge-watch", bridge, subscribe="sensors/#") as watcher:
        with held(env, my_id, bridge) as impostor:
            for topic, data in topics.items():
                assert impostor.publish_and_wait(topic, data) == NOT_AUTHORIZED, topic
        honest = reading(sensor, 3.0)
        assert publish(env, sensor, contract.readings_topic(sensor), [payload(honest)]) == [0]
        readings = pipeline.db[contract.COLLECTION_READINGS]
        wait_for(lambda: readings.find_one({"_id": honest.id}), 30, "the honest reading", pipeline.logs)
        wait_for(lambda: watcher.received, 10, "the watcher to see the honest reading")
        holds_for(
            lambda: [m.topic for m in watcher.received] == [contract.readings_topic(sensor)],
            1,
            "only the honest reading",
        )
    assert readings.count_documents({"_id": {"$in": [f.id for f in forged]}}) == 0
    assert pipeline.db[contract.COLLECTION_REJECTIONS].count_documents({"topic": {"$in": list(topics)}}) == 0
    for client_id in (sensor, "own-1", f"{pipeline.name}-anything"):
        assert connack(env, client_id, bridge) == NOT_AUTHORIZED, client_id
    assert server.alive


# --- sensors --------------------------------------------------------------------------------


def test_a_sensor_cannot_take_another_sensors_session(pipeline: Pipeline) -> None:
    """A sensor's own user connects only with its own client id, and no other user can take that id;
    the victims stay connected. The trade-off, pinned here: anyone with the fleet password can take a
    fleet sensor's client id (the broker cannot tell identical replicas apart)."""
    env = pipeline.stack.env
    users = logins(env)
    fleet_sensor = pipeline.sensor_id(1)
    with held(env, "own-2", users["own-2"]) as own_victim, held(env, fleet_sensor, users["fleet"]) as fleet_victim:
        attempts = [
            ("own-2", "own-1"),  # another sensor's own user
            ("own-2", "fleet"),  # the fleet account
            ("own-2", "bridge"),  # the bridge's user
            (fleet_sensor, "own-1"),  # an own user on a fleet sensor's id
            (fleet_sensor, "bridge"),
            (f"{pipeline.name}-unused", "own-1"),  # an own user on any other id
        ]
        for client_id, who in attempts:
            assert connack(env, client_id, users[who]) == NOT_AUTHORIZED, (client_id, who)
            assert connack(env, client_id, users[who], clean_start=False) == NOT_AUTHORIZED, (client_id, who)
        holds_for(
            lambda: own_victim.disconnects == [] and fleet_victim.disconnects == [], 0.5, "no victim disconnected"
        )
        assert own_victim.publish_and_wait(contract.readings_topic("own-2"), b"{}") in (0, 16)

        # A client id may hold '/', which stretches the fleet's pattern (sensors/%c/#) into own-1's
        # topics: the ACL's deny lines still refuse it.
        assert publish(env, "own-1/readings", contract.readings_topic("own-1"), [b"{}"]) == [NOT_AUTHORIZED]

        # The documented trade-off: the fleet account may take a fleet sensor's client id.
        assert connack(env, fleet_sensor, users["fleet"]) == 0
        wait_for(lambda: fleet_victim.disconnects, 10, "the fleet sensor to be taken over")
    assert connack(env, "own-1", users["own-1"]) == 0, "a sensor's own user connects with its own id"


#: Pieces of client ids: the bridge's patterns (bridge-*, *-bridge-*), the own sensors, and noise.
ID_PARTS = ["bridge", "-bridge-", "bridge-", "-bridge", "own-1", "own-2", "own", "-", "/", "x", "1", "_", "."]


def owner_of(env: dict[str, str], client_id: str) -> str | None:
    """Who owns ``client_id``: the model of the client_owners rule ('*' matches any run of characters)."""
    patterns = env["MQTT_SERVER_CLIENT_IDS"].replace(",", " ").split()
    if any(re.fullmatch(".*".join(map(re.escape, p.split("*"))), client_id) for p in patterns):
        return "bridge"
    return client_id if client_id in sensor_accounts(env["MQTT_SENSOR_ACCOUNTS"]) else None


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.sampled_from(ID_PARTS), max_size=5), who=st.sampled_from(["bridge", "fleet", "own-1", "own-2"])
)
@example(parts=["bridge-", "1"], who="fleet")  # the Compose bridge's id
@example(parts=["x", "-bridge-", "1"], who="own-1")  # the tests' bridge ids
@example(parts=["own-2"], who="own-1")
@example(parts=["own-1", "/", "x"], who="fleet")  # not own-1's id (the ACL still denies own-1's topics)
@example(parts=[], who="bridge")  # the broker assigns an id, which is not the bridge's
def test_only_the_owner_of_a_client_id_connects_with_it(stack: RunningStack, parts: list[str], who: str) -> None:
    """Generated client ids against the real broker: a client id that belongs to a user admits only
    that user; a user that owns client ids uses only those; any other id is the fleet's."""
    env = stack.env
    client_id = "".join(parts)
    owner = owner_of(env, client_id)
    if client_id == "":
        owner = None  # the broker assigns one ("auto-<uuid>"), which nobody owns
    owns_some = who in ("bridge", "own-1", "own-2")
    allowed = owner == who or (owner is None and not owns_some)
    assert connack(env, client_id, logins(env)[who]) == (0 if allowed else NOT_AUTHORIZED), (client_id, who)


# --- size limits ----------------------------------------------------------------------------


def test_a_packet_over_the_size_limit_never_reaches_the_bridge(pipeline: Pipeline) -> None:
    """max_packet_size: the broker announces it in CONNACK, accepts a PUBLISH of exactly that size,
    and answers one byte more with DISCONNECT 149 (packet too large), before reading the payload.
    Nothing of it reaches the bridge, and the broker goes on serving everyone else."""
    env = pipeline.stack.env
    server = pipeline.start_server()
    users = logins(env)
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    # Mosquitto's packet size: 1 (header byte) + remaining length (topic length and topic, packet
    # id, properties length 0, payload); the 1-4 bytes that encode the remaining length do not count.
    largest = MAX_PACKET_SIZE - 1 - (2 + len(topic.encode()) + 2 + 1)
    fits, too_big = b"x" * largest, b"y" * (largest + 1)
    honest = reading(sensor, 1.0)
    with held(env, f"{pipeline.name}-bridge-watch", users["bridge"], subscribe=f"sensors/{sensor}/#") as watcher:
        with held(env, sensor, users["fleet"]) as sender:
            assert sender.connack_properties.get("MaximumPacketSize") == MAX_PACKET_SIZE
            assert sender.publish_and_wait(topic, fits) == 0
            sender.client.publish(topic, too_big, qos=1)
            wait_for(lambda: sender.disconnects, 10, "the broker to disconnect the sender")
            assert sender.disconnects[0] == PACKET_TOO_LARGE
        assert publish(env, sensor, topic, [payload(honest)]) == [0]
        readings = pipeline.db[contract.COLLECTION_READINGS]
        wait_for(lambda: readings.find_one({"_id": honest.id}), 30, "the honest reading", pipeline.logs)
        wait_for(lambda: len(watcher.received) >= 2, 10, "the watcher to see the honest reading")
        holds_for(
            lambda: [len(m.payload) for m in watcher.received] == [len(fits), len(payload(honest))],
            1,
            "the watcher seeing the message that fits and the honest reading, nothing else",
        )
    rejected = pipeline.db[contract.COLLECTION_REJECTIONS]
    assert rejected.count_documents({"sha256": hashlib.sha256(too_big).hexdigest()}) == 0
    assert server.alive


# --- the configuration the broker really runs -------------------------------------------------


def test_the_local_broker_runs_composes_settings(stack: RunningStack) -> None:
    """The rendered file the running broker read differs from mosquitto/mosquitto.conf only in paths and listeners."""

    def settings_of(text: str) -> list[str]:
        lines = [line.strip() for line in text.splitlines()]
        local = (*MOSQUITTO_PATH_SETTINGS, "listener", "user")
        return [line for line in lines if line and not line.startswith("#") and line.split()[0] not in local]

    rendered = stack.stack.config.conf_dir("mosquitto") / "mosquitto.conf"
    assert settings_of(rendered.read_text()) == settings_of(MOSQUITTO_CONF.read_text())
    owners = (stack.stack.config.conf_dir("mosquitto") / "owners").read_text()
    assert f"readonly {stack.env['MQTT_SERVER_USERNAME']}" in owners.splitlines()
    for secret in (stack.env["MQTT_SERVER_PASSWORD"], stack.env["MQTT_SENSOR_PASSWORD"]):
        assert secret not in owners
