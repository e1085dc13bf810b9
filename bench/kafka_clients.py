"""Kafka clients: kafka-python (the design's choice) against confluent-kafka (the services') on one workload.

Both clients, in this one process, one after the other, against the stack's
real Kafka: produce N records the size and shape of a reading on ``analytics``
(``bench.load.payload`` plus the bridge's ``received_at``, keyed by sensor id,
100 sensors, 3 partitions like the pipeline's topics) with ``acks=all`` and
idempotence on, then consume them all from the beginning. Both producers
linger 5 ms (the services' setting), fill batches of up to 1 MB and compress
nothing (the services use lz4; kafka-python would need the lz4 package). Both
consumers take their partitions by ``assign`` from the beginning (no group
join, no committed offsets looked up) and read raw bytes; each is connected,
with the topic's metadata, before its clock starts.

Each phase is timed from its first call (``send``/``produce``; ``assign``) to
the last delivery confirmed (after ``flush``) or the last record read; CPU is
``getrusage(RUSAGE_SELF)`` of this process across the same span (every thread:
kafka-python's sender and fetcher, librdkafka's threads) and the broker's own
CPU from /proc. Every client runs ``--rounds`` times (default 3), interleaved,
each round on fresh topics; the table shows the median of the rounds.

Run alone: ``python -m bench.kafka_clients [--quick] [--records N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import resource
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Bench, run_standalone
from bench.load import payload
from bench.report import Table, write_result
from pipeline import contract

logger = logging.getLogger(__name__)

SENSORS = 100
#: The partitions of the pipeline's topics (KAFKA_NUM_PARTITIONS' default).
PARTITIONS = 3
#: Both producers wait this long to fill a batch: the services' ``linger.ms``.
LINGER_MS = 5
#: Both producers fill batches of up to this many bytes per partition: librdkafka's default ``batch.size``.
BATCH_BYTES = 1_000_000
CLIENTS = ("kafka-python", "confluent-kafka")
#: A consumer that reads nothing new for this long has stalled: the round fails.
STALL_S = 30.0
_TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the workload


def workload(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) records as the bridge writes them to ``analytics``: a reading plus ``received_at``."""
    sensors = [f"{prefix}-s{i}" for i in range(SENSORS)]
    start = datetime.now(UTC)
    records = []
    for n in range(count):
        sensor = sensors[n % SENSORS]
        moment = start + timedelta(milliseconds=n)
        received = contract.iso(moment + timedelta(milliseconds=40)).encode()
        value = payload(sensor, n, moment)[:-1] + b',"received_at":"%s"}' % received
        records.append((sensor.encode(), value))
    return records


def create_topic(bootstrap: str, topic: str) -> None:
    """A fresh topic of PARTITIONS partitions (created the same way for both clients, outside the timing)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]).values():
        future.result(timeout=30)


def kafka_pid(state_dir: Path) -> int | None:
    """The pid of this stack's Kafka (its command line names the stack's directory), None if not found."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"kafka.Kafka" in cmdline and str(state_dir).encode() in cmdline:
            return int(proc.name)
    return None


def _process_cpu(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Phase:
    """One timed phase of one client: wall seconds, this process's CPU seconds, the broker's CPU seconds."""

    records: int
    seconds: float
    cpu_s: float
    broker_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us(self) -> float:
        """This process's CPU per record, in microseconds."""
        return self.cpu_s / self.records * 1e6


class Meter:
    """Wall time, this process's CPU and the broker's CPU between :meth:`start` and :meth:`stop`."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = _own_cpu()
        self._broker = _process_cpu(self.broker_pid)

    def stop(self, records: int) -> Phase:
        seconds = time.perf_counter() - self._wall
        cpu = _own_cpu() - self._cpu
        return Phase(records, seconds, cpu, _process_cpu(self.broker_pid) - self._broker)


# --------------------------------------------------------------------------- kafka-python


def kafka_python_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], meter: Meter) -> Phase:
    """Send every record with kafka-python's KafkaProducer, then flush; every future must have succeeded."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        batch_size=BATCH_BYTES,  # librdkafka's batch.size; kafka-python's default (16 KB) is no faster
        bootstrap_timeout_ms=30_000,  # 3.0's name for api_version_auto_timeout_ms; api_version stays None
    )
    try:
        producer.partitions_for(topic)  # metadata before the clock starts, as confluent-kafka's below
        producer.send(topic, key=b"warm-up", value=b"{}").get(timeout=30)  # the idempotent producer id, too
        meter.start()
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush()
        phase = meter.stop(len(records))
        failed = [f.exception for f in futures if not f.succeeded()]
        if failed:
            raise RuntimeError(f"kafka-python: {len(failed)} records not delivered, e.g. {failed[0]!r}")
        return phase
    finally:
        producer.close(timeout=10)


def kafka_python_consume(bootstrap: str, topic: str, count: int, meter: Meter) -> tuple[Phase, list[bytes]]:
    """Read ``count`` records (after the warm-up record) from the beginning with kafka-python's KafkaConsumer."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        bootstrap_timeout_ms=30_000,
    )
    values: list[bytes] = []
    want = count + 1  # the warm-up record
    try:
        meter.start()
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        last_new = time.monotonic()
        while len(values) < want and time.monotonic() - last_new < STALL_S:
            for batch in consumer.poll(timeout_ms=1000, max_records=10_000).values():
                values.extend(record.value for record in batch)
                last_new = time.monotonic()
        phase = meter.stop(len(values))
    finally:
        consumer.close()
    return phase, values


# --------------------------------------------------------------------------- confluent-kafka


def confluent_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], meter: Meter) -> Phase:
    """Produce every record with confluent-kafka's Producer (serving delivery reports as it goes), then flush."""
    from confluent_kafka import KafkaError, Producer

    delivered = [0]
    errors: list[KafkaError] = []

    def report(error: KafkaError | None, _message: Any) -> None:
        if error is None:
            delivered[0] += 1
        else:
            errors.append(error)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": LINGER_MS,
            "batch.size": BATCH_BYTES,
            "on_delivery": report,
        }
    )
    try:
        producer.list_topics(topic, timeout=30)
        producer.produce(topic, key=b"warm-up", value=b"{}")
        producer.flush(30)
        delivered[0] = 0
        meter.start()
        for index, (key, value) in enumerate(records):
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:  # librdkafka's queue is full: serve delivery reports, then again
                    producer.poll(0.05)
            if index % 1000 == 0:
                producer.poll(0)
        remaining = producer.flush(120)
        phase = meter.stop(len(records))
        if remaining or errors or delivered[0] != len(records):
            raise RuntimeError(
                f"confluent-kafka: {delivered[0]} of {len(records)} delivered, {remaining} left, errors {errors[:3]}"
            )
        return phase
    finally:
        producer.close()


def confluent_consume(bootstrap: str, topic: str, count: int, meter: Meter) -> tuple[Phase, list[bytes]]:
    """Read ``count`` records (after the warm-up record) from the beginning with confluent-kafka's Consumer."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",  # required by the client; assign() joins no group
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    values: list[bytes] = []
    want = count + 1
    try:
        # Connected, with the topic's metadata, before the clock starts, as kafka-python's consumer is after its
        # eager bootstrap (otherwise librdkafka's first connection and metadata lookup, ~0.5 s, are timed).
        consumer.list_topics(topic, timeout=30)
        meter.start()
        # From the beginning, as kafka-python's seek_to_beginning: no committed offsets are looked up.
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        last_new = time.monotonic()
        while len(values) < want and time.monotonic() - last_new < STALL_S:
            # consume() waits for num_messages or the timeout: never ask for more than is left.
            for message in consumer.consume(num_messages=min(10_000, want - len(values)), timeout=1.0):
                if message.error() is None:
                    values.append(message.value() or b"")
                    last_new = time.monotonic()
                else:
                    logger.warning("confluent-kafka consumer: %s", message.error())
        phase = meter.stop(len(values))
    finally:
        consumer.close()
    return phase, values


Produce = Callable[[str, str, list[tuple[bytes, bytes]], Meter], Phase]
Consume = Callable[[str, str, int, Meter], tuple[Phase, list[bytes]]]
IMPLEMENTATIONS: dict[str, tuple[Produce, Consume]] = {
    "kafka-python": (kafka_python_produce, kafka_python_consume),
    "confluent-kafka": (confluent_produce, confluent_consume),
}


# --------------------------------------------------------------------------- the run


def one_round(
    bench: Bench, client: str, records: list[tuple[bytes, bytes]], expected: list[bytes], broker: int | None
) -> dict[str, Phase]:
    """Produce then consume ``records`` on a fresh topic with ``client``; checks every record came back once."""
    bootstrap = bench.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"bench-clients-{client}-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    produce, consume = IMPLEMENTATIONS[client]
    produced = produce(bootstrap, topic, records, Meter(broker))
    consumed, values = consume(bootstrap, topic, len(records), Meter(broker))
    warm_up = values.count(b"{}")
    values = [value for value in values if value != b"{}"]
    if warm_up != 1 or sorted(values) != expected:
        raise RuntimeError(
            f"{client}: read {len(values)} records and {warm_up} warm-up record(s) back from {topic}, "
            f"not the {len(records)} produced and 1"
        )
    consumed.records = len(values)
    return {"produce": produced, "consume": consumed}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Both clients, ``rounds`` times each, interleaved; print and write the table; returns the figures."""
    count = getattr(args, "records", 0) or (20_000 if bench.quick else 100_000)
    rounds = getattr(args, "rounds", 0) or 3
    if _version("kafka-python") == "not installed":
        raise RuntimeError("kafka-python is not installed: pip install -r requirements-dev.txt")
    # kafka-python 3.0 warns whenever one step of its I/O loop runs over 100 ms, which its pure-Python record
    # encoding does under this load: the throughput below says the same, once.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    records = workload(bench.namespace("kc").name, count)
    expected = sorted(value for _key, value in records)
    size = statistics.fmean(len(value) for _key, value in records)
    broker = kafka_pid(bench.state_dir)
    print(
        f"\n[kafka_clients] {count:,} records of {size:.0f} bytes, acks=all, idempotent, "
        f"{rounds} round(s) per client ...",
        flush=True,
    )
    measured: dict[str, list[dict[str, Phase]]] = {client: [] for client in CLIENTS}
    for index in range(rounds):
        order = CLIENTS if index % 2 == 0 else tuple(reversed(CLIENTS))
        for client in order:
            result = one_round(bench, client, records, expected, broker)
            measured[client].append(result)
            print(
                f"[kafka_clients] round {index + 1}, {client}: produce {result['produce'].per_s:,.0f}/s, "
                f"consume {result['consume'].per_s:,.0f}/s",
                flush=True,
            )

    def median(client: str, phase: str, value: Callable[[Phase], float]) -> float:
        return statistics.median(value(r[phase]) for r in measured[client])

    summary: dict[str, dict[str, float]] = {}
    for client in CLIENTS:
        summary[client] = {
            "produce_per_s": median(client, "produce", lambda p: p.per_s),
            "consume_per_s": median(client, "consume", lambda p: p.per_s),
            "produce_cpu_us_per_record": median(client, "produce", lambda p: p.cpu_us),
            "consume_cpu_us_per_record": median(client, "consume", lambda p: p.cpu_us),
            "produce_broker_cpu_us_per_record": median(client, "produce", lambda p: p.broker_cpu_s / p.records * 1e6),
            "consume_broker_cpu_us_per_record": median(client, "consume", lambda p: p.broker_cpu_s / p.records * 1e6),
        }
        # A reading crosses Kafka four times: the bridge produces it and the model service consumes it, the
        # model service produces its prediction and the bridge consumes that (alerts come on top).
        summary[client]["pipeline_cpu_us_per_reading"] = 2 * (
            summary[client]["produce_cpu_us_per_record"] + summary[client]["consume_cpu_us_per_record"]
        )
    slow, fast = summary["kafka-python"], summary["confluent-kafka"]
    ratio = {
        "produce_per_s": fast["produce_per_s"] / slow["produce_per_s"],
        "consume_per_s": fast["consume_per_s"] / slow["consume_per_s"],
        "produce_cpu": slow["produce_cpu_us_per_record"] / fast["produce_cpu_us_per_record"],
        "consume_cpu": slow["consume_cpu_us_per_record"] / fast["consume_cpu_us_per_record"],
    }
    versions = {
        "kafka-python": _version("kafka-python"),
        "confluent-kafka": _version("confluent-kafka"),
    }
    from confluent_kafka import libversion

    versions["librdkafka"] = libversion()[0]
    figures: dict[str, Any] = {
        "records": count,
        "mean_record_bytes": size,
        "partitions": PARTITIONS,
        "linger_ms": LINGER_MS,
        "rounds": rounds,
        "clients": versions,
        "median": summary,
        "confluent_over_kafka_python": ratio,
        "every_round": {
            client: [{k: asdict(v) for k, v in r.items()} for r in runs] for client, runs in measured.items()
        },
        "quick": bench.quick,
    }
    names = {
        "kafka-python": f"kafka-python {versions['kafka-python']}",
        "confluent-kafka": f"confluent-kafka {versions['confluent-kafka']} (librdkafka {versions['librdkafka']})",
    }
    rows: list[list[Any]] = [
        [
            names[client],
            summary[client]["produce_per_s"],
            summary[client]["consume_per_s"],
            summary[client]["produce_cpu_us_per_record"],
            summary[client]["consume_cpu_us_per_record"],
            summary[client]["pipeline_cpu_us_per_reading"],
        ]
        for client in CLIENTS
    ]
    rows.append(
        [
            "confluent-kafka over kafka-python (CPU: kafka-python over confluent-kafka)",
            f"{ratio['produce_per_s']:.1f}x",
            f"{ratio['consume_per_s']:.1f}x",
            f"{ratio['produce_cpu']:.1f}x",
            f"{ratio['consume_cpu']:.1f}x",
            f"{slow['pipeline_cpu_us_per_reading'] / fast['pipeline_cpu_us_per_reading']:.1f}x",
        ]
    )
    table = Table(
        f"Kafka clients: {count:,} records of {size:.0f} bytes (an analytics record), acks=all, idempotent, "
        f"{PARTITIONS} partitions, one broker on loopback; median of {rounds} round(s)",
        [
            "client",
            "produce records/s",
            "consume records/s",
            "produce CPU µs/record",
            "consume CPU µs/record",
            "CPU µs per reading, 4 hops",
        ],
        rows,
        [
            f"both producers linger {LINGER_MS} ms, batch up to {BATCH_BYTES:,} bytes and compress nothing; both "
            "consumers assign the partitions from the beginning (no group join) and read raw bytes",
            "CPU: getrusage of the benchmark's process (all its threads) over each phase; the 4 hops are the "
            "bridge producing a reading, the model service consuming it, producing its prediction and the "
            "bridge consuming that",
            "broker CPU per record (µs), produce / consume: "
            + "; ".join(
                f"{client} {summary[client]['produce_broker_cpu_us_per_record']:.1f} / "
                f"{summary[client]['consume_broker_cpu_us_per_record']:.1f}"
                for client in CLIENTS
            ),
        ],
    )
    round_rows: list[list[Any]] = [
        [client, index + 1, r["produce"].per_s, r["consume"].per_s, r["produce"].cpu_us, r["consume"].cpu_us]
        for client in CLIENTS
        for index, r in enumerate(measured[client])
    ]
    every = Table(
        "Kafka clients: every round (rounds interleaved, each on fresh topics)",
        ["client", "round", "produce records/s", "consume records/s", "produce CPU µs/record", "consume CPU µs/record"],
        round_rows,
    )
    write_result(bench.results_dir, "kafka_clients", figures, [table, every])
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark."""
    parser.add_argument(
        "--records", type=int, default=0, help="records per client and round (default 100,000; --quick 20,000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per client, interleaved (default 3)")


def main() -> int:
    """``python -m bench.kafka_clients``."""
    return run_standalone("bench.kafka_clients", __doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
