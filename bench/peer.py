"""Benchmark: the bridge against a peer, Telegraf, on the same stack in one run; and CPU per reading.

**The peer.** Telegraf 1.37.2 (built by localstack/install.sh with only its
``mqtt_consumer`` input and ``kafka`` output) configured as close to the
bridge's guarantees as it allows: QoS 1, a persistent session (clean session
off, a fixed client id), tracking metrics that acknowledge MQTT only after the
Kafka output has the batch (``max_undelivered_messages``), and ``required_acks
= -1`` (every in-sync replica). It moves readings MQTT -> Kafka and nothing
else: it neither validates them against the contract nor stores them in
MongoDB. The bridge does both and acknowledges only once Kafka confirmed and
MongoDB stored each reading.

**Highest rate.** The same publishers as the bridge benchmark (20 sensors,
several processes, QoS 1, as fast as the broker acknowledges) send N readings;
Telegraf's rate runs until the Kafka topic holds N records (asked every 50 ms,
so its end is up to that late), the bridge's until it stored the last of them
(its own ``pipeline_sensor_last_stored_timestamp_seconds``; its metrics are
asked only every 250 ms, since rendering them is the bridge's work). The two alternate
(Telegraf, bridge, bridge, Telegraf) so drift on the shared machine falls on
both; the ratio is of the means.

**CPU per reading at 1,000/s.** Each side takes 1,000 readings/s from 100
sensors for a phase; CPU seconds of its process (and of the stack's servers)
over the readings moved. The bridge here only ingests (no model service, so no
results to store), which is the part Telegraf does.

Run alone: ``python -m bench.peer [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.common import Bench, run_standalone, wait_until
from bench.load import PublishReport, publish
from bench.machine import CpuMeter, process_cpu_seconds, stack_pid
from bench.namespace import Namespace
from bench.probes import Watermarks, distinct_ids_in_kafka, last_stored_at, metric, scrape
from bench.report import Table, write_result
from bench.telegraf import Telegraf, TelegrafConfig, telegraf_version

SENSORS = 20
PACED_SENSORS = 100
PACED_RATE = 1000
#: The bridge's target against the peer (issue #15): at least Telegraf's rate.
TARGET = 1.0
#: The stack's servers whose CPU the 1,000/s phases count: (name, a marker on its command line).
STACK_SERVERS = {"Mosquitto": b"mosquitto", "Kafka": b"kafka.Kafka", "FerretDB": b"ferretdb"}


def _wait_count(
    counter: Callable[[], float], target: int, timeout_s: float, alive: Callable[[], bool], every_s: float = 0.05
) -> float:
    """Poll ``counter`` every ``every_s`` until it reaches ``target``; the wall-clock time then (else RuntimeError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if counter() >= target:
            return time.time()
        if not alive():
            raise RuntimeError("the process under test ended")
        time.sleep(every_s)
    raise RuntimeError(f"reached {counter():.0f} of {target} within {timeout_s:.0f}s")


def _wait_subscribed(bench: Bench, namespace: Namespace, telegraf: Telegraf, marks: Watermarks) -> int:
    """Publish a probe reading until one has come through Telegraf into Kafka; the topic's count then.

    Telegraf says nothing when it has subscribed (its log is quiet), and a
    reading published before that is not for its session: the probe shows it.
    """
    probe = namespace.sensor_ids(1, prefix="probe")
    deadline = time.monotonic() + 90
    sent = 0
    while time.monotonic() < deadline:
        if not telegraf.alive():
            raise RuntimeError("telegraf exited")
        publish(bench.env, probe, processes=1, per_sensor=1, first=sent)
        sent += 1
        if wait_until(lambda: marks.count(telegraf.topic) >= 1, timeout_s=3.0, every_s=0.1):
            time.sleep(0.5)  # a probe still on its way lands before the measurement
            return marks.count(telegraf.topic)
    raise RuntimeError("no probe reading came through Telegraf into Kafka within 90 s")


def _saturated(report: PublishReport, finished: float, cpu: float, records: int, distinct: int) -> dict[str, Any]:
    """One side's highest-rate run: its rate, its CPU per reading, and what Kafka holds of it."""
    return {
        "readings_per_s": report.sent / (finished - report.started_at),
        "sent": report.sent,
        "seconds": finished - report.started_at,
        "cpu_ms_per_reading": 1000 * cpu / report.sent,
        "kafka_records": records,
        "kafka_distinct_ids": distinct,
    }


def telegraf_saturated(bench: Bench, count: int, publishers: int) -> dict[str, Any]:
    """Telegraf's highest rate: ``count`` readings as fast as the broker takes them, until all are in Kafka."""
    namespace = bench.namespace("tgsat")
    telegraf = Telegraf(namespace)
    marks = Watermarks(bench.env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        telegraf.start()
        baseline = _wait_subscribed(bench, namespace, telegraf, marks)
        cpu_before = process_cpu_seconds(telegraf.pid)
        report = publish(bench.env, namespace.sensor_ids(SENSORS), processes=publishers, per_sensor=count // SENSORS)
        if report.errors:
            raise RuntimeError(f"publishers failed: {report.errors}")
        finished = _wait_count(
            lambda: marks.count(telegraf.topic) - baseline, report.sent, max(120.0, count / 50), telegraf.alive
        )
        cpu = process_cpu_seconds(telegraf.pid) - cpu_before
    except RuntimeError as error:
        raise RuntimeError(f"telegraf: {error}; log {telegraf.log_path}:\n{telegraf.log_tail()}") from None
    finally:
        telegraf.stop()
        marks.close()
    records, distinct = distinct_ids_in_kafka(
        bench.env["KAFKA_BOOTSTRAP_SERVERS"], telegraf.topic, telegraf=True, prefix=f"{namespace.name}-s"
    )
    return _saturated(report, finished, cpu, records, distinct)


def bridge_saturated(bench: Bench, count: int, publishers: int) -> dict[str, Any]:
    """The bridge's highest rate: ``count`` readings until every one is in Kafka and stored in MongoDB."""
    namespace = bench.namespace("brsat")
    with namespace.running():
        server = namespace.start_server()
        namespace.wait_ready(server)
        assert server.process is not None
        cpu_before = process_cpu_seconds(server.process.pid)
        sensors = namespace.sensor_ids(SENSORS)
        report = publish(bench.env, sensors, processes=publishers, per_sensor=count // SENSORS)
        if report.errors:
            raise RuntimeError(f"publishers failed: {report.errors}")
        # Scraping is work for the bridge (its metrics page is rendered under the GIL), so it is asked seldom, and
        # the time its last reading was stored comes from the bridge itself.
        _wait_count(
            lambda: metric(scrape(server), "pipeline_readings_stored_total"),
            report.sent,
            max(120.0, count / 50),
            lambda: server.alive,
            every_s=0.25,
        )
        cpu = process_cpu_seconds(server.process.pid) - cpu_before
        finished = last_stored_at(scrape(server), sensors)
        if finished < report.started_at:
            raise RuntimeError("the bridge stored every reading but has no time of the last (its metrics changed?)")
    records, distinct = distinct_ids_in_kafka(
        bench.env["KAFKA_BOOTSTRAP_SERVERS"],
        namespace.topics["KAFKA_TOPIC_READINGS"],
        telegraf=False,
        prefix=f"{namespace.name}-s",
    )
    return _saturated(report, finished, cpu, records, distinct)


def _paced(
    bench: Bench,
    namespace: Namespace,
    pid: int,
    seconds: float,
    arrived: Callable[[], float],
    alive: Callable[[], bool],
) -> dict[str, Any]:
    """PACED_RATE readings/s for ``seconds`` from PACED_SENSORS sensors; CPU per reading of ``pid`` and the servers.

    The servers are this stack's own (found by its directory on their command
    lines): other stacks on a shared machine are not counted.
    """
    servers = {name: stack_pid(bench.state_dir, marker) for name, marker in STACK_SERVERS.items()}
    pids = {"under test": pid, **servers}
    before = arrived()
    load = os.getloadavg()[0]
    started = {name: process_cpu_seconds(p) for name, p in pids.items()}
    machine = CpuMeter().start()
    report = publish(bench.env, namespace.sensor_ids(PACED_SENSORS), processes=4, rate=PACED_RATE, duration_s=seconds)
    if report.errors:
        raise RuntimeError(f"publishers failed: {report.errors}")
    _wait_count(lambda: arrived() - before, report.sent, 120.0, alive)
    used = {name: process_cpu_seconds(p) - started[name] for name, p in pids.items()}
    busy = machine.stop()["machine: busy"]
    return {
        "sent": report.sent,
        "cpu_s": used["under test"],
        "cpu_ms_per_reading": 1000 * used["under test"] / report.sent,
        "servers_cpu_ms_per_reading": {name: 1000 * used[name] / report.sent for name in servers},
        "machine_busy_cores": busy,
        "load_average_1min_before": round(load, 2),
    }


def telegraf_paced(bench: Bench, seconds: float) -> dict[str, Any]:
    namespace = bench.namespace("tgcpu")
    telegraf = Telegraf(namespace)
    marks = Watermarks(bench.env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        telegraf.start()
        _wait_subscribed(bench, namespace, telegraf, marks)
        return _paced(bench, namespace, telegraf.pid, seconds, lambda: marks.count(telegraf.topic), telegraf.alive)
    finally:
        telegraf.stop()
        marks.close()


def bridge_paced(bench: Bench, seconds: float) -> dict[str, Any]:
    namespace = bench.namespace("brcpu")
    with namespace.running():
        server = namespace.start_server()
        namespace.wait_ready(server)
        assert server.process is not None
        return _paced(
            bench,
            namespace,
            server.process.pid,
            seconds,
            lambda: metric(scrape(server), "pipeline_readings_stored_total"),
            lambda: server.alive,
        )


# --------------------------------------------------------------------------- the benchmark


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Telegraf and the bridge alternately at their highest rate, then each at 1,000/s; print and write."""
    count = 10_000 if bench.quick else 30_000
    paced_s = 10.0 if bench.quick else 30.0
    publishers = getattr(args, "publishers", 3)
    order = ["telegraf", "bridge"] if bench.quick else ["telegraf", "bridge", "bridge", "telegraf"]
    load_average = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {"telegraf": [], "bridge": []}
    for side in order:
        print(f"\n[peer] {side}: {count:,} readings from {SENSORS} sensors, {publishers} processes ...", flush=True)
        measure = telegraf_saturated if side == "telegraf" else bridge_saturated
        runs[side].append(measure(bench, count, publishers))
    paced: dict[str, dict[str, Any]] = {}
    for side, measure_paced in (("telegraf", telegraf_paced), ("bridge", bridge_paced)):
        print(f"[peer] {side}: {PACED_RATE:,}/s for {paced_s:.0f}s from {PACED_SENSORS} sensors (CPU) ...", flush=True)
        paced[side] = measure_paced(bench, paced_s)
    telegraf_rate = statistics.fmean(r["readings_per_s"] for r in runs["telegraf"])
    bridge_rate = statistics.fmean(r["readings_per_s"] for r in runs["bridge"])
    ratio = bridge_rate / telegraf_rate
    complete = {side: all(r["kafka_distinct_ids"] == r["sent"] for r in results) for side, results in runs.items()}
    figures = {
        "telegraf_readings_per_s": telegraf_rate,
        "bridge_readings_per_s": bridge_rate,
        "bridge_vs_telegraf": ratio,
        "runs": runs,
        "order": order,
        "paced_1000_per_s": paced,
        "every_reading_in_kafka": complete,
        "what_each_side_does": {
            "telegraf": "MQTT QoS 1 (persistent session, ack after the Kafka write) -> Kafka (required_acks=-1); "
            "no validation, not stored in MongoDB",
            "bridge": "MQTT QoS 1 (persistent session, ack after both) -> validated against the contract -> "
            "Kafka (acks=all, idempotent) + MongoDB (stored, keyed by reading id)",
        },
        "telegraf_config": {
            "qos": TelegrafConfig.qos,
            "persistent_session": True,
            "max_undelivered_messages": TelegrafConfig.max_undelivered,
            "metric_batch_size": TelegrafConfig.batch_size,
            "flush_interval_ms": TelegrafConfig.flush_interval_ms,
            "metric_buffer_limit": TelegrafConfig.buffer_limit,
            "required_acks": -1,
        },
        "telegraf_version": telegraf_version(),
        "targets": {"bridge_vs_telegraf": {"target": TARGET, "met": ratio >= TARGET}},
        "load_average_before": load_average,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "publisher_processes": publishers,
        "sensors": SENSORS,
        "quick": bench.quick,
    }
    rate_rows: list[list[Any]] = []
    for side, label in (
        ("telegraf", f"Telegraf {telegraf_version()}: MQTT -> Kafka (not validated, not stored in MongoDB)"),
        ("bridge", "bridge, 1 replica: MQTT -> validated -> Kafka + MongoDB, ack after both"),
    ):
        results = runs[side]
        rate = telegraf_rate if side == "telegraf" else bridge_rate
        rate_rows.append(
            [
                label,
                rate,
                " / ".join(f"{r['readings_per_s']:,.0f}" for r in results),
                rate / telegraf_rate,
                statistics.fmean(r["cpu_ms_per_reading"] for r in results),
                all(r["kafka_distinct_ids"] == r["sent"] for r in results),
            ]
        )
    met = "met" if ratio >= TARGET else "NOT met"
    rates = Table(
        f"Peer: highest sustained readings/s, {count:,} readings from {SENSORS} sensors at QoS 1, "
        f"{publishers} publisher processes, the same stack and run",
        ["path", "readings/s (mean)", "each run", "x Telegraf", "CPU ms/reading (its process)", "every id in Kafka"],
        rate_rows,
        [
            f"target: the bridge at least Telegraf's rate: {met} ({ratio:.2f}x)",
            f"runs alternate ({', '.join(order)}) on one stack; load average {load_average} before, "
            f"{figures['load_average_after']} after; the machine is shared, so compare the ratio, not the rates",
            "Telegraf: mqtt_consumer qos=1, persistent_session=true, fixed client_id, max_undelivered_messages="
            f"{TelegrafConfig.max_undelivered} (MQTT acknowledged only after the Kafka write); outputs.kafka "
            f"required_acks=-1; metric_batch_size={TelegrafConfig.batch_size}, flush_interval="
            f"{TelegrafConfig.flush_interval_ms}ms. It does not validate readings or store them in MongoDB.",
        ],
    )
    cpu_rows = []
    for side in ("telegraf", "bridge"):
        entry = paced[side]
        servers = entry["servers_cpu_ms_per_reading"]
        cpu_rows.append(
            [
                "Telegraf" if side == "telegraf" else "bridge (ingest only)",
                entry["sent"],
                entry["cpu_ms_per_reading"],
                servers["Mosquitto"],
                servers["Kafka"],
                servers["FerretDB"],
                entry["cpu_ms_per_reading"] + sum(servers.values()),
                entry["machine_busy_cores"],
            ]
        )
    cpu = Table(
        f"Peer: CPU per reading at {PACED_RATE:,} readings/s from {PACED_SENSORS} sensors, {paced_s:.0f} s each",
        [
            "process under test",
            "readings",
            "its CPU ms/reading",
            "Mosquitto ms/reading",
            "Kafka ms/reading",
            "FerretDB ms/reading",
            "together ms/reading",
            "machine busy cores",
        ],
        cpu_rows,
        [
            "CPU = user + system seconds of each process of this stack over the phase (until the last reading "
            "arrived), per reading; the bridge's includes validation and MongoDB's client (FerretDB stores what "
            "it sends), Telegraf validates and stores nothing; the machine's busy cores include other work on it",
        ],
    )
    write_result(bench.results_dir, "peer", figures, [rates, cpu])
    return figures


def main() -> int:
    """``python -m bench.peer``."""
    return run_standalone("bench.peer", __doc__.splitlines()[0], run)


if __name__ == "__main__":
    raise SystemExit(main())
