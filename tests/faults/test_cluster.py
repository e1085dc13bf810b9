"""Faults on a Kafka cluster: three brokers, two bridges, two model services, all real, on one local stack.

One module-scoped stack (``KAFKA_BROKERS=3``: kafka, kafka-2, kafka-3, each a
broker and a controller) and one pipeline (bridges ``bridge-1`` and ``bridge-2``
on one shared subscription, model services ``model-1`` and ``model-2`` in one
consumer group) serve every case. Each case streams 20,000 readings from four
sensors of its own and, mid-stream, (a) kills -9 the broker leading most of
the ``analytics`` partitions, (b) kills -9 one bridge, (c) kills -9 one model
service, whose partitions move to the other, or (d) restarts the three
brokers one at a time, each back in every partition's ISR before the next.

After each: every sensor exits 0 (the broker acknowledged every reading), MongoDB
holds exactly one reading and one prediction per id sent, no consumer group has
anything left uncommitted, and the copies per reading id on the ``analytics``,
``analytics_results`` and ``alerts`` topics are only those README's "What happens
when something fails" allows: a bridge killed between Kafka's confirmation and
its acknowledgement (``analytics``, and so the results and alerts of those
readings), a model service killed before its commit (``analytics_results`` and
``alerts``), and after a broker lost or restarted at most 1 % of the ids copied
once (the producers are idempotent with ``acks=all`` and the topics have three
replicas with ``min.insync.replicas=2``, but librdkafka may send again what it
had in flight when a leader moved; see :func:`check_copies`).

PIPELINE_TEST_PORT_BASE + 100 is this stack's port base, so it never meets the
suite's own stack (base + 0).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from localstack.cluster import node_name
from localstack.namespace import free_port
from localstack.testing import throwaway_stack
from pipeline import contract
from tests.conftest import Pipeline, RunningStack, wait_for
from tests.helpers import ARTIFACTS, CLUSTER_STACK_OFFSET, consume, kafka_client, uncommitted

# One pytest-xdist worker runs the whole module: its three brokers are started once for the module.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("cluster")]

SENSORS = 4
PER_SENSOR = 5_000  # 20,000 readings per case
INTERVAL_S = "0.008"
#: This module's stack, away from the suite's (tests/conftest.py uses the base itself).
PORT_BASE = int(os.environ.get("PIPELINE_TEST_PORT_BASE", "21000")) + CLUSTER_STACK_OFFSET
BROKERS = ("kafka", "kafka-2", "kafka-3")
#: Elapsed seconds per case, and the ids with copies per topic, written at the end of the module
#: (artifacts/cluster-timings.txt; the README quotes them).
TIMINGS: dict[str, float] = {}
COPIES: dict[str, dict[str, int]] = {}
#: The topics on which a model service's rebalance (its replica killed, or its group's coordinator lost with a
#: broker) may copy records: it re-scores what it had not committed, as README allows after a model service crash.
REBALANCE_COPIES = ("KAFKA_TOPIC_RESULTS", "KAFKA_TOPIC_ALERTS")
#: After a broker fault, at most this share of the ids may have a copy on a topic (see check_copies).
BROKER_FAULT_COPIES = 0.01


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Three brokers, two bridges, two model services; stopped cleanly (exit 0) at the end."""
    started = time.monotonic()
    state_dir = tmp_path_factory.mktemp("cluster-stack")
    with throwaway_stack(state_dir, PORT_BASE, kafka_brokers=3) as (handle, env):
        with services(RunningStack(handle, env, state_dir), "c", "test_cluster", replicas=2) as pipeline:
            TIMINGS["stack and services up"] = time.monotonic() - started
            yield pipeline
    TIMINGS["module"] = time.monotonic() - started
    report = "cluster fault tests, seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items())
    report += "\nids with copies per topic: " + json.dumps(COPIES)
    (ARTIFACTS / "cluster-timings.txt").write_text(report + "\n")
    sys.stderr.write(f"\n{report}\n")


@contextmanager
def services(stack: RunningStack, prefix: str, log_name: str, replicas: int) -> Iterator[Pipeline]:
    """``replicas`` bridges and model services on ``stack``; stopped at the end, when each must exit 0."""
    pipeline = Pipeline(stack, f"{prefix}{uuid.uuid4().hex[:8]}", ARTIFACTS / "logs" / log_name)
    try:
        for replica in range(1, replicas + 1):
            pipeline.start_server(replica)
            pipeline.start_model(replica)
        yield pipeline
    finally:
        codes = pipeline.stop_all()
    crashed = {n: c for n, c in codes.items() if c not in (0, None)}
    assert not crashed, f"services did not stop cleanly: {crashed}\n{pipeline.logs()}"


def admin(pipeline: Pipeline) -> AdminClient:
    """An admin client of the cluster; librdkafka's complaints about a broker that is down go to logging."""
    config: dict[str, Any] = {**kafka_client(pipeline.stack.env), "logger": logging.getLogger("test_cluster.admin")}
    return AdminClient(config)


def partitions(pipeline: Pipeline, topic: str) -> dict[int, Any]:
    """{partition: PartitionMetadata (leader, replicas, isrs)} of one topic, from the brokers' metadata."""
    metadata = admin(pipeline).list_topics(topic, timeout=10)
    return dict(metadata.topics[topic].partitions)


def all_in_sync(pipeline: Pipeline) -> bool:
    """Every partition of the test's topics and of the offsets topic has all three replicas in its ISR."""
    topics = [*pipeline.topics.values(), "__consumer_offsets"]
    try:
        metadata = admin(pipeline).list_topics(timeout=5)
    except Exception:  # a broker restarting: ask again
        return False
    for topic in topics:
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            return False
        if any(sorted(p.isrs) != [1, 2, 3] or p.leader < 0 for p in described.partitions.values()):
            return False
    return True


def process(pipeline: Pipeline, name: str) -> Any:
    return next(p for p in pipeline.processes if p.name == name)


def acknowledged(ports: list[str]) -> float:
    """Readings the sensors have had acknowledged so far (their own counters: cheaper than counting MongoDB)."""
    total = 0.0
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            continue
        line = next((x for x in text.splitlines() if x.startswith("pipeline_sensor_acknowledged_total ")), "x 0")
        total += float(line.split()[1])
    return total


def copies(pipeline: Pipeline, topic: str, ids: set[str], want: int) -> Counter[str]:
    """Records per reading id of ``ids`` on one of the pipeline's topics (the earlier cases' are skipped)."""
    records = consume(kafka_client(pipeline.stack.env), pipeline.topics[topic], quiet_s=2.0, timeout_s=120, want=want)
    seen: Counter[str] = Counter()
    for record in records:
        reading_id = json.loads(record.value())["id"]
        if reading_id in ids:
            seen[reading_id] += 1
    return seen


def stream_with_fault(
    pipeline: Pipeline,
    case: str,
    fault: Callable[[Pipeline], None],
    doubles_may_reach: tuple[str, ...] = (),
    per_sensor: int = PER_SENSOR,
    interval_s: str = INTERVAL_S,
    recover: Callable[[Pipeline], None] | None = None,
    broker_fault: bool = False,
) -> None:
    """Stream ``SENSORS * per_sensor`` readings (20,000 by default), inject ``fault`` once 3,000 are acknowledged,
    then check every id arrived once.

    ``doubles_may_reach`` names the topics (settings names) on which README allows copies after this fault;
    ``recover``, if given, runs once the stream has outlasted the fault (a killed broker started again).
    ``broker_fault``: a broker was lost or restarted, after which README allows a few copies on any topic
    (at most :data:`BROKER_FAULT_COPIES` of the ids, each at most twice; see :func:`check_copies`).
    """
    started = time.monotonic()
    ports = [str(free_port()) for _ in range(SENSORS)]
    sensors = [
        pipeline.start_sensor(
            f"{case}{n}",
            SENSOR_MAX_READINGS=str(per_sensor),
            SENSOR_INTERVAL_S=interval_s,
            SENSOR_LOOP="false",
            HEALTH_PORT=ports[n - 1],
        )
        for n in range(1, SENSORS + 1)
    ]
    wait_for(lambda: acknowledged(ports) >= 3_000, 120, "3,000 readings acknowledged", pipeline.logs)
    assert all(s.alive for s in sensors), "the stream ended before the fault; raise PER_SENSOR"
    fault(pipeline)
    assert any(s.alive for s in sensors), "the stream ended during the fault; raise PER_SENSOR"
    if recover is not None:
        recover(pipeline)
    for sensor in sensors:
        assert sensor.wait(600) == 0, f"{sensor.name} did not get every reading acknowledged:\n{sensor.log_tail()}"
        pipeline.processes.remove(sensor)

    sensor_ids = [pipeline.sensor_id(f"{case}{n}") for n in range(1, SENSORS + 1)]
    total = SENSORS * per_sensor
    db = pipeline.db
    readings, predictions = db[contract.COLLECTION_READINGS], db[contract.COLLECTION_PREDICTIONS]
    query = {"sensor": {"$in": sensor_ids}}
    wait_for(lambda: readings.count_documents(query) >= total, 300, f"{total} readings", pipeline.logs)
    wait_for(lambda: predictions.count_documents(query) >= total, 300, f"{total} predictions", pipeline.logs)
    kafka = kafka_client(pipeline.stack.env)
    groups = {f"{pipeline.name}-models": "KAFKA_TOPIC_READINGS", f"{pipeline.name}-results": "KAFKA_TOPIC_RESULTS"}
    for group, topic in groups.items():

        def committed(group: str = group, topic: str = pipeline.topics[topic]) -> bool:
            return uncommitted(kafka, group, topic) == 0

        wait_for(committed, 60, f"{group} to commit everything", pipeline.logs)

    reading_ids = [d["_id"] for d in readings.find(query, {"_id": 1})]
    assert len(reading_ids) == len(set(reading_ids)) == total, "exactly one reading per id sent"
    for sensor_id in sensor_ids:
        assert readings.count_documents({"sensor": sensor_id}) == per_sensor, f"{sensor_id} lost or doubled readings"
    prediction_ids = [d["_id"] for d in predictions.find(query, {"_id": 1})]
    assert sorted(prediction_ids) == sorted(reading_ids), "exactly one prediction per reading"
    assert db[contract.COLLECTION_PREDICTION_ERRORS].count_documents(query) == 0

    ids = set(reading_ids)
    on_analytics = copies(pipeline, "KAFKA_TOPIC_READINGS", ids, total)
    assert set(on_analytics) == ids, "every reading reached analytics"
    on_results = copies(pipeline, "KAFKA_TOPIC_RESULTS", ids, total)
    assert set(on_results) == ids, "every reading's prediction reached analytics_results"
    alerts = db[contract.COLLECTION_ALERTS].count_documents(query)
    on_alerts = copies(pipeline, "KAFKA_TOPIC_ALERTS", ids, alerts)
    assert len(on_alerts) == alerts, "one alert record per stored alert"
    seen = {"KAFKA_TOPIC_READINGS": on_analytics, "KAFKA_TOPIC_RESULTS": on_results, "KAFKA_TOPIC_ALERTS": on_alerts}
    found = check_copies(seen, total, doubles_may_reach, broker_fault)
    down = [p.name for p in pipeline.processes if not p.alive]
    assert not down, f"services down after the fault: {down}\n{pipeline.logs()}"
    TIMINGS[case] = time.monotonic() - started
    COPIES[case] = found
    sys.stderr.write(f"\n{case}: {TIMINGS[case]:.0f}s, ids with copies per topic: {found}\n")


def check_copies(
    seen: dict[str, Counter[str]], total: int, doubles_may_reach: tuple[str, ...], broker_fault: bool
) -> dict[str, int]:
    """Fail on copies README does not allow; returns how many ids have copies, per topic.

    A reading copied on analytics is scored twice: its prediction's and alert's copies follow from that one.
    After a broker fault, librdkafka's idempotent producers may send again the few records they had in
    flight when a partition's leader moved (measured: 4 of 24,000 predictions in one rolling restart, none
    in the others): at most BROKER_FAULT_COPIES of the ids, each at most twice, on any topic.
    """
    doubled_readings = {i for i, n in seen["KAFKA_TOPIC_READINGS"].items() if n > 1}
    found: dict[str, int] = {}
    for topic, counts in seen.items():
        doubled = {i: n for i, n in counts.items() if n > 1}
        found[topic] = len(doubled)
        if topic != "KAFKA_TOPIC_READINGS":
            doubled = {i: n for i, n in doubled.items() if i not in doubled_readings}
        if topic in doubles_may_reach:
            continue
        if broker_fault:
            assert len(doubled) <= total * BROKER_FAULT_COPIES, f"{len(doubled)} ids copied on {topic}"
            assert all(n == 2 for n in doubled.values()), f"ids on {topic} three times or more after a broker fault"
        else:
            assert not doubled, f"{len(doubled)} reading ids have copies on {topic} after this fault"
    return found


def test_the_pipelines_topics_have_three_replicas_and_need_two_in_sync(cluster: Pipeline) -> None:
    check_replication(cluster)


def check_replication(cluster: Pipeline) -> None:
    """Every topic of the pipeline, and the offsets topic, on all three brokers; two replicas must confirm a write."""
    for topic in cluster.topics.values():
        for number, partition in partitions(cluster, topic).items():
            assert sorted(partition.replicas) == [1, 2, 3], f"{topic}[{number}] has replicas {partition.replicas}"
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in cluster.topics.values()]
    client = admin(cluster)  # (kept: the futures fail if their client is collected)
    for resource, future in client.describe_configs(resources).items():
        assert future.result(timeout=10)["min.insync.replicas"].value == "2", resource
    offsets = partitions(cluster, "__consumer_offsets")
    assert all(sorted(p.replicas) == [1, 2, 3] for p in offsets.values()), "the offsets topic has three replicas"


def test_kill_the_broker_that_leads_the_analytics_partitions(cluster: Pipeline) -> None:
    kill_the_analytics_leader(cluster, "a")


def kill_the_analytics_leader(pipeline: Pipeline, case: str, per_sensor: int = PER_SENSOR) -> None:
    """Kill -9 the broker leading most ``analytics`` partitions mid-stream, then start it again."""

    def fault(p: Pipeline) -> None:
        leaders = Counter(part.leader for part in partitions(p, p.topics["KAFKA_TOPIC_READINGS"]).values())
        leader = node_name(leaders.most_common(1)[0][0])
        p.stack.stack.kill(leader)
        # Its partitions get new leaders among the two left, and the stream goes on meanwhile.
        wait_for(
            lambda: all(part.leader not in (-1, leaders.most_common(1)[0][0]) for part in _readings(p).values()),
            60,
            "new leaders for the analytics partitions",
            p.logs,
        )
        killed.append(leader)

    def recover(p: Pipeline) -> None:
        p.stack.stack.start_one(killed[0])
        wait_for(lambda: all_in_sync(p), 120, f"{killed[0]} back in every ISR", p.logs)

    killed: list[str] = []
    # The killed broker may have coordinated the model services' group: the group then rebalances and re-scores
    # what it had not committed (up to a second of batches), so predictions and alerts may be copied, as in (c).
    stream_with_fault(
        pipeline,
        case,
        fault,
        per_sensor=per_sensor,
        recover=recover,
        broker_fault=True,
        doubles_may_reach=REBALANCE_COPIES,
    )


def _readings(p: Pipeline) -> dict[int, Any]:
    try:
        return partitions(p, p.topics["KAFKA_TOPIC_READINGS"])
    except Exception:
        return {}


def test_kill_one_bridge(cluster: Pipeline) -> None:
    def fault(p: Pipeline) -> None:
        bridge = process(p, "server-2")
        bridge.kill()
        p.processes.remove(bridge)
        # The same client id: its persistent session holds what it had not acknowledged.
        p.start_server(2)

    stream_with_fault(cluster, "b", fault, doubles_may_reach=("KAFKA_TOPIC_READINGS",))


def test_kill_one_model_service_and_the_other_takes_its_partitions(cluster: Pipeline) -> None:
    group = f"{cluster.name}-models"

    def members(p: Pipeline) -> list[Any]:
        client = admin(p)
        described = client.describe_consumer_groups([group])[group].result(timeout=10)
        return list(described.members)

    def fault(p: Pipeline) -> None:
        model = process(p, "model-2")
        model.kill()
        p.processes.remove(model)

    def one_member_holds_all() -> bool:
        current = members(cluster)
        if len(current) != 1 or current[0].assignment is None:
            return False
        return len(current[0].assignment.topic_partitions) == 3

    # Every prediction arrives with model-2 dead: model-1 took its partitions once the group's session
    # timed out (librdkafka's session.timeout.ms, 45 s), and holds all three.
    stream_with_fault(cluster, "c", fault, doubles_may_reach=REBALANCE_COPIES)
    wait_for(one_member_holds_all, 10, "model-1 to hold every analytics partition", cluster.logs)
    cluster.start_model(2)
    wait_for(lambda: len(members(cluster)) == 2, 60, "model-2 back in the group", cluster.logs)


def test_a_rolling_restart_of_the_three_brokers(cluster: Pipeline) -> None:
    def fault(p: Pipeline) -> None:
        for broker in BROKERS:
            p.stack.stack.stop_one(broker)
            p.stack.stack.start_one(broker)
            wait_for(lambda: all_in_sync(p), 120, f"{broker} back in every ISR", p.logs)

    # 24,000 readings at half the rate: the stream outlasts the three restarts (each a JVM start on 2 cores).
    stream_with_fault(
        cluster, "d", fault, per_sensor=6_000, interval_s="0.02", broker_fault=True, doubles_may_reach=REBALANCE_COPIES
    )
