"""Benchmark 2, bridge: sustained readings per second from MQTT into both MongoDB and Kafka.

The bridge runs with its guarantees on: a reading is acknowledged to the broker
only after Kafka confirmed it and MongoDB stored it. Several publisher
processes, each driving several simulated sensors (own connection, client id =
sensor id), publish pre-generated readings at QoS 1 as fast as the broker
acknowledges them. Rates are readings handled from the first publish until the
last one was durable:

- **bare subscriber** (the ceiling): a paho subscriber at QoS 1 on the same
  broker, in its own process, doing nothing with the messages; measured before
  and after the bridges (the machine is shared) and averaged;
- **bare subscriber on the bridge's client**: the same on ``pipeline.mqtt.Client``
  (which reads the socket in blocks and decodes the common PUBLISH itself), once,
  between the bridges: what the bridge's own MQTT path costs with nothing behind it;
  and **on gmqtt**, the asyncio client measured as the alternative to paho;
- **bridge, 1 replica** and **bridge, 2 replicas** (distinct MQTT_CLIENT_ID,
  one MQTT_SHARE_GROUP): until the bridges' ``pipeline_readings_stored_total``
  (counted after both Kafka and MongoDB have a reading) reaches the number sent.

A bridge run first warms Kafka up (a just-started broker's JIT costs more CPU
per record); it is reported, not counted in the ratios. Each run's CPU per
reading is measured for every part (publishers, Mosquitto, the subscriber or
bridge, Kafka, FerretDB), which shows what the servers the bridge writes to
cost beside the bare path. Afterwards MongoDB and the Kafka topic are checked
to hold every reading.

Run alone: ``python -m bench.bridge [--quick] [--publishers N]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pymongo import MongoClient

from bench.bare_subscriber import BareSubscriber, ClientName
from bench.common import Bench, run_standalone, wait_until
from bench.load import publish
from bench.machine import CpuMeter
from bench.probes import metric, scrape
from bench.report import Table, write_result
from pipeline import contract

TARGET = 0.8
SENSORS = 20
#: CpuMeter's label for the publisher processes (reaped children: the bare subscriber is one too).
CHILDREN = "publishers (simulated sensors)"
#: The columns of the CPU table: who spends the machine's two cores on the way from publisher to durable.
CPU_PARTS = ("publishers", "Mosquitto", "subscriber or bridge", "Kafka", "FerretDB")


def cpu_ms_per_reading(cores: dict[str, float], wall_s: float, sent: int, receiver: str) -> dict[str, float]:
    """CPU milliseconds per reading of each part (CPU_PARTS) and all of them, from CpuMeter's cores.

    ``receiver`` is the part that received the readings (the bare subscriber's
    own figure, or the bridge's CpuMeter label); the bare subscriber is a reaped
    child too, so it is taken out of the publishers' share by the caller.
    """

    def ms(cores_used: float) -> float:
        return 1000 * cores_used * wall_s / sent

    parts = {
        "publishers": ms(cores.get(CHILDREN, 0.0)),
        "Mosquitto": ms(cores.get("Mosquitto", 0.0)),
        "subscriber or bridge": ms(cores.get(receiver, 0.0)),
        "Kafka": ms(cores.get("Kafka", 0.0)),
        "FerretDB": ms(cores.get("FerretDB", 0.0)),
    }
    return {**parts, "all": sum(parts.values()), "machine busy cores": cores.get("machine: busy", float("nan"))}


def _count_in_kafka(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` (sum of its partitions' high watermarks; the topic is new)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        total = 0
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def ratio_bound(before: dict[str, Any], after: dict[str, Any], bridge: dict[str, Any]) -> float:
    """The bridge's ratio to the bare subscriber if its own process cost what the subscriber's does.

    The bare and bridge runs keep about the same cores busy (1.5-1.8 of two
    here: the table shows it), so each rate is about those cores over the CPU a
    reading costs on its whole way; what remains between the two is Kafka's
    and FerretDB's cost (and the bridge's own beyond a bare subscriber's).
    """
    bare_ms = (before["cpu_ms_per_reading"]["all"] + after["cpu_ms_per_reading"]["all"]) / 2
    subscriber_ms = (
        before["cpu_ms_per_reading"]["subscriber or bridge"] + after["cpu_ms_per_reading"]["subscriber or bridge"]
    ) / 2
    spent = bridge["cpu_ms_per_reading"]
    return float(bare_ms / (spent["all"] - spent["subscriber or bridge"] + subscriber_ms))


def bare(bench: Bench, count: int, publishers: int, *, client: ClientName = "paho") -> dict[str, Any]:
    """The ceiling: a bare QoS 1 subscriber receiving ``count`` readings (on paho, the bridge's client or gmqtt)."""
    namespace = bench.namespace("bare")
    sensors = namespace.sensor_ids(SENSORS)
    subscriber = BareSubscriber(
        bench.env, f"$share/{namespace.name}/{contract.MQTT_READINGS_FILTER}", count, client=client
    )
    subscriber.start()
    meter = CpuMeter().start()
    report = publish(bench.env, sensors, processes=publishers, per_sensor=count // SENSORS)
    got = subscriber.result()
    cores = meter.stop()
    if report.errors or got.error:
        raise RuntimeError(f"bare subscriber run failed: {report.errors} {got.error}")
    # The subscriber was reaped while the meter ran: its whole life is in the children's share, its run is its own.
    cores[CHILDREN] -= got.cpu_s_total / meter.wall_s
    cores["the bare subscriber"] = got.cpu_s / meter.wall_s
    return {
        "readings_per_s": got.received / (got.last_at - report.started_at),
        "received": got.received,
        "sent": report.sent,
        "publish_ack_rate": report.ack_rate,
        "seconds": got.last_at - report.started_at,
        "cpu_ms_per_reading": cpu_ms_per_reading(cores, meter.wall_s, report.sent, "the bare subscriber"),
    }


def bridges(bench: Bench, count: int, publishers: int, replicas: int) -> dict[str, Any]:
    """``replicas`` bridges in one share group storing and forwarding ``count`` readings."""
    namespace = bench.namespace(f"bridge{replicas}r")
    sensors = namespace.sensor_ids(SENSORS)
    with namespace.running():
        servers = [namespace.start_server(replica=r + 1) for r in range(replicas)]
        for server in servers:
            namespace.wait_ready(server)

        def stored() -> float:
            return sum(metric(scrape(s), "pipeline_readings_stored_total") for s in servers)

        meter = CpuMeter().start()
        report = publish(bench.env, sensors, processes=publishers, per_sensor=count // SENSORS)
        if report.errors:
            raise RuntimeError(f"publishers failed: {report.errors}")
        done = wait_until(lambda: stored() >= report.sent, timeout_s=max(120.0, count / 50), every_s=0.2)
        finished = time.time()
        cores = meter.stop()
        if not done:
            raise RuntimeError(f"bridges stored {stored():.0f} of {report.sent}; logs in {bench.log_dir}")
        batches = [scrape(s) for s in servers]
        batch_count = sum(metric(b, "pipeline_bridge_batch_size_count") for b in batches)
        batch_sum = sum(metric(b, "pipeline_bridge_batch_size_sum") for b in batches)
    in_kafka = _count_in_kafka(bench.env["KAFKA_BOOTSTRAP_SERVERS"], namespace.topics["KAFKA_TOPIC_READINGS"])
    client: MongoClient[dict[str, Any]] = MongoClient(bench.env["MONGO_URI"], serverSelectionTimeoutMS=10_000)
    with client:
        in_mongo = client[bench.env["MONGO_DATABASE"]][contract.COLLECTION_READINGS].count_documents(
            {"sensor": {"$in": sensors}}
        )
    return {
        "readings_per_s": report.sent / (finished - report.started_at),
        "sent": report.sent,
        "seconds": finished - report.started_at,
        "publish_ack_rate": report.ack_rate,
        "in_mongodb": in_mongo,
        "in_kafka": in_kafka,
        "mean_batch": batch_sum / batch_count if batch_count else float("nan"),
        "replicas": replicas,
        "cpu_ms_per_reading": cpu_ms_per_reading(cores, meter.wall_s, report.sent, "bridge"),
    }


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Measure the ceiling and the bridges, print and write the table; returns the figures."""
    count = 10_000 if bench.quick else 30_000
    publishers = getattr(args, "publishers", 3)
    print(
        f"\n[bridge] bare subscriber: {count:,} readings from {SENSORS} sensors, {publishers} processes ...", flush=True
    )
    # A just-started Kafka spends more CPU per record for its first minutes (the JIT): the e2e benchmark found 0.25
    # ms falling to 0.09. One unmeasured bridge run first, so the ratios compare a bridge and a warm broker.
    print(f"[bridge] warm-up: 1 bridge replica, {count:,} readings (not in the ratios) ...", flush=True)
    warmup = bridges(bench, count, publishers, 1)
    before = bare(bench, count, publishers)
    results = []
    for replicas in (1, 2):
        print(f"[bridge] {replicas} bridge replica(s): {count:,} readings ...", flush=True)
        results.append(bridges(bench, count, publishers, replicas))
        if replicas == 1:
            print("[bridge] bare subscriber on the bridge's MQTT client ...", flush=True)
            on_bridge_client = bare(bench, count, publishers, client="pipeline")
            print("[bridge] bare subscriber on gmqtt ...", flush=True)
            on_gmqtt = bare(bench, count, publishers, client="gmqtt")
    print("[bridge] bare subscriber again ...", flush=True)
    after = bare(bench, count, publishers)
    ceiling = (before["readings_per_s"] + after["readings_per_s"]) / 2
    one = results[0]["readings_per_s"]
    bound = ratio_bound(before, after, results[0])
    complete = all(r["in_mongodb"] == r["sent"] and r["in_kafka"] == r["sent"] for r in results)
    figures = {
        "bare_subscriber": [before, after],
        "bare_subscriber_readings_per_s": ceiling,
        "bridges": results,
        "warmup": warmup,
        "bridge_vs_bare": one / ceiling,
        "bare_subscriber_on_the_bridges_client": on_bridge_client,
        "bridge_vs_bare_on_the_bridges_client": one / on_bridge_client["readings_per_s"],
        "bare_subscriber_on_gmqtt": on_gmqtt,
        "two_replicas_vs_bare": results[1]["readings_per_s"] / ceiling,
        "every_reading_in_mongodb_and_kafka": complete,
        "bridge_vs_bare_if_the_bridge_cost_what_the_subscriber_costs": bound,
        "targets": {"bridge_vs_bare": {"target": TARGET, "met": one / ceiling >= TARGET}},
        "publisher_processes": publishers,
        "sensors": SENSORS,
        "quick": bench.quick,
    }
    rows: list[list[Any]] = [["bare paho subscriber, QoS 1 (ceiling)", ceiling, 1.0, "–", "–", "–"]]
    rows.append(
        [
            "bare subscriber on the bridge's client (pipeline.mqtt.Client)",
            on_bridge_client["readings_per_s"],
            on_bridge_client["readings_per_s"] / ceiling,
            "–",
            "–",
            "–",
        ]
    )
    rows.append(
        ["bare subscriber on gmqtt 0.8.0", on_gmqtt["readings_per_s"], on_gmqtt["readings_per_s"] / ceiling] + ["–"] * 3
    )
    for result in results:
        rows.append(
            [
                f"bridge, {result['replicas']} replica(s): MongoDB + Kafka, ack after both",
                result["readings_per_s"],
                result["readings_per_s"] / ceiling,
                result["mean_batch"],
                result["in_mongodb"],
                result["in_kafka"],
            ]
        )
    met = "met" if one / ceiling >= TARGET else "NOT met"
    table = Table(
        f"Bridge: sustained readings/s, MQTT QoS 1 -> MongoDB + Kafka ({count:,} readings, {SENSORS} sensors, "
        f"{publishers} publisher processes)",
        ["path", "readings/s", "x bare", "mean batch", "in MongoDB", "in Kafka"],
        rows,
        [
            f"target (1 replica) >= {TARGET}x the bare subscriber: {met} ({one / ceiling:.2f}x)",
            f"against the bare subscriber on the bridge's own MQTT client: "
            f"{figures['bridge_vs_bare_on_the_bridges_client']:.2f}x",
            f"bare subscriber: mean of a run before ({before['readings_per_s']:,.0f}/s) and after "
            f"({after['readings_per_s']:,.0f}/s) the bridges; publishers, broker, bridge, Kafka and FerretDB "
            "share the machine's cores",
        ],
    )
    runs = [("warm-up: bridge, 1 replica (not in the ratios)", warmup), ("bare subscriber, before", before)]
    runs += [(f"bridge, {r['replicas']} replica(s)", r) for r in results]
    runs[3:3] = [("bare subscriber on the bridge's client", on_bridge_client), ("bare subscriber on gmqtt", on_gmqtt)]
    runs.append(("bare subscriber, after", after))
    cpu_table = Table(
        "Bridge: CPU milliseconds per reading of each part, at the rates above",
        ["run", "readings/s", *CPU_PARTS, "all", "machine busy cores"],
        [
            [name, r["readings_per_s"], *(r["cpu_ms_per_reading"][part] for part in CPU_PARTS)]
            + [r["cpu_ms_per_reading"]["all"], r["cpu_ms_per_reading"]["machine busy cores"]]
            for name, r in runs
        ],
        [
            "readings/s x all / 1000 is about the machine's busy cores: the bare and bridge runs keep about the "
            "same cores busy, so each rate is about those cores over the CPU a reading costs on its whole way",
            f"if the bridge's own process cost what the bare subscriber costs, Kafka's and FerretDB's CPU alone "
            f"would hold 1 replica to about {bound:.2f}x the bare subscriber (the target is {TARGET}x)",
        ],
    )
    write_result(bench.results_dir, "bridge", figures, [table, cpu_table])
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark."""
    parser.add_argument(
        "--publishers", type=int, default=3, help="publisher processes of the bridge benchmark (default 3)"
    )


def main() -> int:
    """``python -m bench.bridge``."""
    return run_standalone("bench.bridge", __doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
