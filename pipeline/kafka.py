"""Kafka client settings shared by the services (confluent-kafka / librdkafka)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from pipeline.health import Dependency
from pipeline.settings import KafkaSettings

logger = logging.getLogger(__name__)

#: How long a batch waits for Kafka to confirm it before the batch is retried.
CONFIRM_TIMEOUT_S = 30.0
#: How long a stopping service waits for confirmations in flight.
STOP_GRACE_S = 5.0
#: No answer from Kafka for this long while records wait: the stall is logged and /readyz says Kafka is down.
STALL_S = 10.0
#: Consumers commit what they have made durable at most this often (and when they stop).
COMMIT_EVERY_S = 1.0


#: librdkafka's own log lines go to this logger (not raw to stderr), rate-limited by pipeline.logs.
CLIENT_LOGGER = logging.getLogger("librdkafka")


def security_config(settings: KafkaSettings) -> dict[str, Any]:
    """How a client reaches Kafka: bootstrap servers, TLS (KAFKA_TLS_CA_FILE) and SCRAM login (KAFKA_SASL_*).

    With TLS, librdkafka checks the broker's certificate against the CA and the
    host name it connects to (``ssl.endpoint.identification.algorithm=https``).
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.KAFKA_TLS_CA_FILE is not None:
        config["ssl.ca.location"] = str(settings.KAFKA_TLS_CA_FILE)
        config["ssl.endpoint.identification.algorithm"] = "https"
    if settings.KAFKA_SASL_USERNAME is not None and settings.KAFKA_SASL_PASSWORD is not None:
        config["sasl.mechanism"] = "SCRAM-SHA-512"
        config["sasl.username"] = settings.KAFKA_SASL_USERNAME
        config["sasl.password"] = settings.KAFKA_SASL_PASSWORD.get_secret_value()
    return config


def _client_common(settings: KafkaSettings, client_id: str, kafka: Dependency | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        **security_config(settings),
        "client.id": client_id,
        "reconnect.backoff.ms": 200,
        "reconnect.backoff.max.ms": 10_000,
        "logger": CLIENT_LOGGER,
    }
    if kafka is not None:
        config["error_cb"] = lambda error: _on_error(error, kafka)
    return config


def _on_error(error: KafkaError, kafka: Dependency) -> None:
    # librdkafka reports here at once when every broker is unreachable; a
    # batch would only notice when its confirmation times out.
    if error.code() == KafkaError._ALL_BROKERS_DOWN:
        kafka.down()
        CLIENT_LOGGER.warning("Kafka is unreachable (%s); retrying", error.str())


def producer_config(settings: KafkaSettings, client_id: str, kafka: Dependency | None = None) -> dict[str, Any]:
    """A producer that never loses or doubles a record it reports delivered.

    Idempotence (with ``acks=all``) means librdkafka's own retries cannot write
    a record twice or out of order; ``message.timeout.ms`` is long so a Kafka
    outage is ridden out by retrying instead of failing deliveries.
    """
    return {
        **_client_common(settings, client_id, kafka),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 10 * 60 * 1000,
    }


def consumer_config(
    settings: KafkaSettings, group_id: str, client_id: str, kafka: Dependency | None = None
) -> dict[str, Any]:
    """A consumer whose offsets move only when the code commits after the work is durable."""
    return {
        **_client_common(settings, client_id, kafka),
        "group.id": group_id,
        "enable.auto.commit": False,
        # A new group starts at the beginning: nothing already in Kafka is skipped.
        "auto.offset.reset": "earliest",
    }


#: The dead-letter topic keeps at most this many bytes per partition (oldest segments go first), so a
#: flood of bad messages cannot fill Kafka's disk; the other topics keep Kafka's defaults.
DEADLETTER_RETENTION_BYTES = 256 * 1024 * 1024


def ensure_pipeline_topics(settings: KafkaSettings) -> None:
    """Create the pipeline's four topics if missing (readings, results, dead letters, alerts)."""
    ensure_topics(
        settings,
        [
            settings.KAFKA_TOPIC_READINGS,
            settings.KAFKA_TOPIC_RESULTS,
            settings.KAFKA_TOPIC_DEADLETTER,
            settings.KAFKA_TOPIC_ALERTS,
        ],
        configs={settings.KAFKA_TOPIC_DEADLETTER: {"retention.bytes": str(DEADLETTER_RETENTION_BYTES)}},
    )


def topic_replication_config(settings: KafkaSettings) -> dict[str, str]:
    """Topic configs that follow from the replication settings: min.insync.replicas, with more than one replica."""
    if settings.KAFKA_REPLICATION_FACTOR == 1:
        return {}  # the broker's default (1): a single broker has no other replica to wait for
    return {"min.insync.replicas": str(settings.kafka_min_insync_replicas)}


def ensure_topics(
    settings: KafkaSettings,
    topics: list[str],
    timeout_s: float = 60.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create the topics the service uses, if missing, with KAFKA_NUM_PARTITIONS partitions.

    Each has KAFKA_REPLICATION_FACTOR replicas; with more than one, its
    ``min.insync.replicas`` is KAFKA_MIN_INSYNC_REPLICAS (by default one less),
    so a write confirmed to an ``acks=all`` producer is on that many brokers.
    ``configs`` gives topic configs by name (applied when the topic is made).
    Waits (retrying) until Kafka answers, so a service started before Kafka is
    ready (or before enough of its brokers are) does not crash; past
    ``timeout_s`` it raises, naming KAFKA_REPLICATION_FACTOR if too few brokers
    were up for it.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin_config: dict[str, Any] = {**security_config(settings), "logger": CLIENT_LOGGER}
    admin = AdminClient(admin_config)
    deadline = time.monotonic() + timeout_s
    replicated = topic_replication_config(settings)
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            missing = [t for t in topics if t not in existing]
            if not missing:
                return
            futures = admin.create_topics(
                [
                    NewTopic(
                        t,
                        num_partitions=settings.KAFKA_NUM_PARTITIONS,
                        replication_factor=settings.KAFKA_REPLICATION_FACTOR,
                        config={**replicated, **(configs or {}).get(t, {})},
                    )
                    for t in missing
                ]
            )
            for topic, future in futures.items():
                try:
                    future.result()
                    logger.info(
                        "created Kafka topic %s (%d partitions, %d replicas)",
                        topic,
                        settings.KAFKA_NUM_PARTITIONS,
                        settings.KAFKA_REPLICATION_FACTOR,
                    )
                except KafkaException as error:
                    if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            return
        except KafkaException as error:
            if time.monotonic() > deadline:
                if error.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR:
                    raise KafkaException(
                        KafkaError(
                            KafkaError.INVALID_REPLICATION_FACTOR,
                            f"KAFKA_REPLICATION_FACTOR={settings.KAFKA_REPLICATION_FACTOR} is more than the brokers "
                            f"Kafka has up ({error.args[0].str()})",
                        )
                    ) from None
                raise
            logger.warning("Kafka at %s not ready (%s); retrying", settings.KAFKA_BOOTSTRAP_SERVERS, error)
            time.sleep(1)


class KafkaUnavailable(RuntimeError):
    """Kafka did not confirm every record in time; the caller retries the batch."""


#: Errors that refuse one record for what it is (retrying it can never help),
#: as opposed to Kafka being away or busy.
RECORD_REFUSED = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError._INVALID_ARG,
    }
)

Record = tuple[str, bytes, bytes]


class Deliveries:
    """Kafka's answers for the records of one batch, by a key the caller gives each record.

    One object serves every try of a batch: a record Kafka confirmed
    (``confirmed``) or that is still queued in the producer (``pending``; the
    idempotent producer keeps retrying it) is not produced again, so a retried
    batch never doubles a record. ``refused`` holds the records Kafka refused
    for what they are (too large, invalid), with the reason.
    """

    def __init__(self) -> None:
        self.pending: set[Hashable] = set()
        self.confirmed: set[Hashable] = set()
        self.refused: dict[Hashable, str] = {}
        self._failed = 0

    def callback_for(self, key: Hashable) -> Callable[[KafkaError | None, Message], None]:
        def callback(error: KafkaError | None, message: Message) -> None:
            self.pending.discard(key)
            if error is None:
                self.confirmed.add(key)
            elif error.code() in RECORD_REFUSED:
                self.refused[key] = f"Kafka refused the record: {error.str()}"
            else:  # produced again on the next try
                self._failed += 1
                logger.warning("Kafka did not take a record for %s: %s", message.topic(), error)

        return callback

    def answered(self, key: Hashable) -> bool:
        """Whether the record needs no producing (confirmed, refused, or still on its way)."""
        return key in self.confirmed or key in self.pending or key in self.refused

    def wait(self, producer: Producer, stop: threading.Event, kafka: Dependency | None = None) -> None:
        """Return once Kafka has answered for every record; KafkaUnavailable if some are not confirmed in time.

        A silent partition (packets dropped, no reset) never makes librdkafka
        report the brokers down: Kafka just stops answering. So once no record
        has been answered for :data:`STALL_S`, the stall is logged and ``kafka``
        (the service's /readyz check) is marked down with the reason, well
        before the batch gives up at :data:`CONFIRM_TIMEOUT_S`; when Kafka
        answers again after a stall, that is logged too (the caller marks
        ``kafka`` up once the batch is done).
        """
        started = last_answer = time.monotonic()
        deadline = started + CONFIRM_TIMEOUT_S
        waiting = len(self.pending)
        stalled = False
        while self.pending:
            producer.poll(0.1)
            now = time.monotonic()
            if len(self.pending) < waiting:
                if stalled:
                    logger.info("Kafka answers again, after %.0fs without an answer", now - last_answer)
                    stalled = False
                waiting, last_answer = len(self.pending), now
            elif not stalled and now - last_answer >= STALL_S:
                stalled = True
                why = f"Kafka has answered none of {waiting} records for {now - last_answer:.0f}s"
                logger.warning("%s; the batch waits, then is tried again (nothing is acknowledged meanwhile)", why)
                if kafka is not None:
                    kafka.down(why)
            if stop.is_set():
                # Stopping: give Kafka a short grace to confirm what is in flight.
                deadline = min(deadline, now + STOP_GRACE_S)
            if now > deadline:
                raise KafkaUnavailable(f"{len(self.pending)} records not confirmed by Kafka")
        failed, self._failed = self._failed, 0
        if failed:
            raise KafkaUnavailable(f"{failed} records not taken by Kafka")


def send_all(
    producer: Producer,
    records: Iterable[tuple[Hashable, Record]],
    stop: threading.Event,
    deliveries: Deliveries | None = None,
) -> Deliveries:
    """Hand ``records`` ((key, (topic, record key, value))) to the producer; wait with :meth:`Deliveries.wait`.

    Records ``deliveries`` already has an answer for (or are on their way) are
    skipped. A record the producer refuses at once (say, larger than
    ``message.max.bytes``) is put in ``refused`` and the others go on.
    """
    deliveries = deliveries if deliveries is not None else Deliveries()
    for key, (topic, record_key, value) in records:
        if deliveries.answered(key):
            continue
        while True:
            try:
                producer.produce(topic, value=value, key=record_key, on_delivery=deliveries.callback_for(key))
                deliveries.pending.add(key)
                break
            except BufferError:
                # librdkafka's queue is full: let it deliver some first.
                producer.poll(0.1)
                if stop.is_set():
                    raise KafkaUnavailable("stopping while Kafka's queue is full") from None
            except KafkaException as error:
                deliveries.refused[key] = f"Kafka refused the record: {error.args[0].str()}"
                break
    return deliveries


class Committer:
    """Commits a consumer's offsets at most every ``every_s``, and once more when it stops.

    Call :meth:`done` after each batch is durable (stored, or confirmed by
    Kafka): a commit covers every message consumed so far, so it only ever
    moves past work that is finished. A synchronous commit per batch held the
    consuming thread for a round trip to Kafka every few dozen milliseconds and
    cost the broker a write to its offsets topic each time; what a crash now
    leaves uncommitted is at most ``every_s`` of finished work, redelivered and
    skipped as duplicates (every write downstream is keyed by reading id).
    """

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        every_s: float = COMMIT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.every_s = every_s
        #: Seconds from any fixed point (``time.monotonic``; a test passes its own).
        self.clock = clock
        self._last = clock()
        self._pending = False

    def done(self) -> None:
        """A batch is durable: commit now if the last commit is ``every_s`` old."""
        self._pending = True
        self.tick()

    def tick(self) -> None:
        """Between batches, also when none came: commit finished work once the last commit is ``every_s`` old.

        Without it the last batches before the input goes quiet would stay
        uncommitted until the next batch or the stop.
        """
        if self._pending and self.clock() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Commit what is finished, if anything, and wait for Kafka to confirm it."""
        if not self._pending:
            return
        self._last = self.clock()
        try:
            self.consumer.commit(asynchronous=False)
            self._pending = False
        except KafkaException as error:
            if error.args[0].code() == KafkaError._NO_OFFSET:
                # Nothing of ours left to commit: a rebalance took the partitions since the work was done,
                # and their new owner reads it again (harmless: every write is keyed by reading id).
                self._pending = False
                return
            # Finished but not committed: redelivered later, and harmless then.
            logger.warning("could not commit offsets of %s: %s", self.topic, error)
