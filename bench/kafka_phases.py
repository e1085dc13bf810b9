"""One timed phase of one Kafka client: kafka-python or confluent-kafka producing, or consuming, the records.

Both are set up alike (:mod:`bench.kafka_clients` says how and why) and each is
connected, with the topic's metadata, before its :class:`Meter` starts: a
:class:`Phase` is the client's own work, its wall time and CPU, and the broker's CPU.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.machine import process_cpu_seconds, rusage_cpu_seconds
from bench.probes import topic_reader

logger = logging.getLogger(__name__)

#: The partitions of the pipeline's topics (KAFKA_NUM_PARTITIONS' default).
PARTITIONS = 3
#: Both producers wait this long to fill a batch: the services' ``linger.ms``.
LINGER_MS = 5
#: Both producers fill batches of up to this many bytes per partition: librdkafka's default ``batch.size``.
BATCH_BYTES = 1_000_000
#: A consumer that reads nothing new for this long has stalled: the round fails.
STALL_S = 30.0


def create_topic(bootstrap: str, topic: str) -> None:
    """A fresh topic of PARTITIONS partitions (created the same way for both clients, outside the timing)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]).values():
        future.result(timeout=30)


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
        self._cpu = rusage_cpu_seconds(resource.RUSAGE_SELF)
        self._broker = process_cpu_seconds(self.broker_pid)

    def stop(self, records: int) -> Phase:
        seconds = time.perf_counter() - self._wall
        cpu = rusage_cpu_seconds(resource.RUSAGE_SELF) - self._cpu
        return Phase(records, seconds, cpu, process_cpu_seconds(self.broker_pid) - self._broker)


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
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer = topic_reader(bootstrap)  # a group.id the client requires; assign() joins no group
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
