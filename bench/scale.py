"""Benchmark: what it costs to grow (issue #15, item 6): one instance against two, one Kafka broker against three.

Three pairs, each measured in one invocation so its ratio is meaningful on a
shared machine (absolute rates move with the machine's load; the load average
is recorded at the start of every phase). Each pair alternates, one, two, two,
one instances (one, three, one brokers), and compares the means, so a steady
drift in the machine's load falls on both sides; ``--quick`` runs each side once.

- **bridges, 1 vs 2** (``MQTT_SHARE_GROUP``): the bridge alone, MQTT QoS 1 ->
  MongoDB + Kafka, acknowledged after both (``bench.bridge.bridges``). Offered
  load: N readings from 20 sensors, published as fast as Mosquitto acknowledges
  them, which saturates one bridge; the rate is N over the first publish to the
  last reading stored.
- **model services, 1 vs 2** (one consumer group): the model service alone,
  Kafka in -> Kafka out. The replicas start first and the benchmark waits until
  the group is stable with every replica holding a partition; then N readings
  (``bench.scoring.fill_topic``) go into the readings topic at once, and the
  rate is N over the first batch scored to the last prediction produced.
- **Kafka, 1 broker vs 3** (replication factor 3, min.insync.replicas 2, every
  producer acks=all): the whole pipeline, one bridge and one model service
  (``bench.e2e.Pipeline``), on the same Mosquitto and FerretDB; only
  ``KAFKA_BOOTSTRAP_SERVERS`` and the topics' replication differ. The three
  brokers are the Kafka nodes of a second :class:`localstack.stack.Stack`,
  started for their phase on ports of the same port base (base + 192 to + 197,
  or the next free offset). Offered load: N readings from 100 sensors as fast
  as Mosquitto acknowledges; two rates, to the last reading stored (ingest) and
  to the last prediction stored (end to end).

**CPU per reading.** Before each Kafka burst the same pipeline takes a steady
rate (500/s for 30 s; ``--quick`` 300/s for 10 s). Each part's CPU seconds
come from :func:`bench.machine.process_cpu_seconds` of this stack's own
processes (by pid: :class:`bench.machine.CpuMeter`'s groups match command lines
machine-wide, which on a shared machine counts other stacks too; CpuMeter still
gives the machine's busy and idle time and the publishers' CPU), over the
readings stored in that time. "Above idle" subtracts each part's cores with
only the real sensor's 5 readings/s, measured before and after the steady
phase (the lower: just started brokers are busy for a while). CPU seconds are
per process, so they move far less with the machine's load than rates do.

**Correctness at load.** Every phase checks its readings arrived exactly once:
the bridge pair and the Kafka pair count them in MongoDB (a reading's and a
prediction's ``_id`` is the reading id, so a count equal to the number sent
means every one stored, none twice); the model pair, which writes no
MongoDB, counts the records and distinct ids of the predictions topic.

From the figures it also writes the arithmetic of docs/capacity.md
(:func:`capacity_plan`): instances and cores for 10,000 and 100,000 sensors
at one reading a second, as measured here; an extrapolation, which the table says.

Run alone: ``python -m bench.scale [--quick] [--port-base 41000]``; or
``python -m bench --only scale``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import TopicPartition

from bench import bridge
from bench.common import Bench, run_standalone, wait_until
from bench.e2e import SENSORS as E2E_SENSORS
from bench.e2e import Pipeline
from bench.load import publish
from bench.machine import CpuMeter, process_cpu_seconds, stack_pid
from bench.probes import topic_reader
from bench.report import Table, write_result
from bench.scoring import consume_results, fill_topic
from localstack.cluster import kafka_nodes, node_name
from pipeline import contract

if TYPE_CHECKING:
    from localstack.stack import Stack

#: Where the second (three-broker) Kafka cluster may listen, above the stack's own ports: node n of the cluster at
#: base + offset + 2(n - 1). Port bases sit inside Linux's ephemeral range (32768-60999), so any client's
#: outgoing connection may hold one of them for a while: the first offset whose six ports are free is used,
#: and a start that still finds one taken tries the next.
CLUSTER_PORT_OFFSETS = (192, 292, 392, 492, 592, 692)
CLUSTER_BROKERS = 3
#: The servers of the second stack that are started: its Kafka nodes (localstack.cluster names them).
KAFKA_NODES = [node_name(n) for n in range(1, CLUSTER_BROKERS + 1)]
#: Publisher processes of the saturating bursts (bench.bridge's default) and the bridge pair's sensors.
PUBLISHERS = 3
#: Sensors at one reading a second each that the capacity table plans for.
FLEETS = (10_000, 100_000)
#: Run an instance at no more than this share of the throughput measured for it (headroom for bursts,
#: catching up after an outage, and a replica lost).
UTILISATION = 0.5
#: Seconds each part's CPU is measured with no load but the real sensor's 5 readings/s, before the steady phase.
IDLE_S = 10.0
#: Parts that use at most one core an instance: the bridge and the model service (one Python process each;
#: the GIL) and Mosquitto 2.0 (one thread).
SINGLE_CORE = ("bridge", "model service", "Mosquitto")


#: The sensors a burst is split over: the bridge pair's (bench.bridge) and the pipeline's (bench.e2e).
PLAN_SENSORS = (bridge.SENSORS, E2E_SENSORS)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much load each phase gets."""

    readings: int
    steady_rate: float
    steady_s: float


def plan(quick: bool) -> Plan:
    """The phases' sizes: a full run is about 10 minutes on 2 cores, ``--quick`` about 5."""
    return Plan(5_000, 300.0, 10.0) if quick else Plan(20_000, 500.0, 30.0)


def cluster_ports(port_base: int, offset: int = CLUSTER_PORT_OFFSETS[0]) -> dict[str, str]:
    """KAFKA_PORT and KAFKA_CONTROLLER_PORT of the three-broker cluster beside a stack on ``port_base``."""
    return {"KAFKA_PORT": str(port_base + offset), "KAFKA_CONTROLLER_PORT": str(port_base + offset + 1)}


def _free(port: int) -> bool:
    """Whether nothing holds ``port`` on 127.0.0.1, listening or as the local end of a connection."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_nodes_free(port_base: int, offset: int) -> bool:
    ports = cluster_ports(port_base, offset)
    nodes = kafka_nodes(CLUSTER_BROKERS, int(ports["KAFKA_PORT"]), int(ports["KAFKA_CONTROLLER_PORT"]))
    return all(_free(port) for node in nodes for port in (node.port, node.controller_port))


def ratio(two: float, one: float) -> float:
    """How many times ``one``'s rate ``two`` reached (NaN when ``one`` is not a positive number)."""
    return two / one if one > 0 else float("nan")


def cpu_ms_per_reading(cores: float, wall_s: float, readings: float) -> float:
    """CPU milliseconds per reading from a part's mean cores over ``wall_s`` seconds that handled ``readings``."""
    return 1000.0 * cores * wall_s / readings if readings > 0 else float("nan")


def instances_needed(load_per_s: float, per_instance_per_s: float, utilisation: float = UTILISATION) -> int:
    """The fewest instances that carry ``load_per_s`` with none above ``utilisation`` of its throughput.

    At least one. A load that is, within rounding, an exact multiple needs no extra instance.
    """
    if per_instance_per_s <= 0 or not 0 < utilisation <= 1:
        raise ValueError("per-instance throughput must be positive and utilisation in (0, 1]")
    return max(1, math.ceil(load_per_s / (per_instance_per_s * utilisation) - 1e-9))


def cores_needed(load_per_s: float, cpu_ms: float) -> float:
    """Cores a part uses at ``load_per_s`` readings/s when each costs ``cpu_ms`` CPU milliseconds."""
    return load_per_s * cpu_ms / 1000.0


def capacity_plan(
    cpu_ms: Mapping[str, float],
    per_instance: Mapping[str, float],
    single_core: tuple[str, ...] = SINGLE_CORE,
    fleets: tuple[int, ...] = FLEETS,
) -> list[dict[str, Any]]:
    """For each fleet (sensors at 1 reading/s): the cores of every part, and instances of the one-core parts.

    ``cpu_ms``: CPU ms per reading of each part; a part in ``single_core`` (one
    Python process, or Mosquitto's one thread) gets instances of one core each,
    every one at most UTILISATION busy. ``per_instance``: readings/s one instance
    reached alone on this machine, the same count from throughput instead of CPU.
    """
    rows = []
    for sensors in fleets:
        load = float(sensors)
        rows.append(
            {
                "sensors": sensors,
                "readings_per_s": load,
                "cores": {part: cores_needed(load, ms) for part, ms in cpu_ms.items()},
                "instances_by_cpu": {
                    part: instances_needed(load, 1000.0 / cpu_ms[part])
                    for part in single_core
                    if cpu_ms.get(part, 0) > 0
                },
                "instances_by_rate": {part: instances_needed(load, rate) for part, rate in per_instance.items()},
            }
        )
    return rows


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- bridges


def order(quick: bool) -> tuple[int, ...]:
    """Instances in each phase of a pair: 1, 2, 2, 1, so drift on the shared machine falls on both (quick: 1, 2)."""
    return (1, 2) if quick else (1, 2, 2, 1)


def mean_rate(
    results: list[dict[str, Any]], replicas: int, key: str = "readings_per_s", count: str = "replicas"
) -> float:
    """The mean ``key`` of the phases of a pair run with ``replicas`` instances (``count``); NaN if none."""
    rates = [r[key] for r in results if r[count] == replicas]
    return sum(rates) / len(rates) if rates else float("nan")


def kafka_order(quick: bool) -> tuple[int, ...]:
    """Brokers in each phase of the Kafka pair: 1, 3, 1 (the one broker before and after; quick: 1, 3)."""
    return (1, CLUSTER_BROKERS) if quick else (1, CLUSTER_BROKERS, 1)


def bridge_pair(bench: Bench, count: int) -> list[dict[str, Any]]:
    """1 and 2 bridges (:func:`order`), each on ``count`` readings (bench.bridge.bridges); load at each start."""
    results = []
    for replicas in order(bench.quick):
        load = _load()
        print(f"\n[scale] {replicas} bridge(s): {count:,} readings, saturating (load {load}) ...", flush=True)
        result = bridge.bridges(bench, count, PUBLISHERS, replicas)
        result["load_average"] = load
        result["exactly_once"] = result["in_mongodb"] == result["sent"] and result["in_kafka"] == result["sent"]
        results.append(result)
    return results


# --------------------------------------------------------------------------- model services


def _group_stable(bootstrap: str, group: str, members: int) -> bool:
    """Whether ``group`` is stable with ``members`` members, each holding at least one partition."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    except Exception:  # noqa: BLE001 - not there yet; asked again
        return False
    assigned = [m for m in description.members if m.assignment and m.assignment.topic_partitions]
    return description.state == ConsumerGroupState.STABLE and len(assigned) == members


def records_and_ids(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, distinct ``id`` fields) on a new ``topic``, read from its start to its high watermarks."""
    consumer = topic_reader(bootstrap)
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in partitions
        )
        consumer.subscribe([topic])
        ids: set[str] = set()
        records = 0
        deadline = time.monotonic() + 120
        while records < total and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    records += 1
                    ids.add(orjson.loads(message.value() or b"{}").get("id"))
    finally:
        consumer.close()
    return records, len(ids)


def model_phase(bench: Bench, count: int, replicas: int) -> dict[str, Any]:
    """``replicas`` model services in one group, ready and assigned, then ``count`` readings at once."""
    from pipeline.kafka import ensure_pipeline_topics
    from pipeline.settings import KafkaSettings

    namespace = bench.namespace(f"scm{replicas}r")
    bootstrap = bench.env["KAFKA_BOOTSTRAP_SERVERS"]
    topics = namespace.topics
    with namespace.running():
        ensure_pipeline_topics(KafkaSettings.model_validate({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics}))
        models = [namespace.start_model(replica=r + 1) for r in range(replicas)]
        for model in models:
            namespace.wait_ready(model)
        if not wait_until(lambda: _group_stable(bootstrap, f"{namespace.name}-models", replicas), 120.0, 1.0):
            raise RuntimeError(f"the model group never had {replicas} members with partitions")
        load = _load()
        print(f"[scale] {replicas} model service(s): {count:,} readings from Kafka (load {load}) ...", flush=True)
        fill_topic(bootstrap, topics["KAFKA_TOPIC_READINGS"], count)
        results = consume_results(bootstrap, topics["KAFKA_TOPIC_RESULTS"], count, timeout_s=max(300.0, count / 20))
    records, distinct = records_and_ids(bootstrap, topics["KAFKA_TOPIC_RESULTS"])
    if len(results) < count:
        raise RuntimeError(f"only {len(results)} of {count} predictions arrived; logs in {bench.log_dir}")
    first_batch = min(scored for scored, _ in results)
    last_produced = max(produced for _, produced in results)
    return {
        "replicas": replicas,
        "readings": count,
        "readings_per_s": count / (last_produced - first_batch),
        "seconds": last_produced - first_batch,
        "predictions_on_kafka": records,
        "distinct_ids": distinct,
        "exactly_once": records == count and distinct == count,
        "load_average": load,
    }


def model_pair(bench: Bench, count: int) -> list[dict[str, Any]]:
    return [model_phase(bench, count, replicas) for replicas in order(bench.quick)]


# --------------------------------------------------------------------------- Kafka: 1 broker or 3


def _start_cluster(bench: Bench, port_base: int) -> Stack:
    """Start the Kafka nodes of a second stack on the first offset whose ports are free; the stack."""
    from localstack.stack import Stack, StackConfig, StackError

    offsets = [o for o in CLUSTER_PORT_OFFSETS if _cluster_nodes_free(port_base, o)] or list(CLUSTER_PORT_OFFSETS)
    for attempt, offset in enumerate(offsets):
        environ = {
            **os.environ,
            **bench.env,
            "STACK_DIR": tempfile.mkdtemp(prefix="bench-scale-kafka-"),
            "KAFKA_BROKERS": str(CLUSTER_BROKERS),
            **cluster_ports(port_base, offset),
        }
        cluster = Stack(StackConfig.from_env(environ))
        print(f"[scale] starting three Kafka brokers on ports from {port_base + offset} ...", flush=True)
        try:
            cluster.start(KAFKA_NODES)  # (stops what it launched if one fails)
        except StackError as error:
            if "already in use" not in str(error) or attempt == len(offsets) - 1:
                raise
            print("[scale] one of those ports was taken meanwhile; trying the next ones", flush=True)
            continue
        return cluster
    raise AssertionError("unreachable")


@contextmanager
def kafka_cluster(bench: Bench, port_base: int) -> Iterator[tuple[Bench, list[int]]]:
    """A three-broker cluster beside the stack; yields a Bench whose services use it, and the brokers' pids.

    Only the Kafka nodes of a second :class:`localstack.stack.Stack` are started
    (its state in a temporary directory of its own); Mosquitto and FerretDB
    stay the stack's, so only Kafka differs from the one-broker phase.
    """
    started = time.monotonic()
    cluster = _start_cluster(bench, port_base)
    try:
        print(f"[scale] three Kafka brokers ready after {time.monotonic() - started:.0f}s", flush=True)
        env = cluster.service_env()
        replicated = {
            name: env[name]
            for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS")
        }
        pids = [int(cluster.status()[name]["pid"]) for name in KAFKA_NODES]
        yield dataclasses.replace(bench, env={**bench.env, **replicated}), pids
    finally:
        cluster.stop()


def _part_pids(pipeline: Pipeline, kafka_pids: list[int]) -> dict[str, list[int]]:
    """The processes of each part of this pipeline: its own bridge and model service, this stack's servers.

    By pid, not by command line: :class:`bench.machine.CpuMeter` sums every process on
    the machine whose command line matches, which on a shared machine includes other
    stacks' brokers, databases and services.
    """
    state_dir = pipeline.bench.state_dir
    parts: dict[str, list[int | None]] = {
        "Mosquitto": [stack_pid(state_dir, b"mosquitto")],
        "bridge": [pipeline.server.process.pid if pipeline.server.process else None],
        "Kafka": list(kafka_pids),
        "model service": [pipeline.model.process.pid if pipeline.model.process else None],
        "FerretDB": [stack_pid(state_dir, b"ferretdb")],
    }
    return {part: [pid for pid in pids if pid is not None] for part, pids in parts.items()}


def _cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    return {part: sum(process_cpu_seconds(pid) for pid in group) for part, group in pids.items()}


def _idle_cores(pids: dict[str, list[int]]) -> dict[str, float]:
    """Each part's cores over IDLE_S with no load but the real sensor's 5 readings/s."""
    before, started = _cpu_seconds(pids), time.monotonic()
    time.sleep(IDLE_S)
    wall = time.monotonic() - started
    return {part: (used - before[part]) / wall for part, used in _cpu_seconds(pids).items()}


def _steady(pipeline: Pipeline, plan_: Plan, kafka_pids: list[int]) -> dict[str, Any]:
    """Each part's cores idle (only the real sensor's 5/s) and at ``plan_.steady_rate``; CPU ms per reading."""
    pids = _part_pids(pipeline, kafka_pids)
    idle_first = _idle_cores(pids)
    readings_before, _, _ = pipeline.counts()
    before, started = _cpu_seconds(pids), time.monotonic()
    meter = CpuMeter().start()
    phase = pipeline.phase(plan_.steady_rate, plan_.steady_s)
    machine = meter.stop()
    wall = time.monotonic() - started
    cores = {part: (used - before[part]) / wall for part, used in _cpu_seconds(pids).items()}
    for label in ("publishers (simulated sensors)", "machine: busy", "machine: idle", "machine: stolen by the host"):
        cores[label] = machine[label]
    readings_after, _, _ = pipeline.counts()
    stored = readings_after - readings_before
    # Idle before and after: just started brokers are busy for a while (leaders, the offsets topic), so the lower.
    idle_then = _idle_cores(pids)
    idle = {part: min(idle_first[part], idle_then[part]) for part in pids}
    return {
        "rate": plan_.steady_rate,
        "seconds": plan_.steady_s,
        "wall_s": wall,
        "readings_stored": stored,
        "sent": phase["sent"],
        "achieved_rate": phase["achieved_rate"],
        "p99_s": phase["p99_s"],
        "pids": pids,
        "idle_cores": idle,
        "idle_cores_before_and_after": {part: [idle_first[part], idle_then[part]] for part in pids},
        "cores": cores,
        "cpu_ms_per_reading": {
            part: cpu_ms_per_reading(value, wall, stored) for part, value in cores.items() if part in pids
        },
        "cpu_ms_per_reading_above_idle": {
            part: cpu_ms_per_reading(max(0.0, cores[part] - idle[part]), wall, stored) for part in pids
        },
    }


def _burst(pipeline: Pipeline, count: int) -> dict[str, Any]:
    """``count`` readings from the pipeline's sensors as fast as Mosquitto takes them; ingest and end-to-end rate."""
    readings_before, predictions_before, _ = pipeline.counts()
    sensors = pipeline.sensors
    per_sensor = count // len(sensors)
    report = publish(
        pipeline.bench.env, sensors, processes=PUBLISHERS, per_sensor=per_sensor, first=pipeline.next_reading
    )
    pipeline.next_reading += per_sensor + 1
    if report.errors:
        raise RuntimeError(f"publishers failed: {report.errors}")
    stored_at = float("nan")
    deadline = time.monotonic() + max(180.0, count / 20)
    while True:
        readings, predictions, _ = pipeline.counts()
        now = time.time()
        if stored_at != stored_at and readings - readings_before >= report.sent:
            stored_at = now
        if predictions - predictions_before >= report.sent:
            predicted_at = now
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{predictions - predictions_before:.0f} of {report.sent} predictions stored in time")
        time.sleep(0.1)
    return {
        "sent": report.sent,
        "ingest_readings_per_s": report.sent / (stored_at - report.started_at),
        "end_to_end_readings_per_s": report.sent / (predicted_at - report.started_at),
        "seconds": predicted_at - report.started_at,
    }


def stored_once(bench: Bench, sensors: list[str], expected: int) -> dict[str, Any]:
    """Readings and predictions of ``sensors`` in MongoDB (``_id`` = reading id): each should be ``expected``."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(bench.env["MONGO_URI"], serverSelectionTimeoutMS=10_000)
    with client:
        database = client[bench.env["MONGO_DATABASE"]]
        query = {"sensor": {"$in": sensors}}
        readings = database[contract.COLLECTION_READINGS].count_documents(query)
        predictions = database[contract.COLLECTION_PREDICTIONS].count_documents(query)
    return {
        "published": expected,
        "readings_in_mongodb": readings,
        "predictions_in_mongodb": predictions,
        "exactly_once": readings == expected and predictions == expected,
    }


def kafka_phase(bench: Bench, plan_: Plan, brokers: int, kafka_pids: list[int]) -> dict[str, Any]:
    """The pipeline on ``bench``'s Kafka: a steady phase (CPU per reading), then a saturating burst."""
    namespace = bench.namespace(f"sck{brokers}b")
    with namespace.running():
        pipeline = Pipeline(bench, namespace)
        load = _load()
        print(
            f"[scale] Kafka, {brokers} broker(s): {plan_.steady_rate:,.0f} readings/s for {plan_.steady_s:.0f}s "
            f"(CPU per reading; load {load}) ...",
            flush=True,
        )
        steady = _steady(pipeline, plan_, kafka_pids)
        # The real sensor's readings would count toward the burst's: it stops first.
        pipeline.real_sensor.stop()
        burst_load = _load()
        print(
            f"[scale] Kafka, {brokers} broker(s): {plan_.readings:,} readings, saturating (load {burst_load}) ...",
            flush=True,
        )
        burst = _burst(pipeline, plan_.readings)
    check = stored_once(bench, pipeline.sensors, steady["sent"] + burst["sent"])
    return {
        "brokers": brokers,
        "replication": {k: bench.env.get(k, "1") for k in ("KAFKA_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS")},
        "load_average": load,
        "burst_load_average": burst_load,
        "steady": steady,
        "burst": burst,
        "check": check,
        "exactly_once": check["exactly_once"],
    }


def kafka_pair(bench: Bench, plan_: Plan, port_base: int) -> list[dict[str, Any]]:
    """The pipeline on the stack's one broker and on three brokers (RF 3, min.insync 2), as :func:`kafka_order` says."""
    main_broker = stack_pid(bench.state_dir, b"kafka.Kafka")
    results = []
    for brokers in kafka_order(bench.quick):
        if brokers == 1:
            results.append(kafka_phase(bench, plan_, 1, [main_broker] if main_broker else []))
            continue
        with kafka_cluster(bench, port_base) as (cluster_bench, pids):
            results.append(kafka_phase(cluster_bench, plan_, brokers, pids))
    return results


#: The parts of the stack in the CPU table, in pipeline order (CpuMeter's labels).
PARTS = ("Mosquitto", "bridge", "Kafka", "model service", "FerretDB")


def _tables(
    plan_: Plan,
    bridges: list[dict[str, Any]],
    models: list[dict[str, Any]],
    kafka: list[dict[str, Any]],
    capacity: list[dict[str, Any]],
) -> list[Table]:
    """The pairs, the CPU per reading, and the capacity arithmetic."""
    rows: list[list[Any]] = []
    for result in bridges:
        rows.append(
            [
                f"bridge, {result['replicas']} replica(s), alone (MQTT -> MongoDB + Kafka)",
                result["readings_per_s"],
                ratio(result["readings_per_s"], mean_rate(bridges, 1)),
                str(result["load_average"]),
                f"{'yes' if result['exactly_once'] else 'NO'}: {result['in_mongodb']:,} of {result['sent']:,} "
                "in MongoDB",
            ]
        )
    for result in models:
        rows.append(
            [
                f"model service, {result['replicas']} replica(s), alone (Kafka in -> out)",
                result["readings_per_s"],
                ratio(result["readings_per_s"], mean_rate(models, 1)),
                str(result["load_average"]),
                f"{'yes' if result['exactly_once'] else 'NO'}: {result['distinct_ids']:,} of {result['readings']:,} "
                "predictions on Kafka (no MongoDB in this pair)",
            ]
        )
    bursts = [{"brokers": r["brokers"], **r["burst"]} for r in kafka]
    for key, what in (("ingest_readings_per_s", "to reading stored"), ("end_to_end_readings_per_s", "to prediction")):
        for result in kafka:
            check = result["check"]
            rows.append(
                [
                    f"whole pipeline, Kafka {result['brokers']} broker(s), {what}",
                    result["burst"][key],
                    ratio(result["burst"][key], mean_rate(bursts, 1, key, "brokers")),
                    str(result["burst_load_average"]),
                    f"{'yes' if check['exactly_once'] else 'NO'}: {check['readings_in_mongodb']:,} readings and "
                    f"{check['predictions_in_mongodb']:,} predictions of {check['published']:,} in MongoDB",
                ]
            )
    pairs = Table(
        f"What it costs to grow: readings/s at a saturating load ({plan_.readings:,} readings as fast as "
        "Mosquitto takes them), one instance against two, one Kafka broker against three",
        ["configuration", "readings/s", "x one", "load average at start (1, 5, 15 min)", "every reading once"],
        rows,
        [
            f"measured on {os.cpu_count()} cores shared with other work: two instances share the same cores as one, "
            "so a ratio near 1 is the machine's limit, not the service's; ratios are within one run, the rates "
            "move with the load average",
            "three brokers: replication factor 3, min.insync.replicas 2, acks=all, all three on this machine",
            *(
                [
                    f"--quick: bursts of {plan_.readings:,} readings last a second or two and each side runs once, so "
                    "these ratios are mostly noise; take them from a full run"
                ]
                if plan_.readings < plan(quick=False).readings
                else []
            ),
            "x one: against the mean of the same pair's one-instance (one-broker) phases; the pairs run one, two, "
            "two, one instances and one, three, one brokers (--quick: one, two; one, three) so drift on the shared "
            "machine falls on both sides",
        ],
    )
    cpu_rows: list[list[Any]] = []
    for part in PARTS:
        cpu_rows.append(
            [part]
            + [r["steady"]["cpu_ms_per_reading"].get(part, float("nan")) for r in kafka]
            + [r["steady"]["cpu_ms_per_reading_above_idle"].get(part, float("nan")) for r in kafka]
            + [r["steady"]["idle_cores"].get(part, float("nan")) for r in kafka]
        )
    cpu_rows.append(
        ["the pipeline (the five above)"]
        + [sum(r["steady"]["cpu_ms_per_reading"].get(p, 0.0) for p in PARTS) for r in kafka]
        + [sum(r["steady"]["cpu_ms_per_reading_above_idle"].get(p, 0.0) for p in PARTS) for r in kafka]
        + [sum(r["steady"]["idle_cores"].get(p, 0.0) for p in PARTS) for r in kafka]
    )
    publishers = "publishers (simulated sensors)"
    cpu_rows.append(
        [f"{publishers}: the benchmark's load"]
        + [
            cpu_ms_per_reading(r["steady"]["cores"][publishers], r["steady"]["wall_s"], r["steady"]["readings_stored"])
            for r in kafka
        ]
        + [float("nan")] * (2 * len(kafka))
    )
    brokers = [
        f"{r['brokers']} broker(s)" + (" again" if any(o["brokers"] == r["brokers"] for o in kafka[:i]) else "")
        for i, r in enumerate(kafka)
    ]
    cpu = Table(
        f"CPU per reading at a steady {plan_.steady_rate:,.0f} readings/s ({plan_.steady_s:.0f} s), "
        "100 sensors, one bridge, one model service",
        [
            "part",
            *[f"CPU ms/reading, {b}" for b in brokers],
            *[f"above idle, {b}" for b in brokers],
            *[f"idle cores, {b}" for b in brokers],
        ],
        cpu_rows,
        [
            "CPU seconds of this stack's own processes (by pid, bench.machine.process_cpu_seconds; Kafka: the "
            "brokers of that phase) over the readings stored in the same time, drain included; 'above idle' "
            f"subtracts each part's cores in {IDLE_S:.0f} s with only the real sensor's 5 readings/s just before",
            "load average at the start: "
            + "; ".join(f"{b} {r['load_average']}" for b, r in zip(brokers, kafka, strict=True))
            + "; CPU seconds move far less with the machine's load than rates do",
            "FerretDB 1.24 on SQLite stands in for MongoDB",
        ],
    )
    capacity_rows = []
    for row in capacity:
        capacity_rows.append(
            [
                f"{row['sensors']:,} sensors",
                row["readings_per_s"],
                *[row["cores"].get(p, float("nan")) for p in PARTS],
                sum(row["cores"].get(p, 0.0) for p in PARTS),
                *[
                    f"{row['instances_by_cpu'].get(p, '–')} / {row['instances_by_rate'].get(p, '–')}"
                    for p in ("bridge", "model service")
                ],
                row["instances_by_cpu"].get("Mosquitto", "–"),
            ]
        )
    plan_table = Table(
        "Capacity arithmetic for sensors at 1 reading/s (extrapolated from the figures above; docs/capacity.md)",
        [
            "fleet",
            "readings/s",
            *[f"{p} cores" for p in PARTS],
            "cores in all",
            "bridges (by CPU / by rate)",
            "model services (by CPU / by rate)",
            "Mosquitto instances (by CPU)",
        ],
        capacity_rows,
        [
            "cores: CPU ms per reading above idle with three brokers (RF 3) times the rate",
            f"instances by CPU: one core each, at most {UTILISATION:.0%} busy; by rate: at most {UTILISATION:.0%} "
            "of the rate one instance reached alone in this run, on 2 shared cores (so far fewer would do on "
            "cores of their own)",
            "linear extrapolation from 2 shared cores: MongoDB's real cost per write (FerretDB here), Kafka's with "
            "brokers on machines of their own, and the network were not measured",
        ],
    )
    return [pairs, cpu, plan_table]


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """The three pairs, then the tables and bench/results/scale.json; returns the figures."""
    plan_ = plan(bench.quick)
    port_base = int(getattr(args, "port_base", 0) or 0)
    if not port_base:
        raise RuntimeError("bench.scale needs the stack's --port-base for its second Kafka cluster")
    started = time.monotonic()
    load_at_start = _load()
    bridges = bridge_pair(bench, plan_.readings)
    models = model_pair(bench, plan_.readings)
    kafka = kafka_pair(bench, plan_, port_base)
    three = next(r for r in kafka if r["brokers"] == CLUSTER_BROKERS)["steady"]["cpu_ms_per_reading_above_idle"]
    bursts = [{"brokers": r["brokers"], **r["burst"]} for r in kafka]
    capacity = capacity_plan(
        {part: three[part] for part in PARTS if part in three},
        {"bridge": mean_rate(bridges, 1), "model service": mean_rate(models, 1)},
    )
    everything_once = all(r["exactly_once"] for r in (*bridges, *models, *kafka))
    figures = {
        "plan": dataclasses.asdict(plan_),
        "load_average_at_start": load_at_start,
        "minutes": (time.monotonic() - started) / 60,
        "bridges": bridges,
        "model_services": models,
        "kafka": kafka,
        "ratios": {
            "two_bridges_vs_one": ratio(mean_rate(bridges, 2), mean_rate(bridges, 1)),
            "two_model_services_vs_one": ratio(mean_rate(models, 2), mean_rate(models, 1)),
            **{
                f"three_brokers_vs_one_{name}": ratio(
                    mean_rate(bursts, CLUSTER_BROKERS, key, "brokers"), mean_rate(bursts, 1, key, "brokers")
                )
                for name, key in (("ingest", "ingest_readings_per_s"), ("end_to_end", "end_to_end_readings_per_s"))
            },
        },
        "capacity": capacity,
        "utilisation": UTILISATION,
        "every_reading_exactly_once": everything_once,
        "quick": bench.quick,
    }
    write_result(bench.results_dir, "scale", figures, _tables(plan_, bridges, models, kafka, capacity))
    verdict = (
        "every reading stored exactly once in every phase" if everything_once else "SOME READINGS MISSING OR TWICE"
    )
    print(f"\n[scale] correctness: {verdict}; {figures['minutes']:.1f} min", flush=True)
    if not everything_once:
        raise RuntimeError("bench.scale: a phase lost or duplicated readings (see the table above)")
    return figures


def main() -> int:
    """``python -m bench.scale``."""
    return run_standalone("bench.scale", __doc__.splitlines()[0], run)


if __name__ == "__main__":
    raise SystemExit(main())
