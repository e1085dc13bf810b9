"""Prometheus metrics every service shares, and a consumer-lag probe for Kafka consumers.

Service-specific metrics live in each service's ``metrics.py``; all names start
with ``pipeline_``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge

logger = logging.getLogger(__name__)

CONNECTED = Gauge("pipeline_connected", "1 while connected to the server", ["server"])
RECONNECTS = Counter("pipeline_connections", "Connections established (the first and every reconnect)", ["server"])
CONSUMER_LAG = Gauge("pipeline_consumer_lag", "Kafka records not yet consumed by this replica", ["topic"])
#: Each /readyz check (mqtt, mongodb, kafka, model): 1 passing, 0 failing. pipeline.health evaluates the
#: checks at every scrape of /metrics, so the value is the check's answer then, /readyz asked or not.
READY = Gauge("pipeline_ready", "1 while the /readyz check passes, 0 while it fails", ["check"])

#: How often a consumer measures its lag (it asks the broker).
LAG_EVERY_S = 5.0


class LagProbe:
    """Measures a confluent-kafka consumer's lag over its assigned partitions, at most every LAG_EVERY_S.

    It reads the high watermarks librdkafka caches from every fetch response
    instead of asking the broker: a synchronous query per partition held the
    consuming thread (the bridge's predictions sink, the scorer) for up to a
    second every LAG_EVERY_S under load, which showed as latency spikes.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._last = 0.0

    def maybe_measure(self, consumer: Any) -> None:
        """Update ``pipeline_consumer_lag`` if it is time; never raises, never waits for the broker."""
        now = time.monotonic()
        if now - self._last < LAG_EVERY_S:
            return
        self._last = now
        try:
            lag = 0
            for partition in consumer.position(consumer.assignment()):
                low, high = consumer.get_watermark_offsets(partition, cached=True)
                position = partition.offset if partition.offset >= 0 else low
                if high >= 0 and position >= 0:  # negative: nothing fetched from this partition yet
                    lag += max(0, high - position)
            CONSUMER_LAG.labels(self.topic).set(lag)
        except Exception as error:  # noqa: BLE001 - a metric must never stop the consumer
            logger.debug("could not measure lag of %s: %s", self.topic, error)


def total(name: str) -> float:
    """The sum of a counter's samples over all its labels (``name`` without ``_total``), for log summaries."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == name
        for sample in family.samples
        if sample.name == f"{name}_total"
    )
