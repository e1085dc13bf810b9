"""BatchLoop: a write that fails for one message is retried one at a time, and every other message is written once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, Literal

from pipeline import contract
from pipeline.batch import Attempt, BatchLoop, DeadLetters, Failure
from pipeline.health import Dependency
from Server.results import Parsed, ResultsSink
from Server.store import Inserted


class PoisonStore:
    """Refuses (not as an outage) any insert holding the document ``poison``, as pymongo does an unencodable one."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.inserted: list[str] = []

    def insert_new(self, collection: str, documents: list[dict[str, Any]]) -> Inserted:
        if any(d["_id"] == self.poison for d in documents):
            raise ValueError("cannot encode this document")
        self.inserted += [d["_id"] for d in documents]
        return Inserted(len(documents), set(), {})


class ListSource:
    transport: Literal["mqtt", "kafka"] = "kafka"

    def __init__(self, messages: list[Parsed]) -> None:
        self.messages = messages
        self.acknowledged: list[Parsed] = []

    def poll(self) -> list[Parsed]:
        return []

    def describe(self, message: Parsed) -> tuple[bytes, str, datetime]:
        return str(message.document["_id"]).encode(), "results", datetime.now(UTC)

    def done(self, batch: list[Parsed]) -> None:
        self.acknowledged += batch

    def tick(self) -> None: ...

    def release(self, finished: bool) -> None: ...


class SinkWrites:
    """The results sink's own write() as the loop's handler (messages arrive already parsed)."""

    what = "store predictions"

    def __init__(self, sink: ResultsSink) -> None:
        self.sink = sink

    def handle(self, message: Parsed) -> Parsed:
        return message

    def write(self, items: list[Parsed], attempt: Attempt) -> dict[int, Failure]:
        return self.sink.write(items, attempt)


class KeptRejections(DeadLetters):
    def __init__(self) -> None:
        self.kept: list[contract.Rejection] = []

    def write(self, rejections: list[contract.Rejection], attempt: Attempt) -> None:
        self.kept += rejections


def test_one_poison_message_is_rejected_and_every_other_is_written_once() -> None:
    sink = ResultsSink.__new__(ResultsSink)  # its write() alone, without a Kafka consumer
    store = PoisonStore("r2")
    sink.store = store  # type: ignore[assignment]
    sink.mongo = Dependency("mongodb")
    sink.aggregator = None
    documents = [Parsed(contract.COLLECTION_PREDICTION_ERRORS, {"_id": f"r{i}"}) for i in range(5)]
    source = ListSource(documents)
    dead = KeptRejections()
    loop: BatchLoop[Parsed, Parsed] = BatchLoop(source, SinkWrites(sink), dead, threading.Event(), (ConnectionError,))
    assert loop.process(documents)
    assert sorted(store.inserted) == ["r0", "r1", "r3", "r4"], "each other message written exactly once"
    assert [r.reason for r in dead.kept] == [
        "the pipeline could not handle this message: ValueError: cannot encode this document"
    ]
    assert source.acknowledged == documents
