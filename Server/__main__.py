"""Entry point: `python -m Server` runs the bridge and the predictions sink."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Producer

from pipeline import contract, lifecycle, logs, settings
from pipeline.health import Dependency, HealthServer
from pipeline.kafka import ensure_pipeline_topics, producer_config
from pipeline.metrics import total
from Server.aggregates import Aggregator
from Server.ingest import Bridge
from Server.results import ResultsSink
from Server.retention import Retention, rules
from Server.settings import Settings
from Server.store import Store
from Server.timeline import Timeline

logger = logging.getLogger("Server")


def main() -> int:
    """Run until SIGTERM: finish the batch in hand, flush, close."""
    config = settings.load(Settings)
    logs.setup(config.LOG_LEVEL, "server")
    stop = lifecycle.stop_event()
    ensure_pipeline_topics(config)
    store = Store(config)
    retention = Retention(store, stop, rules(config))
    try:
        store.ensure_capped(
            contract.COLLECTION_REJECTIONS, config.SERVER_REJECTIONS_MAX_MB * 2**20, "SERVER_REJECTIONS_MAX_MB"
        )
        store.ensure_capped(contract.COLLECTION_ALERTS, config.SERVER_ALERTS_MAX_MB * 2**20, "SERVER_ALERTS_MAX_MB")
        store.ensure_indexes()
        retention.setup()
    except Exception:  # noqa: BLE001 - these bound and speed up storage; their absence must not stop the flow
        logger.exception("could not set up MongoDB's collections and indexes; continuing without them")
    kafka = Dependency("kafka")
    producer = Producer(producer_config(config, config.MQTT_CLIENT_ID, kafka))
    timeline = Timeline(store, stop, every_s=config.SERVER_TIMELINE_EVERY_S, name=config.MQTT_CLIENT_ID)
    aggregator = Aggregator(store, stop, settle_s=config.SERVER_AGGREGATE_SETTLE_S, timeline=timeline)
    bridge = Bridge(config, store, producer, stop, aggregator, kafka)
    sink = ResultsSink(config, store, producer, stop, aggregator, kafka)
    workers = [
        threading.Thread(target=bridge.run, name="bridge"),
        threading.Thread(target=sink.run, name="results"),
        threading.Thread(target=aggregator.run, name="aggregates"),
        threading.Thread(target=timeline.run, name="timeline"),
        threading.Thread(target=retention.run, name="retention"),
    ]

    def summary() -> None:
        logger.info(
            "readings: %d received, %d stored, %d forwarded, %d duplicates, %d rejected; %d results stored",
            total("pipeline_readings_received"),
            total("pipeline_readings_stored"),
            total("pipeline_readings_forwarded"),
            total("pipeline_readings_duplicate"),
            total("pipeline_rejections"),
            total("pipeline_results_stored"),
        )

    # Both answered at start (topics created, indexes checked); batches keep these current.
    bridge.kafka.up()
    bridge.mongo.up()
    health = HealthServer(
        config.HEALTH_PORT,
        ready={"mqtt": bridge.connected.is_set, "mongodb": bridge.mongo, "kafka": bridge.kafka},
        # Alive unless a started worker died (not yet started is fine).
        alive=lambda: all(w.is_alive() or w.ident is None for w in workers),
    )
    health.start()
    try:
        if not bridge.start():
            return 0
        logger.info("server %s running", config.MQTT_CLIENT_ID)
        return lifecycle.supervise(workers, stop, summary)
    finally:
        health.stop()
        bridge.close()
        producer.flush(10)
        store.close()
        logger.info("server %s stopped", config.MQTT_CLIENT_ID)


if __name__ == "__main__":
    raise SystemExit(main())
