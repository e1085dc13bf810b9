"""What a benchmark reads from the services it runs: their /metrics, histograms and their quantiles, trends, topics."""

from __future__ import annotations

import statistics
import time
import urllib.request
import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from localstack.services import ServiceProcess


def scrape(process: ServiceProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A service's /metrics as {sample name: [(labels, value), ...]}."""
    url = f"http://127.0.0.1:{process.env['HEALTH_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def metric(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of a sample's values over the series matching ``labels``."""
    return sum(value for series, value in samples.get(name, []) if all(series.get(k) == v for k, v in labels.items()))


def last_stored_at(samples: dict[str, list[tuple[dict[str, str], float]]], sensors: list[str]) -> float:
    """When a bridge last stored a reading of any of ``sensors`` (Unix time, its clock; 0 if none was).

    Exact to the batch, where polling for the stored count is only as fine as
    the poll (and each poll is work for the bridge: it renders its metrics).
    """
    name = "pipeline_sensor_last_stored_timestamp_seconds"
    return max((metric(samples, name, sensor=sensor) for sensor in sensors), default=0.0)


def histogram(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts {upper bound: count} (``name`` without ``_bucket``)."""
    buckets: dict[float, float] = {}
    for series, value in samples.get(f"{name}_bucket", []):
        bound = float(series["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return dict(sorted(buckets.items()))


def histogram_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """Cumulative counts observed between two snapshots of one histogram."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the q-quantile."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets.items():
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            inside = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / inside if inside else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def fraction_within(buckets: dict[float, float], bound: float) -> float:
    """The share of observations at or under ``bound`` (a bucket bound)."""
    total = buckets.get(float("inf"), 0.0)
    return buckets.get(bound, float("nan")) / total if total else float("nan")


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return float("nan")
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return float("nan")
    return 60.0 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def topic_reader(bootstrap: str) -> Consumer:
    """A Kafka consumer in a group of its own: it reads a topic from its start and commits nothing."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


#: What a topic answers while it is being created (the first metadata request creates it).
_NOT_READY = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


class Watermarks:
    """Records on a Kafka topic (the sum of its partitions' high watermarks: the topic is new)."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-peer-watermarks"})

    def count(self, topic: str) -> int:
        """The records on ``topic``; 0 while the topic is being created (no partition leader yet)."""
        for attempt in range(20):
            try:
                metadata = self.consumer.list_topics(topic, timeout=10)
                partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
                return sum(
                    self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                    for p in partitions
                )
            except KafkaException as error:
                if error.args[0].code() not in _NOT_READY or attempt == 19:
                    raise
                time.sleep(0.1)
        return 0

    def close(self) -> None:
        self.consumer.close()


def distinct_ids_in_kafka(bootstrap: str, topic: str, telegraf: bool, prefix: str) -> tuple[int, int]:
    """(records, distinct ids of readings starting with ``prefix``) on ``topic``, read to its high watermark."""
    import orjson

    marks = Watermarks(bootstrap)
    try:
        total = marks.count(topic)
    finally:
        marks.close()
    consumer = topic_reader(bootstrap)
    ids: set[str] = set()
    records = 0
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while records < total and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                value = message.value()
                if message.error() or value is None:
                    continue
                records += 1
                document = orjson.loads(value)
                reading_id = document["fields"]["id"] if telegraf else document["id"]
                if reading_id.startswith(prefix):
                    ids.add(reading_id)
    finally:
        consumer.close()
    return records, len(ids)
