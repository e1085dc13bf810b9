"""Entry point: `python -m Models_analysis` scores readings from Kafka until stopped."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Producer

from Models_analysis.model import ModelError
from Models_analysis.registry import ModelRegistry
from Models_analysis.scorer import Scorer
from Models_analysis.settings import Settings
from pipeline import lifecycle, logs, settings
from pipeline.health import Dependency, HealthServer
from pipeline.kafka import ensure_pipeline_topics, producer_config
from pipeline.metrics import total

logger = logging.getLogger("Models_analysis")


def main() -> int:
    """Load the model, then score until SIGTERM."""
    config = settings.load(Settings)
    logs.setup(config.LOG_LEVEL, "model")
    try:
        models = ModelRegistry(
            config.MODEL_PATH, check_every_s=config.MODEL_RELOAD_CHECK_S, trained=config.MODEL_TRAINED_PATH
        )
    except ModelError as error:
        logger.error("MODEL_PATH: %s", error)
        return 2
    stop = lifecycle.stop_event()
    ensure_pipeline_topics(config)
    kafka = Dependency("kafka")
    producer = Producer(producer_config(config, config.KAFKA_CLIENT_ID, kafka))
    scorer = Scorer(config, models, producer, stop, kafka)
    scorer.kafka.up()  # it answered: the topics exist
    worker = threading.Thread(target=scorer.run, name="scorer")

    def summary() -> None:
        logger.info(
            "scored %d readings (%d anomalies), %d prediction errors, %d rejected",
            total("pipeline_readings_scored"),
            total("pipeline_anomalies"),
            total("pipeline_prediction_errors"),
            total("pipeline_model_rejections"),
        )

    health = HealthServer(
        config.HEALTH_PORT,
        ready={"kafka": scorer.kafka, "model": scorer.model},
        alive=lambda: worker.is_alive() or worker.ident is None,
    )
    health.start()
    try:
        return lifecycle.supervise([worker], stop, summary)
    finally:
        health.stop()
        producer.flush(10)
        logger.info("model service stopped")


if __name__ == "__main__":
    raise SystemExit(main())
