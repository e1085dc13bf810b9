"""Stand-ins for the pipeline's clients and store: they record what they are asked, and no server is involved.

Each can share an ``events`` list with the others, in which it writes what happened, in order
("store readings r-1", "confirm analytics r-1", "ack 7", "commit", ...): the tests of the
delivery guarantees (tests/unit/test_orderings.py) read the order of store, produce, confirm,
acknowledge and commit from it.
"""

from __future__ import annotations

import collections
import json
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError
from paho.mqtt.enums import MQTTErrorCode
from pymongo.errors import BulkWriteError

from Models_analysis.model import LoadedModel
from pipeline import contract
from pipeline.health import Dependency
from Server.store import Inserted, WriteNotConfirmed


def _record_id(value: bytes) -> str:
    """The reading id a Kafka value carries ("?" when it is not JSON with an id)."""
    try:
        found = json.loads(value).get("id")
    except (ValueError, AttributeError):
        return "?"
    return str(found) if found is not None else "?"


@dataclass
class Connected:
    host: str
    port: int
    keepalive: int
    clean_start: Any
    properties: Any


@dataclass
class RecordingMqttClient:
    """Stands in for a paho client: records connect, subscribe, publish and ack; sends nothing."""

    client_id: str = ""
    manual_ack: bool = False
    connects: list[Connected] = field(default_factory=list)
    loop_started: int = 0
    subscriptions: list[Any] = field(default_factory=list)
    published: list[bytes] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    #: (packet id, QoS) of each acknowledgement.
    acked: list[tuple[int, int]] = field(default_factory=list)
    max_queued: int | None = None
    events: list[str] | None = None

    def connect(self, host: str, port: int, keepalive: int = 60, **kwargs: Any) -> None:
        self.connects.append(Connected(host, port, keepalive, kwargs.get("clean_start"), kwargs.get("properties")))

    def loop_start(self) -> None:
        self.loop_started += 1

    def loop_stop(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def subscribe(self, topics: Any, *args: Any, **kwargs: Any) -> None:
        self.subscriptions.append(topics)

    def publish(self, topic: str, data: bytes, qos: int = 0) -> Any:
        self.published.append(data)
        return SimpleNamespace(rc=MQTTErrorCode.MQTT_ERR_SUCCESS, mid=len(self.published))

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)
        self.acked.append((mid, qos))
        if self.events is not None:
            self.events.append(f"ack {mid}")

    def ack_all(self, mids: Iterable[int]) -> None:
        """pipeline.mqtt.Client's QoS 1 acknowledgements in one write: recorded one by one, in order."""
        for mid in mids:
            self.ack(mid, 1)

    def max_queued_messages_set(self, size: int) -> None:
        self.max_queued = size


@dataclass
class FakeMessage:
    """A Kafka message as a consumer returns it."""

    _value: bytes
    _topic: str
    _key: bytes | None = None

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key

    def error(self) -> None:
        return None


class RecordingProducer:
    """Stands in for a confluent-kafka Producer: records each record; answers for it at the next poll.

    The answer is a confirmation, unless :meth:`fail_next_answers` queued errors: then the next
    polls answer every record waiting with that error (and call ``then``, say to stop the service).
    """

    def __init__(self, config: dict[str, Any] | None = None, events: list[str] | None = None) -> None:
        self.config = config or {}
        self.events = events
        self.produced: list[tuple[str, bytes | None, bytes]] = []
        self._callbacks: list[tuple[FakeMessage, Callable[[Any, Any], None]]] = []
        self._errors: list[KafkaError] = []
        self._then: Callable[[], None] | None = None

    def fail_next_answers(self, *errors: KafkaError, then: Callable[[], None] | None = None) -> None:
        self._errors = list(errors)
        self._then = then

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None) -> None:
        self.produced.append((topic, key, value))
        if self.events is not None:
            self.events.append(f"produce {topic} {_record_id(value)}")
        if on_delivery is not None:
            self._callbacks.append((FakeMessage(value, topic, key), on_delivery))

    def poll(self, timeout: float = 0) -> int:
        callbacks, self._callbacks = self._callbacks, []
        error = self._errors.pop(0) if self._errors and callbacks else None
        for message, callback in callbacks:
            if self.events is not None:
                answer = "confirm" if error is None else "fail"
                self.events.append(f"{answer} {message.topic()} {_record_id(message.value())}")
            callback(error, message)
        if error is not None and self._then is not None:
            self._then()
        return len(callbacks)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.produced]


class RecordingConsumer:
    """Stands in for a confluent-kafka Consumer: records its config, subscription, consume calls and commits.

    ``batches`` are returned by the consume calls, one each, in order; once they are all taken,
    ``stop`` (when given) is set, so the service's loop ends.
    """

    def __init__(
        self,
        config: dict[str, Any],
        batches: list[list[FakeMessage]] | None = None,
        events: list[str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.batches = list(batches or [])
        self.events = events
        self.stop = stop
        self.subscribed: list[str] = []
        self.consumed: list[tuple[int, float]] = []
        self.commits = 0
        self.closed = False

    def subscribe(self, topics: list[str], **kwargs: Any) -> None:
        self.subscribed = list(topics)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        self.consumed.append((num_messages, timeout))
        if not self.batches:
            if self.stop is not None:
                self.stop.set()
            return []
        batch = self.batches.pop(0)
        if self.events is not None:
            self.events.append("consume " + ",".join(_record_id(m.value()) for m in batch))
        return batch

    def commit(self, asynchronous: bool = True, **kwargs: Any) -> None:
        assert asynchronous is False, "a commit must be confirmed before the work it covers is forgotten"
        self.commits += 1
        if self.events is not None:
            self.events.append("commit")

    def close(self) -> None:
        self.closed = True


class RecordingStore:
    """Stands in for Server.store.Store: every insert is new, unless ``failures`` says it fails first.

    ``failures`` are taken one per insert call: an exception is raised before anything is recorded
    (an outage), after calling ``on_failure`` (say, to stop the service while the outage lasts);
    None lets that insert through. Documents whose ``_id`` is in ``refuse`` are refused for what
    they are (as MongoDB refuses one it cannot store); those in ``already`` are answered as
    duplicates (stored before, say by a bridge that restarted since); the others stored.
    """

    def __init__(
        self,
        events: list[str] | None = None,
        failures: list[BaseException | None] | None = None,
        on_failure: Callable[[], None] | None = None,
        refuse: frozenset[str] = frozenset(),
        already: frozenset[str] = frozenset(),
    ) -> None:
        self.events = events
        self.refuse = refuse
        self.already = already
        self.failures = list(failures or [])
        self.on_failure = on_failure
        self.inserted: list[tuple[str, list[dict[str, Any]]]] = []
        self.db: dict[str, Any] = collections.defaultdict(SimpleNamespace)  # touched, never written to here

    def insert_new(self, collection: str, documents: list[dict[str, Any]]) -> Inserted:
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            if self.events is not None:
                self.events.append(f"store failed {collection}")
            if self.on_failure is not None:
                self.on_failure()
            raise failure
        refused = {i: "MongoDB refused the document" for i, d in enumerate(documents) if d.get("_id") in self.refuse}
        duplicates = {i for i, d in enumerate(documents) if d.get("_id") in self.already and i not in refused}
        kept = [d for i, d in enumerate(documents) if i not in refused and i not in duplicates]
        self.inserted.append((collection, kept))
        if self.events is not None and kept:
            self.events.append(f"store {collection} " + ",".join(str(d.get("_id", "?")) for d in kept))
        return Inserted(len(kept), duplicates, refused)

    def ids(self, collection: str) -> list[str]:
        """Every id inserted into ``collection``, in order, repeats included."""
        return [str(d["_id"]) for name, documents in self.inserted if name == collection for d in documents]


class UnconfirmedOnceStore(RecordingStore):
    """The first insert into ``collection`` is taken by the primary but its w=majority is not confirmed.

    The retry finds those documents there (answered as duplicates); every other insert is as
    :class:`RecordingStore`'s.
    """

    def __init__(self, collection: str = "readings", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.collection = collection
        self.unconfirmed = True

    def insert_new(self, collection: str, documents: list[dict[str, Any]]) -> Inserted:
        if self.unconfirmed and collection == self.collection:
            self.unconfirmed = False
            duplicates = {i for i, d in enumerate(documents) if d["_id"] in self.already}
            self.already = self.already | frozenset(d["_id"] for d in documents)
            details = {
                "nInserted": len(documents),
                "writeErrors": [],
                "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}],
            }
            inserted = Inserted(len(documents) - len(duplicates), duplicates, {})
            raise WriteNotConfirmed(BulkWriteError(details), inserted)
        return super().insert_new(collection, documents)


class OneModel:
    """Stands in for ModelRegistry: one model for every sensor."""

    def __init__(self, model: Any) -> None:
        self.loaded = LoadedModel(model, contract.ModelIdentity(name="m", hash=uuid.uuid4().hex[:16]), Path("m.joblib"))

    def for_sensor(self, sensor: str) -> LoadedModel:
        return self.loaded

    def refresh(self, force: bool = False) -> None:
        pass


class SlowToAnswer(RecordingProducer):
    """Answers nothing for ``silent`` polls of a second each (pipeline.kafka's clock), then confirms all."""

    def __init__(self, clock: Any, silent: int, kafka: Dependency) -> None:
        super().__init__()
        self.clock, self.silent, self.kafka = clock, silent, kafka
        self.seen: list[str | None] = []

    def poll(self, timeout: float = 0) -> int:
        self.clock.now += 1.0
        self.seen.append(None if self.kafka() else self.kafka.why)
        if self.silent:
            self.silent -= 1
            return 0
        return super().poll(timeout)


class HalfTakingProducer(RecordingProducer):
    """Confirms the first record of the first answer and fails the others (not taken); then confirms all."""

    def __init__(self) -> None:
        super().__init__()
        self.answers = 0

    def poll(self, timeout: float = 0) -> int:
        callbacks, self._callbacks = self._callbacks, []
        for n, (message, callback) in enumerate(callbacks):
            failed = self.answers == 0 and n > 0
            callback(KafkaError(KafkaError._MSG_TIMED_OUT) if failed else None, message)
        self.answers += bool(callbacks)
        return len(callbacks)
