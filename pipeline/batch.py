"""The one batch loop every consumer in the pipeline runs, and where a bad message becomes a rejection.

The bridge's MQTT intake, its results sink and the model service all do the
same cycle: read a batch, handle each message, make the results durable, then
acknowledge (MQTT) or commit (Kafka); retry while a server is away; keep what
cannot be handled, with its reason. :class:`BatchLoop` owns that cycle; a
:class:`Source` reads and acknowledges, a :class:`Handler` handles and writes.

Poison immunity lives here and only here:

- whatever goes wrong while handling one message (parsing, validating,
  building its document or its Kafka record) makes that message a rejection
  with a readable reason, and the rest of the batch goes on;
- a write that fails for any reason but an outage (an error not in
  ``transient``) is retried one message at a time, so the message it was
  about becomes a rejection and its neighbours are written;
- a message a server refuses (MongoDB or Kafka, for what the message is) is
  returned by the handler as refused, and becomes a rejection;
- only the servers being unreachable (``transient``) is retried, with backoff,
  until it works or the service is told to stop; then nothing is acknowledged
  and the source redelivers the batch.

A retried write is given the same :class:`Attempt`, so what Kafka or MongoDB
already confirmed for this batch is not written again (no doubles from retries).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, Message, Producer
from prometheus_client import Counter

from pipeline import contract
from pipeline.kafka import Committer, Deliveries, send_all
from pipeline.metrics import LagProbe
from pipeline.retry import RetryError, until_done

logger = logging.getLogger(__name__)

M = TypeVar("M")
M_contra = TypeVar("M_contra", contravariant=True)
T = TypeVar("T")

#: Consumer errors (other than reaching the end of a partition) are logged at most this often.
WARN_EVERY_S = 30.0


@dataclass(frozen=True)
class Failure:
    """Why one message could not be handled: a kind from a fixed set (a metric label) and a reason for people."""

    kind: contract.RejectKind
    reason: str


def failure_of(error: BaseException) -> Failure:
    """The failure a handler's exception stands for: a contract error's own kind, else ``unexpected``."""
    if isinstance(error, contract.ContractError):
        return Failure(error.kind, str(error))
    return Failure("unexpected", f"the pipeline could not handle this message: {type(error).__name__}: {error}")


@dataclass
class Attempt:
    """What is already durable for one batch, kept across its retries: keys of records, by where they went."""

    done: dict[str, set[Any]] = field(default_factory=dict)
    #: Anything a handler computes once per batch (say, the model's forecasts) and reuses on a retry.
    memo: dict[Any, Any] = field(default_factory=dict)

    def of(self, where: str) -> set[Any]:
        """The keys already durable in ``where`` (a set the handler adds to)."""
        return self.done.setdefault(where, set())


class Source(Protocol[M]):
    """Where messages come from and how they are acknowledged."""

    transport: Literal["mqtt", "kafka"]

    def poll(self) -> list[M]:
        """The next batch; empty when nothing came within the source's wait."""

    def describe(self, message: M) -> tuple[bytes, str, datetime]:
        """A message's payload, topic and arrival time (for its rejection)."""

    def done(self, batch: list[M]) -> None:
        """The batch is durable: acknowledge or commit it."""

    def tick(self) -> None:
        """Between batches (commit finished work that is due)."""

    def release(self, finished: bool) -> None:
        """The loop ends; ``finished`` when every batch it took was made durable."""


class Handler(Protocol[M_contra, T]):
    """What a consumer does with its messages."""

    #: What a write does, for the retry log ("store and forward readings").
    what: str

    def handle(self, message: M_contra) -> T:
        """Turn one message into what will be written; raise (anything) to reject the message."""

    def write(self, items: list[T], attempt: Attempt) -> dict[int, Failure]:
        """Make ``items`` durable; return the ones a server refused (by index), raise a transient error to retry."""


class DeadLetters:
    """Keeps rejected messages: in MongoDB's ``rejections`` (when a store is given) and on the dead-letter topic."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        stop: threading.Event,
        counter: Counter,
        insert: Callable[[list[dict[str, Any]]], Any] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.stop = stop
        self.counter = counter
        self.insert = insert

    def write(self, rejections: list[contract.Rejection], attempt: Attempt) -> None:
        """Store and publish ``rejections``; raises a transient error (retried) while a server is away."""
        stored = attempt.of("rejections")
        fresh = {r.key: r for r in rejections if r.key not in stored}
        if self.insert is not None and fresh:
            self.insert([r.to_document() for r in fresh.values()])
            stored.update(fresh)
        deliveries = attempt.memo.setdefault("deadletter", Deliveries())
        records = (
            (i, (self.topic, r.topic.encode(), contract.dumps(r.model_dump()))) for i, r in enumerate(rejections)
        )
        send_all(self.producer, records, self.stop, deliveries).wait(self.producer, self.stop)
        for index, reason in deliveries.refused.items():
            # A rejection is at most a few KiB (contract.MAX_KEPT_BYTES): this would be a bug, kept visible.
            which = rejections[index].key if isinstance(index, int) else index
            logger.error("Kafka refused the dead-letter record of %s: %s", which, reason)
        for rejection in rejections:
            self.counter.labels(rejection.kind).inc()
            logger.info(
                "rejected a message on %s %s (%s): %s",
                rejection.transport,
                rejection.topic,
                rejection.kind,
                rejection.reason,
            )


class BatchLoop(Generic[M, T]):
    """Reads batches from ``source`` until ``stop``, hands each message to ``handler``, keeps the failures."""

    def __init__(
        self,
        source: Source[M],
        handler: Handler[M, T],
        dead_letters: DeadLetters,
        stop: threading.Event,
        transient: tuple[type[BaseException], ...],
    ) -> None:
        self.source = source
        self.handler = handler
        self.dead_letters = dead_letters
        self.stop = stop
        self.transient = transient

    def run(self) -> None:
        """Process batches until stopped, finishing the batch in hand; then close the source."""
        finished = True
        try:
            while not self.stop.is_set():
                batch = self.source.poll()
                if batch and not self.process(batch):
                    finished = False
                    return
                self.source.tick()
        finally:
            self.source.release(finished)

    def process(self, batch: list[M]) -> bool:
        """Handle, write and acknowledge one batch; False if stopped before it was durable."""
        items: list[T] = []
        origin: list[int] = []
        failed: list[tuple[int, Failure]] = []
        for index, message in enumerate(batch):
            try:
                items.append(self.handler.handle(message))
                origin.append(index)
            except Exception as error:  # noqa: BLE001 - one message's failure is that message's rejection
                failed.append((index, failure_of(error)))
        attempt = Attempt()
        try:
            refused = until_done(lambda: self._write(items, attempt), self.stop, self.handler.what, self.transient)
            failed += [(origin[i], failure) for i, failure in refused.items()]
            if failed:
                rejections = [self._rejection(batch[i], failure) for i, failure in sorted(failed)]
                until_done(
                    lambda: self.dead_letters.write(rejections, attempt),
                    self.stop,
                    "keep rejected messages",
                    self.transient,
                )
        except RetryError:
            logger.warning("stopping with %d messages not yet durable; they will be delivered again", len(batch))
            return False
        self.source.done(batch)
        return True

    def _write(self, items: list[T], attempt: Attempt) -> dict[int, Failure]:
        if not items:
            return {}
        try:
            return self.handler.write(items, attempt)
        except self.transient:
            raise
        except Exception as error:  # noqa: BLE001 - find the message it was about, below
            if len(items) == 1:
                return {0: failure_of(error)}
            logger.warning(
                "%s failed for a batch of %d (%s: %s); writing its messages one at a time",
                self.handler.what,
                len(items),
                type(error).__name__,
                error,
            )
        refused: dict[int, Failure] = {}
        for index, item in enumerate(items):
            try:
                alone = self.handler.write([item], attempt)
            except self.transient:
                raise
            except Exception as error:  # noqa: BLE001
                alone = {0: failure_of(error)}
            if alone:
                refused[index] = alone[0]
        return refused

    def _rejection(self, message: M, failure: Failure) -> contract.Rejection:
        payload, topic, received_at = self.source.describe(message)
        return contract.Rejection.of(payload, self.source.transport, topic, failure.reason, received_at, failure.kind)


class KafkaSource:
    """A Kafka consumer as a :class:`Source`: offsets committed once the batch is durable (see Committer)."""

    transport: Literal["mqtt", "kafka"] = "kafka"

    def __init__(
        self,
        consumer: Consumer,
        topics: Sequence[str],
        batch_max: int,
        wait_s: float,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.consumer = consumer
        #: Called after every batch and every empty poll: the consumer's own periodic work, busy or idle.
        self.on_tick = on_tick
        self.topics = list(topics)
        self.batch_max = batch_max
        self.wait_s = wait_s
        self.committer = Committer(consumer, ", ".join(self.topics))
        self.lag = LagProbe(self.topics[0])
        self._last_warning = 0.0
        consumer.subscribe(self.topics)

    def poll(self) -> list[Message]:
        messages = self.consumer.consume(num_messages=self.batch_max, timeout=self.wait_s)
        self.lag.maybe_measure(self.consumer)
        return [m for m in messages if not self._is_error(m)]

    def _is_error(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() != KafkaError._PARTITION_EOF and time.monotonic() - self._last_warning > WARN_EVERY_S:
            self._last_warning = time.monotonic()
            logger.warning("Kafka consumer of %s: %s", ", ".join(self.topics), error)
        return True

    def describe(self, message: Message) -> tuple[bytes, str, datetime]:
        return message.value() or b"", message.topic() or "", datetime.now(UTC)

    def done(self, batch: list[Message]) -> None:
        self.committer.done()

    def tick(self) -> None:
        self.committer.tick()  # everything consumed so far is finished
        if self.on_tick is not None:
            self.on_tick()

    def release(self, finished: bool) -> None:
        try:
            if finished:
                self.committer.flush()
        finally:
            self.consumer.close()
