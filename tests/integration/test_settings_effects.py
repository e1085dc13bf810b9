"""Settings whose effect only the servers can show, with the services as processes on the local stack.

The README's Settings table and the tests for every variable in it are in
tests/unit/test_settings_table.py (EFFECTS); these are the ones a unit test
cannot see: what Kafka and the broker do with what the services ask for.
"""

from __future__ import annotations

import re
from pathlib import Path

import joblib
import pytest
from confluent_kafka.admin import AdminClient

from localstack.namespace import free_port
from localstack.services import ServiceProcess, server_env
from pipeline import contract
from tests.conftest import Pipeline, holds_for, wait_for
from tests.helpers import metric, payload, publish, reading
from tests.unit.models import ConstantModel

pytestmark = pytest.mark.integration


def partitions(pipeline: Pipeline) -> dict[str, int]:
    """How many partitions Kafka gives each of the test's four topics (those that exist)."""
    admin = AdminClient({"bootstrap.servers": pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"]})
    topics = admin.list_topics(timeout=30).topics
    return {name: len(topics[name].partitions) for name in pipeline.topics.values() if name in topics}


def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "flat.joblib"
    joblib.dump({"model": ConstantModel(0.0, 1.0), "metadata": {"name": "flat"}}, path)
    return path


def start_bridge(pipeline: Pipeline, client_id: str, **settings: str) -> ServiceProcess:
    """A bridge of the test's pipeline with ``settings`` the fixture's start_server() fixes (MQTT_SHARE_GROUP)."""
    env = server_env(
        pipeline.stack.env,
        **pipeline.topics,
        MQTT_CLIENT_ID=client_id,
        KAFKA_RESULTS_GROUP_ID=f"{pipeline.name}-results",
        HEALTH_PORT=str(free_port()),
        **settings,
    )
    process = ServiceProcess(client_id, "Server", env, pipeline.log_dir / f"{client_id}.log")
    process.start()
    pipeline.processes.append(process)  # stopped by the fixture
    pipeline.wait_ready(process)
    return process


def test_topics_a_bridge_creates_have_kafka_num_partitions(pipeline: Pipeline) -> None:
    """The stack's Kafka would make a topic of 3 partitions by itself; the bridge makes them with 2."""
    pipeline.start_server(KAFKA_NUM_PARTITIONS="2")
    assert partitions(pipeline) == dict.fromkeys(pipeline.topics.values(), 2)


def test_topics_a_model_service_creates_have_kafka_num_partitions(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.start_model(MODEL_PATH=str(model_file(tmp_path)), KAFKA_NUM_PARTITIONS="5")
    assert partitions(pipeline) == dict.fromkeys(pipeline.topics.values(), 5)


def test_bridges_in_one_share_group_split_the_readings_and_another_group_gets_them_all(pipeline: Pipeline) -> None:
    """MQTT_SHARE_GROUP: two replicas in one group each get a share, a bridge in another group gets every
    reading. MQTT_CLIENT_ID and MQTT_KEEPALIVE_S: what the broker logs for each connection."""
    one, two = pipeline.start_server(1), pipeline.start_server(2)
    other = start_bridge(
        pipeline, f"{pipeline.name}-bridge-3", MQTT_SHARE_GROUP=f"{pipeline.name}-other", MQTT_KEEPALIVE_S="17"
    )
    sensor = pipeline.sensor_id(1)
    items = [reading(sensor, float(i)) for i in range(100)]
    assert (
        publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in items]) == [0] * 100
    )

    def received(process_env: dict[str, str]) -> float:
        return metric(process_env["HEALTH_PORT"], "pipeline_readings_received_total")

    wait_for(
        lambda: received(one.env) + received(two.env) >= 100 and received(other.env) >= 100,
        60,
        "every reading received by the group and by the other group",
        pipeline.logs,
    )
    holds_for(
        lambda: received(one.env) + received(two.env) == 100 and received(other.env) == 100,
        2,
        "each group receiving every reading once",
    )
    shares = received(one.env), received(two.env)
    assert sum(shares) == 100 and min(shares) > 0, f"one group splits the readings: {shares}"
    assert received(other.env) == 100, "another group gets every reading"
    readings = pipeline.db[contract.COLLECTION_READINGS]
    assert readings.count_documents({"sensor": sensor}) == 100

    log = pipeline.stack.stack.log_path("mosquitto").read_text(errors="replace")
    for process, keepalive in ((one, 30), (two, 30), (other, 17)):
        client_id = process.env["MQTT_CLIENT_ID"]
        assert re.search(rf"New client connected from \S+ as {re.escape(client_id)} \(p5, c0, k{keepalive},", log), (
            f"the broker saw no MQTT 5 persistent session of {client_id} with keepalive {keepalive}"
        )


def test_kafka_sees_the_configured_consumer_groups_and_client_ids(pipeline: Pipeline, tmp_path: Path) -> None:
    """KAFKA_GROUP_ID and KAFKA_CLIENT_ID (the model service), KAFKA_RESULTS_GROUP_ID and MQTT_CLIENT_ID (the
    bridge's predictions sink, "<MQTT_CLIENT_ID>-results"), as Kafka's group coordinator reports them."""
    server = pipeline.start_server()
    model = pipeline.start_model(MODEL_PATH=str(model_file(tmp_path)))
    admin = AdminClient({"bootstrap.servers": pipeline.stack.env["KAFKA_BOOTSTRAP_SERVERS"]})

    def members(group: str) -> list[str]:
        description = admin.describe_consumer_groups([group])[group].result(timeout=30)
        return sorted(member.client_id for member in description.members)

    groups = {
        model.env["KAFKA_GROUP_ID"]: [model.env["KAFKA_CLIENT_ID"]],
        server.env["KAFKA_RESULTS_GROUP_ID"]: [f"{server.env['MQTT_CLIENT_ID']}-results"],
    }
    assert len(set(groups)) == 2 and all(pipeline.name in group for group in groups), "the test's own groups"
    for group, client_ids in groups.items():

        def joined(group: str = group, client_ids: list[str] = client_ids) -> bool:
            return members(group) == client_ids

        wait_for(joined, 60, f"{client_ids} in group {group}", pipeline.logs)


def test_the_broker_sends_the_bridge_at_most_server_max_inflight_unacknowledged_readings(pipeline: Pipeline) -> None:
    """With MongoDB unreachable the bridge acknowledges nothing; the broker then holds back all but
    SERVER_MAX_INFLIGHT readings (MQTT 5 Receive Maximum), so the bridge's inbox stays at that bound."""
    unreachable = f"mongodb://nobody:nothing@127.0.0.1:{free_port()}/none"
    server = pipeline.start_server(SERVER_MAX_INFLIGHT="5", MONGO_URI=unreachable)
    sensor = pipeline.sensor_id(1)
    items = [reading(sensor, float(i)) for i in range(30)]
    codes = publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in items])
    assert codes == [0] * 30, "the broker takes every reading into the bridge's session"
    wait_for(
        lambda: metric(server.env["HEALTH_PORT"], "pipeline_bridge_inbox") >= 5,
        30,
        "5 readings in the bridge",
        pipeline.logs,
    )
    holds_for(
        lambda: metric(server.env["HEALTH_PORT"], "pipeline_bridge_inbox") == 5,
        3,
        "the bridge's inbox at SERVER_MAX_INFLIGHT (5)",
        pipeline.logs,
    )
    assert server.alive
