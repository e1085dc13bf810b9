"""bench.scale's phases and its Kafka pair: one broker against three, the whole pipeline on the same stack.

The three brokers are the Kafka nodes of a second :class:`localstack.stack.Stack`, started
for their phase on ports of the same port base; see :mod:`bench.scale` for what is measured.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bench.capacity import cpu_ms_per_reading
from bench.common import Bench
from bench.e2e import Pipeline
from bench.load import publish
from bench.machine import CpuMeter, process_cpu_seconds, stack_pid
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

#: Seconds each part's CPU is measured with no load but the real sensor's 5 readings/s, before the steady phase.
IDLE_S = 10.0


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


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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
        load = load_average()
        print(
            f"[scale] Kafka, {brokers} broker(s): {plan_.steady_rate:,.0f} readings/s for {plan_.steady_s:.0f}s "
            f"(CPU per reading; load {load}) ...",
            flush=True,
        )
        steady = _steady(pipeline, plan_, kafka_pids)
        # The real sensor's readings would count toward the burst's: it stops first.
        pipeline.real_sensor.stop()
        burst_load = load_average()
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
