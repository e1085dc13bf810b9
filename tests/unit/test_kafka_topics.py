"""pipeline.kafka's client settings and topic creation, with an AdminClient stand-in (issue #12).

What a service relies on at start: the pipeline's four topics exist (made with KAFKA_NUM_PARTITIONS
partitions, one replica, the dead-letter topic bounded to 256 MiB), a topic another replica made
first is fine, and a Kafka that is not up yet is waited for, a minute, then the start fails.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from localstack.tls import make_certificates
from pipeline import kafka as kafka_module
from pipeline.kafka import consumer_config, ensure_pipeline_topics, ensure_topics, producer_config, security_config
from pipeline.settings import KafkaSettings


class FakeTime:
    """Stands in for pipeline.kafka's ``time``: ``sleep`` moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeAdmin:
    """Stands in for confluent_kafka's AdminClient: ``down`` list calls fail, then it knows ``existing``."""

    config: dict[str, Any]
    existing: set[str] = field(default_factory=set)
    down: int = 0
    #: The error each create answers with, per topic (the topic is made when there is none).
    create_errors: dict[str, list[KafkaError]] = field(default_factory=dict)
    listed: list[float] = field(default_factory=list)
    created: list[NewTopic] = field(default_factory=list)

    def list_topics(self, timeout: float = -1) -> Any:
        self.listed.append(timeout)
        if self.down:
            self.down -= 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return SimpleNamespace(topics={name: None for name in self.existing})

    def create_topics(self, new_topics: list[NewTopic]) -> dict[str, concurrent.futures.Future[None]]:
        futures = {}
        for topic in new_topics:
            self.created.append(topic)
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            errors = self.create_errors.get(topic.topic)
            if errors:
                future.set_exception(KafkaException(errors.pop(0)))
            else:
                self.existing.add(topic.topic)
                future.set_result(None)
            futures[topic.topic] = future
        return futures


@pytest.fixture
def clock() -> Any:
    fake = FakeTime()
    with mock.patch.object(kafka_module, "time", fake):
        yield fake


def run_with(admin: FakeAdmin, call: Any) -> FakeAdmin:
    def make(config: dict[str, Any]) -> FakeAdmin:
        admin.config = config
        return admin

    with mock.patch("confluent_kafka.admin.AdminClient", make):
        call()
    return admin


SETTINGS = KafkaSettings(
    KAFKA_BOOTSTRAP_SERVERS="k1:9092",
    KAFKA_NUM_PARTITIONS=6,
    KAFKA_TOPIC_READINGS="r",
    KAFKA_TOPIC_RESULTS="p",
    KAFKA_TOPIC_DEADLETTER="d",
    KAFKA_TOPIC_ALERTS="a",
)


def test_the_pipelines_four_topics_are_made_with_the_dead_letters_bounded_to_256_mib(clock: FakeTime) -> None:
    admin = run_with(FakeAdmin({}), lambda: ensure_pipeline_topics(SETTINGS))
    made = {t.topic: (t.num_partitions, t.replication_factor, t.config) for t in admin.created}
    assert made == {
        "r": (6, 1, {}),
        "p": (6, 1, {}),
        "d": (6, 1, {"retention.bytes": "268435456"}),
        "a": (6, 1, {}),
    }
    assert admin.config["bootstrap.servers"] == "k1:9092"
    assert admin.config["logger"] is kafka_module.CLIENT_LOGGER, "librdkafka's lines go through logging"
    assert clock.sleeps == []


def test_only_the_missing_topics_are_made_and_none_when_all_exist(clock: FakeTime) -> None:
    admin = run_with(FakeAdmin({}, existing={"r", "a"}), lambda: ensure_topics(SETTINGS, ["r", "p", "a"]))
    assert [t.topic for t in admin.created] == ["p"]
    admin = run_with(FakeAdmin({}, existing={"r", "p"}), lambda: ensure_topics(SETTINGS, ["r", "p"]))
    assert admin.created == []
    assert admin.listed == [5], "each probe waits at most 5 s for Kafka's answer"


def test_a_topic_another_replica_made_first_is_fine(clock: FakeTime) -> None:
    admin = FakeAdmin({}, create_errors={"p": [KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)]})
    run_with(admin, lambda: ensure_topics(SETTINGS, ["r", "p"]))
    assert [t.topic for t in admin.created] == ["r", "p"]
    assert clock.sleeps == [], "nothing to retry"


def test_a_topic_kafka_could_not_make_is_tried_again(clock: FakeTime) -> None:
    admin = FakeAdmin({}, create_errors={"p": [KafkaError(KafkaError.POLICY_VIOLATION)]})
    run_with(admin, lambda: ensure_topics(SETTINGS, ["r", "p"]))
    assert [t.topic for t in admin.created] == ["r", "p", "p"], "the second round makes only what is missing"
    assert clock.sleeps == [1]


def test_kafka_not_up_yet_is_waited_for_a_second_at_a_time(clock: FakeTime) -> None:
    admin = run_with(FakeAdmin({}, down=3), lambda: ensure_topics(SETTINGS, ["r"]))
    assert [t.topic for t in admin.created] == ["r"]
    assert clock.sleeps == [1, 1, 1]


def test_kafka_down_for_longer_than_a_minute_fails_the_start(clock: FakeTime, caplog: Any) -> None:
    caplog.set_level(logging.CRITICAL)
    admin = FakeAdmin({}, down=1_000)
    with pytest.raises(KafkaException):
        run_with(admin, lambda: ensure_topics(SETTINGS, ["r"]))
    # Probes at 100 s, 101 s, ..., 160 s fail and are retried; the one at 161 s, past the deadline, ends it.
    assert len(admin.listed) == 62
    assert clock.now == 161.0
    admin = FakeAdmin({}, down=1_000)
    with pytest.raises(KafkaException):
        run_with(admin, lambda: ensure_topics(SETTINGS, ["r"], timeout_s=2.5))
    assert len(admin.listed) == 4


def test_clients_back_off_from_200_ms_to_10_s_between_reconnects_and_log_through_logging() -> None:
    for config in (producer_config(SETTINGS, "c"), consumer_config(SETTINGS, "g", "c")):
        assert config["reconnect.backoff.ms"] == 200
        assert config["reconnect.backoff.max.ms"] == 10_000
        assert config["logger"] is kafka_module.CLIENT_LOGGER


def test_the_producer_batches_for_5_ms_and_compresses_with_lz4() -> None:
    config = producer_config(SETTINGS, "c")
    assert (config["linger.ms"], config["compression.type"]) == (5, "lz4")


def test_on_a_cluster_topics_get_the_replicas_asked_for_and_writes_wait_for_all_but_one() -> None:
    cluster = SETTINGS.model_copy(update={"KAFKA_REPLICATION_FACTOR": 3})
    admin = run_with(FakeAdmin({}), lambda: ensure_pipeline_topics(cluster))
    made = {t.topic: (t.replication_factor, t.config) for t in admin.created}
    assert made == {
        "r": (3, {"min.insync.replicas": "2"}),
        "p": (3, {"min.insync.replicas": "2"}),
        "d": (3, {"min.insync.replicas": "2", "retention.bytes": "268435456"}),
        "a": (3, {"min.insync.replicas": "2"}),
    }
    strict = SETTINGS.model_copy(update={"KAFKA_REPLICATION_FACTOR": 3, "KAFKA_MIN_INSYNC_REPLICAS": 3})
    admin = run_with(FakeAdmin({}), lambda: ensure_topics(strict, ["r"]))
    assert [(t.replication_factor, t.config) for t in admin.created] == [(3, {"min.insync.replicas": "3"})]
    two = SETTINGS.model_copy(update={"KAFKA_REPLICATION_FACTOR": 2})
    admin = run_with(FakeAdmin({}), lambda: ensure_topics(two, ["r"]))
    assert [(t.replication_factor, t.config) for t in admin.created] == [(2, {"min.insync.replicas": "1"})]


def test_too_few_brokers_for_the_replicas_fails_the_start_naming_the_variable(clock: FakeTime, caplog: Any) -> None:
    caplog.set_level(logging.CRITICAL)
    cluster = SETTINGS.model_copy(update={"KAFKA_REPLICATION_FACTOR": 3})
    admin = FakeAdmin({}, create_errors={"r": [KafkaError(KafkaError.INVALID_REPLICATION_FACTOR)] * 100})
    with pytest.raises(KafkaException) as caught:
        run_with(admin, lambda: ensure_topics(cluster, ["r"], timeout_s=3))
    error = caught.value.args[0]
    assert error.code() == KafkaError.INVALID_REPLICATION_FACTOR
    assert "KAFKA_REPLICATION_FACTOR=3 is more than the brokers Kafka has up" in error.str()
    assert clock.sleeps == [1, 1, 1, 1], "retried like any other refusal until the deadline"
    other = FakeAdmin({}, create_errors={"r": [KafkaError(KafkaError.POLICY_VIOLATION)] * 100})
    with pytest.raises(KafkaException) as caught:
        run_with(other, lambda: ensure_topics(cluster, ["r"], timeout_s=0))
    assert caught.value.args[0].code() == KafkaError.POLICY_VIOLATION, "another refusal is raised as it came"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kafka-tls")
    make_certificates(directory)
    return directory / "ca.crt"


def test_every_client_reaches_kafka_in_plain_text_by_default() -> None:
    plain = KafkaSettings(KAFKA_BOOTSTRAP_SERVERS="k1:9092,k2:9092")
    assert security_config(plain) == {"bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "PLAINTEXT"}


def test_with_a_ca_and_a_login_clients_check_the_brokers_name_and_log_in_with_scram(ca_file: Path) -> None:
    settings = KafkaSettings(
        KAFKA_BOOTSTRAP_SERVERS="k1:9093",
        KAFKA_TLS_CA_FILE=ca_file,
        KAFKA_SASL_USERNAME="bridge",
        KAFKA_SASL_PASSWORD="secret",
    )
    expected = {
        "bootstrap.servers": "k1:9093",
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(ca_file),
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bridge",
        "sasl.password": "secret",
    }
    assert security_config(settings) == expected
    for config in (producer_config(settings, "c"), consumer_config(settings, "g", "c")):
        assert {k: config[k] for k in expected} == expected, "producers and consumers alike"
    admin = run_with(FakeAdmin({}, existing={"r"}), lambda: ensure_topics(settings, ["r"]))
    assert {k: admin.config[k] for k in expected} == expected, "and the admin client that makes the topics"
    tls_only = KafkaSettings(KAFKA_BOOTSTRAP_SERVERS="k1:9093", KAFKA_TLS_CA_FILE=ca_file)
    assert security_config(tls_only) == {
        "bootstrap.servers": "k1:9093",
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca_file),
        "ssl.endpoint.identification.algorithm": "https",
    }


# --- a stall: Kafka stops answering without saying so ---------------------------------------------


class SilentFor:
    """Stands in for a producer over pipeline.kafka's clock: each poll takes a second; ``answers`` says, by
    poll number, how many of the records waiting it confirms then. It notes the Kafka check at each poll."""

    def __init__(self, clock: FakeTime, deliveries: Any, kafka: Any, answers: dict[int, int]) -> None:
        self.clock, self.deliveries, self.kafka, self.answers = clock, deliveries, kafka, answers
        self.polls = 0
        self.seen: list[tuple[bool, str | None]] = []

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        self.clock.now += 1.0
        for _ in range(self.answers.get(self.polls, 0)):
            key = sorted(self.deliveries.pending)[0]
            self.deliveries.callback_for(key)(None, None)
        self.seen.append((self.kafka(), self.kafka.why))
        return 0


def stalled_wait(clock: FakeTime, pending: int, answers: dict[int, int]) -> tuple[SilentFor, Any]:
    from pipeline.health import Dependency
    from pipeline.kafka import Deliveries

    kafka, deliveries = Dependency("kafka"), Deliveries()
    kafka.up()
    deliveries.pending.update(f"r-{n}" for n in range(pending))
    producer = SilentFor(clock, deliveries, kafka, answers)
    try:
        deliveries.wait(producer, threading.Event(), kafka)  # type: ignore[arg-type]
    except kafka_module.KafkaUnavailable:
        pass
    return producer, kafka


def test_kafka_answering_nothing_for_10_s_is_reported_down_with_why_before_the_batch_gives_up(clock: FakeTime) -> None:
    producer, kafka = stalled_wait(clock, 2, {})
    down_at = next(n for n, (up, _) in enumerate(producer.seen, 1) if not up)
    assert down_at == 11, "down at 10 s without an answer (each poll takes 1 s; the next poll sees it)"
    assert producer.seen[-1] == (False, "Kafka has answered none of 2 records for 10s"), "said once, not updated"
    assert producer.polls == 31, "the batch gives up at 30 s"


def test_an_answer_restarts_the_10_s(clock: FakeTime) -> None:
    producer, kafka = stalled_wait(clock, 2, {6: 1, 25: 1})
    states = [up for up, _ in producer.seen]
    assert states[:16] == [True] * 16, "one record answered at 6 s: the next 10 s count from there"
    assert states[16] is False and producer.seen[16][1] == "Kafka has answered none of 1 records for 10s"
    assert producer.polls == 25, "the last answer ends the wait"


def test_a_second_stall_in_the_same_wait_is_reported_too(clock: FakeTime) -> None:
    producer, kafka = stalled_wait(clock, 2, {15: 1})
    whys = [why for _, why in producer.seen]
    assert whys[11] == "Kafka has answered none of 2 records for 10s"
    assert whys[-1] == "Kafka has answered none of 1 records for 10s", "after the answer at 15 s, silent again"
