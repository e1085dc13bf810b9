"""A silent partition: Kafka stops answering without an error, and the service says so within STALL_S."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline import kafka as kafka_module
from pipeline.health import Dependency
from pipeline.kafka import Committer, Deliveries, KafkaUnavailable


class SilentProducer:
    """Answers nothing until ``answer_after_s`` has passed (None: never), then confirms every record."""

    def __init__(self, deliveries: Deliveries, keys: list[str], answer_after_s: float | None) -> None:
        self.callbacks = {key: deliveries.callback_for(key) for key in keys}
        self.started = time.monotonic()
        self.answer_after_s = answer_after_s

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.01))
        if self.answer_after_s is not None and time.monotonic() - self.started >= self.answer_after_s:
            for callback in self.callbacks.values():
                callback(None, cast(Any, None))
            self.callbacks = {}
        return 0


def waiting(keys: list[str]) -> Deliveries:
    deliveries = Deliveries()
    deliveries.pending.update(keys)
    return deliveries


@pytest.fixture
def short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_module, "STALL_S", 0.2)
    monkeypatch.setattr(kafka_module, "CONFIRM_TIMEOUT_S", 0.6)


@pytest.mark.usefixtures("short")
def test_no_answer_for_stall_s_marks_kafka_down_with_the_reason_before_the_batch_gives_up() -> None:
    keys = ["r-1", "r-2"]
    deliveries = waiting(keys)
    kafka = Dependency("kafka")
    kafka.up()
    seen: list[tuple[float, bool]] = []
    producer = SilentProducer(deliveries, keys, answer_after_s=None)
    original = producer.poll

    def poll(timeout: float) -> int:
        seen.append((time.monotonic() - producer.started, kafka()))
        return original(timeout)

    producer.poll = poll  # type: ignore[method-assign]
    with pytest.raises(KafkaUnavailable, match="2 records not confirmed"):
        deliveries.wait(cast(Producer, producer), threading.Event(), kafka)
    assert not kafka() and kafka.why is not None and "none of 2 records" in kafka.why
    went_down = next(t for t, up in seen if not up)
    assert 0.2 <= went_down < 0.5, f"down {went_down:.2f}s in: after STALL_S, well before CONFIRM_TIMEOUT_S"


@pytest.mark.usefixtures("short")
def test_answers_after_a_stall_end_the_wait_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    keys = ["r-1"]
    deliveries = waiting(keys)
    kafka = Dependency("kafka")
    producer = SilentProducer(deliveries, keys, answer_after_s=0.35)
    with caplog.at_level(logging.INFO, logger="pipeline.kafka"):
        deliveries.wait(cast(Producer, producer), threading.Event(), kafka)
    assert deliveries.confirmed == {"r-1"} and not deliveries.pending
    levels = [r.levelno for r in caplog.records if r.name == "pipeline.kafka"]
    assert levels == [logging.WARNING, logging.INFO], "one line for the stall, one when Kafka answers again"


@pytest.mark.usefixtures("short")
def test_answers_before_stall_s_neither_mark_kafka_down_nor_log() -> None:
    keys = ["r-1", "r-2"]
    deliveries = waiting(keys)
    kafka = Dependency("kafka")
    kafka.up()
    deliveries.wait(cast(Producer, SilentProducer(deliveries, keys, answer_after_s=0.05)), threading.Event(), kafka)
    assert kafka() and deliveries.confirmed == set(keys)


def test_a_service_without_a_health_check_still_waits_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_module, "STALL_S", 0.05)
    monkeypatch.setattr(kafka_module, "CONFIRM_TIMEOUT_S", 0.2)
    deliveries = waiting(["r-1"])
    with pytest.raises(KafkaUnavailable):
        deliveries.wait(cast(Producer, SilentProducer(deliveries, ["r-1"], None)), threading.Event())


class CommitRefused:
    """A consumer whose commit raises ``code`` each time."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.commits = 0

    def commit(self, asynchronous: bool) -> None:
        self.commits += 1
        raise KafkaException(KafkaError(self.code))


def test_nothing_left_to_commit_after_a_rebalance_is_not_retried_every_second(caplog: pytest.LogCaptureFixture) -> None:
    """Seen in the partition test: `_NO_OFFSET` warned once a second for 11 s after the group took the partitions."""
    now = [0.0]
    consumer = CommitRefused(KafkaError._NO_OFFSET)
    committer = Committer(cast(Any, consumer), "t", every_s=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="pipeline.kafka"):
        committer.done()
        for _ in range(5):
            now[0] += 1.0
            committer.tick()
    assert consumer.commits == 1 and not caplog.records, "one try, then nothing pending and nothing said"


def test_any_other_commit_failure_is_said_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    consumer = CommitRefused(KafkaError.REQUEST_TIMED_OUT)
    committer = Committer(cast(Any, consumer), "t", every_s=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="pipeline.kafka"):
        committer.done()
        for _ in range(2):
            now[0] += 1.0
            committer.tick()
    assert consumer.commits == 2 and len(caplog.records) == 2, "still pending after a failure: tried at the next tick"
