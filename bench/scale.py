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
(:func:`bench.capacity.capacity_plan`): instances and cores for 10,000 and 100,000 sensors
at one reading a second, as measured here; an extrapolation, which the table says.

Run alone: ``python -m bench.scale [--quick] [--port-base 41000]`` (or ``python -m bench --only scale``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import TopicPartition

from bench import bridge
from bench.common import Bench, run_standalone, wait_until
from bench.e2e import SENSORS as E2E_SENSORS
from bench.machine import PARTS
from bench.probes import topic_reader
from bench.report import Table, write_result
from bench.scoring import consume_results, fill_topic

if TYPE_CHECKING:
    pass

from bench.capacity import UTILISATION, capacity_plan, cpu_ms_per_reading, ratio
from bench.scale_kafka import (
    CLUSTER_BROKERS,
    IDLE_S,
    PUBLISHERS,
    Plan,
    kafka_pair,
    load_average,
    mean_rate,
    order,
    plan,
)

#: The sensors a burst is split over: the bridge pair's (bench.bridge) and the pipeline's (bench.e2e).
PLAN_SENSORS = (bridge.SENSORS, E2E_SENSORS)


# --------------------------------------------------------------------------- bridges


def bridge_pair(bench: Bench, count: int) -> list[dict[str, Any]]:
    """1 and 2 bridges (:func:`order`), each on ``count`` readings (bench.bridge.bridges); load at each start."""
    results = []
    for replicas in order(bench.quick):
        load = load_average()
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
        load = load_average()
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
    load_at_start = load_average()
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
