"""BatchLoop with ``overlap`` (the bridge's): the next batch is handled while the one before it is written,
and still every batch is written and acknowledged in the order read, each only once durable.

A scripted source and handler record what happens, in order; where the test needs two things to happen at
once, one waits on an event the other sets, so the order asserted is the same on every run.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Literal
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import contract
from pipeline.batch import Attempt, BatchLoop, DeadLetters, Failure

WAIT_S = 5.0


class ScriptedSource:
    """Gives ``batches`` one per poll; once all are acknowledged (or none can be), sets ``stop``.

    Records acknowledgements and the release.
    """

    transport: Literal["mqtt", "kafka"] = "mqtt"

    def __init__(self, batches: list[list[str]], events: list[str], stop: threading.Event) -> None:
        self.batches = list(batches)
        self.total = sum(len(batch) for batch in batches)
        self.events = events
        self.stop = stop
        self.acked: list[str] = []
        self.released: list[bool] = []

    def poll(self) -> list[str]:
        if not self.batches:
            if len(self.acked) >= self.total:
                self.stop.set()
            time.sleep(0.001)
            return []
        return self.batches.pop(0)

    def describe(self, message: str) -> tuple[bytes, str, datetime]:
        return message.encode(), "sensors/s-1/readings", datetime.now(UTC)

    def done(self, batch: list[str]) -> None:
        self.events.append("ack " + ",".join(batch))
        self.acked += batch

    def tick(self) -> None: ...

    def release(self, finished: bool) -> None:
        self.released.append(finished)


class ScriptedHandler:
    """Handles a message into itself (``bad`` ones raise); each write pops its outcome from ``outcomes``."""

    what = "write"

    def __init__(
        self, events: list[str], outcomes: list[BaseException | None] | None = None, bad: frozenset[str] = frozenset()
    ) -> None:
        self.events = events
        self.outcomes = list(outcomes or [])
        self.bad = bad
        self.writing = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def handle(self, message: str) -> str:
        self.events.append(f"handle {message}")
        if message in self.bad:
            raise contract.ContractError(f"{message} is bad", "bad_field")
        return message

    def write(self, items: list[str], attempt: Attempt) -> dict[int, Failure]:
        with self.lock:
            self.writing += 1
            self.most_at_once = max(self.most_at_once, self.writing)
        try:
            outcome = self.outcomes.pop(0) if self.outcomes else None
            if outcome is not None:
                self.events.append("write failed " + ",".join(items))
                raise outcome
            self.events.append("write " + ",".join(items))
            return {}
        finally:
            with self.lock:
                self.writing -= 1


class KeptRejections(DeadLetters):
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def write(self, rejections: list[contract.Rejection], attempt: Attempt) -> None:
        self.events.append("reject " + ",".join(r.payload for r in rejections))


def make_loop(
    batches: list[list[str]], handler: ScriptedHandler | None = None, overlap: bool = True
) -> tuple[BatchLoop[str, str], ScriptedSource, ScriptedHandler, list[str], threading.Event]:
    events: list[str] = []
    stop = threading.Event()
    source = ScriptedSource(batches, events, stop)
    handler = handler or ScriptedHandler(events)
    handler.events = events
    loop: BatchLoop[str, str] = BatchLoop(
        source, handler, KeptRejections(events), stop, (ConnectionError,), overlap=overlap
    )
    return loop, source, handler, events, stop


class WaitsForTheNextBatch(ScriptedHandler):
    """Writing ``a1`` waits until ``b1`` has been handled: only an overlapped loop lets that happen."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(events)
        self.b1_handled = threading.Event()

    def handle(self, message: str) -> str:
        if message == "b1":
            self.b1_handled.set()
        return super().handle(message)

    def write(self, items: list[str], attempt: Attempt) -> dict[int, Failure]:
        if "a1" in items:
            self.b1_handled.wait(WAIT_S)
        return super().write(items, attempt)


def test_the_next_batch_is_handled_while_the_one_before_it_is_written_and_acknowledgements_stay_in_order() -> None:
    loop, source, handler, events, _ = make_loop([["a1", "a2"], ["b1"]], WaitsForTheNextBatch([]))
    loop.run()
    assert events == [
        "handle a1",
        "handle a2",
        "handle b1",  # while a1,a2 is being written
        "write a1,a2",
        "ack a1,a2",
        "write b1",
        "ack b1",
    ]
    assert source.released == [True]


def test_without_overlap_the_next_batch_waits_for_the_one_before_it() -> None:
    """The loop of the Kafka sources: a commit covers everything consumed, so nothing is read ahead."""
    loop, _, handler, events, _ = make_loop([["a1"], ["b1"]], overlap=False)
    loop.run()
    assert events == ["handle a1", "write a1", "ack a1", "handle b1", "write b1", "ack b1"]


def test_stopped_while_a_batch_is_retried_neither_it_nor_the_batch_read_after_it_is_acknowledged() -> None:
    events: list[str] = []
    stop_holder: list[threading.Event] = []

    class FailsUntilStopped(WaitsForTheNextBatch):
        def write(self, items: list[str], attempt: Attempt) -> dict[int, Failure]:
            if "a1" in items:
                self.b1_handled.wait(WAIT_S)
                stop_holder[0].set()
                self.events.append("write failed " + ",".join(items))
                raise ConnectionError("MongoDB is away")
            return super().write(items, attempt)

    loop, source, _, events, stop = make_loop([["a1"], ["b1"]], FailsUntilStopped(events))
    stop_holder.append(stop)
    with mock.patch("tenacity.nap.time"):
        loop.run()
    assert source.acked == [], "nothing durable, nothing acknowledged: the broker delivers both again"
    assert "write b1" not in events, "a batch is never written before the one read before it"
    assert source.released == [False]


def test_an_error_on_the_writing_thread_is_raised_by_run_and_nothing_after_it_is_acknowledged() -> None:
    loop, source, _, _, _ = make_loop([["a1"], ["b1"], ["c1"]])

    def done(batch: list[str]) -> None:
        raise RuntimeError("the broker's connection object broke")

    source.done = done  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="connection object broke"):
        loop.run()
    assert source.released == [False]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    failures=st.lists(st.booleans(), max_size=12),
    bad=st.sets(st.integers(0, 39), max_size=6),
)
def test_every_message_is_acknowledged_once_in_the_order_read_and_only_after_its_batch_was_written(
    sizes: list[int], failures: list[bool], bad: set[int]
) -> None:
    names = iter(f"m{i}" for i in range(sum(sizes)))
    batches = [[next(names) for _ in range(size)] for size in sizes]
    every = [m for batch in batches for m in batch]
    poison = frozenset(f"m{i}" for i in bad)
    outcomes: list[BaseException | None] = [ConnectionError("away") if f else None for f in failures]
    handler = ScriptedHandler([], outcomes, poison)
    loop, source, _, events, _ = make_loop(batches, handler)
    with mock.patch("tenacity.nap.time"):  # the retries' backoff, not waited out
        loop.run()
    assert source.acked == every, "each message once, in the order read"
    assert source.released == [True]
    assert handler.most_at_once <= 1, "one batch written at a time"
    for batch in batches:
        ack = events.index("ack " + ",".join(batch))
        good = [m for m in batch if m not in poison]
        if good:
            written = events.index("write " + ",".join(good))
            assert written < ack, f"{batch} acknowledged before it was written"
        rejected = [m for m in batch if m in poison]
        if rejected:
            assert events.index("reject " + ",".join(rejected)) < ack, "a bad message is kept before the ack"
    writes = [e for e in events if e.startswith("write ") and not e.startswith("write failed")]
    assert writes == ["write " + ",".join(g) for b in batches if (g := [m for m in b if m not in poison])]
