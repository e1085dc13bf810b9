"""When a consumer commits: after finished work only, at most every COMMIT_EVERY_S, and at stop."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.kafka import Committer


class Consumer:
    """Records commits (a real consumer would need Kafka; this is only the bookkeeping)."""

    def __init__(self, fail: bool = False) -> None:
        self.commits = 0
        self.fail = fail

    def commit(self, asynchronous: bool = True) -> None:
        assert asynchronous is False, "a commit must be confirmed before the work it covers is forgotten"
        if self.fail:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        self.commits += 1


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_finished_batches_are_committed_at_most_every_interval_and_at_stop() -> None:
    consumer, clock = Consumer(), Clock()
    committer = Committer(consumer, "readings", every_s=1.0, clock=clock)  # type: ignore[arg-type]
    committer.done()
    committer.done()
    assert consumer.commits == 0, "within the interval: not yet"
    clock.now += 0.999
    committer.done()
    assert consumer.commits == 0, "still within the interval"
    clock.now += 0.001
    committer.done()
    assert consumer.commits == 1, "the interval passed: everything finished so far"
    committer.flush()
    assert consumer.commits == 1, "nothing finished since: no commit"
    committer.done()
    committer.flush()
    assert consumer.commits == 2, "at stop, what was finished since the last commit"


def test_the_interval_counts_from_the_last_commit() -> None:
    consumer, clock = Consumer(), Clock()
    committer = Committer(consumer, "readings", every_s=1.0, clock=clock)  # type: ignore[arg-type]
    clock.now += 5.0
    committer.done()
    assert consumer.commits == 1
    clock.now += 0.5
    committer.done()
    assert consumer.commits == 1, "half a second after the last commit: not yet"
    clock.now += 0.5
    committer.tick()
    assert consumer.commits == 2


def test_finished_work_is_committed_when_the_input_goes_quiet() -> None:
    consumer, clock = Consumer(), Clock()
    committer = Committer(consumer, "readings", every_s=1.0, clock=clock)  # type: ignore[arg-type]
    committer.done()
    committer.tick()
    assert consumer.commits == 0, "within the interval: not yet"
    clock.now += 1.0
    committer.tick()
    assert consumer.commits == 1, "no new batch, but the last one is committed once the interval has passed"
    clock.now += 1.0
    committer.tick()
    assert consumer.commits == 1, "nothing finished since: no commit"


def test_a_failed_commit_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer(fail=True)
    committer = Committer(consumer, "readings", every_s=0.0)  # type: ignore[arg-type]
    committer.done()
    assert "could not commit offsets of readings" in caplog.text
    consumer.fail = False
    committer.flush()
    assert consumer.commits == 1, "still pending after the failure, so the stop commits it"
