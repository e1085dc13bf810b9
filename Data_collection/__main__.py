"""Entry point: `python -m Data_collection` replays the CSV as readings over MQTT."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from pydantic import ValidationError

from Data_collection.publisher import Publisher
from Data_collection.settings import Settings
from pipeline import contract, lifecycle, logs, settings
from pipeline.csv_rows import CsvError, read_rows, replay
from pipeline.health import HealthServer

logger = logging.getLogger("Data_collection")

SUMMARY_EVERY_S = 30.0


def main() -> int:
    """Publish readings until the CSV ends (no loop), the limit is reached, or SIGTERM."""
    config = settings.load(Settings)
    logs.setup(config.LOG_LEVEL, "sensor")
    try:
        rows = read_rows(config.SENSOR_CSV, config.SENSOR_VALUE_COLUMN, config.SENSOR_TIMESTAMP_COLUMN)
    except CsvError as error:
        logger.error("cannot read readings: %s", error)
        return 2
    stop = lifecycle.stop_event()
    publisher = Publisher(config)
    health = HealthServer(config.HEALTH_PORT, ready={"mqtt": publisher.connected.is_set})
    health.start()
    if not publisher.start(stop):
        health.stop()
        return 0
    logger.info(
        "sensor %s: %d rows from %s, every %ss, loop=%s",
        config.SENSOR_ID,
        len(rows),
        config.SENSOR_CSV,
        config.SENSOR_INTERVAL_S,
        config.SENSOR_LOOP,
    )
    publisher.resend_spooled(stop)
    sent = 0
    next_at = time.monotonic()
    last_summary = next_at
    try:
        for row in replay(rows, config.SENSOR_LOOP):
            if stop.is_set():
                break
            try:
                reading = contract.Reading(
                    id=contract.new_reading_id(),
                    sensor=config.SENSOR_ID,
                    ts=row.ts or datetime.now(UTC),
                    v=row.value,
                )
            except ValidationError as error:
                logger.warning("%s line %d: %s; row skipped", config.SENSOR_CSV, row.line, error.errors()[0]["msg"])
                continue
            if not publisher.publish(reading, stop):
                break
            sent += 1
            if config.SENSOR_MAX_READINGS and sent >= config.SENSOR_MAX_READINGS:
                break
            now = time.monotonic()
            if now - last_summary >= SUMMARY_EVERY_S:
                logger.info(
                    "sensor %s: %d readings published, %d awaiting the broker",
                    config.SENSOR_ID,
                    sent,
                    publisher.pending,
                )
                last_summary = now
            if config.SENSOR_INTERVAL_S:
                next_at += config.SENSOR_INTERVAL_S
                stop.wait(max(0.0, next_at - time.monotonic()))
    finally:
        # Give the broker time to acknowledge what is queued; what is left stays
        # in the persistent session only if it reached the broker.
        drained = publisher.drain(timeout_s=60.0 if not stop.is_set() else 10.0)
        publisher.close()
        health.stop()
        logger.info(
            "sensor %s stopped: %d readings published, %d unacknowledged, %d refused by the broker",
            config.SENSOR_ID,
            sent,
            publisher.pending,
            publisher.refused,
        )
    return 0 if drained and not publisher.refused else 1


if __name__ == "__main__":
    raise SystemExit(main())
