"""Load for the benchmarks and the load test: many simulated sensors publishing over MQTT, QoS 1.

Each simulated sensor has its own MQTT connection whose client id is its
sensor id (the broker's ACL lets a client publish only to
``sensors/<its client id>/``). One worker process drives many sensors from a
single thread: paho's clients are run from one ``select`` loop (no network
thread per client), so a few processes can saturate the broker.

Two modes:

- ``rate=None``: publish ``per_sensor`` readings per sensor as fast as the broker
  acknowledges them (payloads generated before the clock starts);
- ``rate=R``: publish R readings per second in total for ``duration_s``,
  each reading's ``ts`` taken when it is published (for latency).

Reading ids are ``<sensor>-<n>``, so a checker knows every id that was sent.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.synchronize
import queue
import select
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from Data_collection.settings import DEMO_CSV
from pipeline import contract
from pipeline.csv_rows import read_rows

#: Unacknowledged publishes one client keeps in flight (the broker's limit is max_inflight_messages).
INFLIGHT = 100
#: A paced worker publishes what is due this often.
TICK_S = 0.01
#: A paced worker that has more than this many readings unacknowledged has fallen behind.
BACKLOG_LIMIT = 20_000


def reading_id(sensor: str, n: int) -> str:
    """The id of a sensor's n-th reading."""
    return f"{sensor}-{n}"


@functools.cache
def _values() -> tuple[bytes, ...]:
    """The values the real sensors replay (the demo CSV), so the model scores them as it would live."""
    return tuple(repr(row.value).encode() for row in read_rows(DEMO_CSV))


def payload(sensor: str, n: int, moment: datetime | None = None) -> bytes:
    """A valid reading's bytes, built without pydantic (the publisher must be cheap).

    The value comes from the demo CSV, the data the default model was fitted
    to, each sensor at its own place in it: 3-15 readings in a hundred, by
    the hour of the day, fall outside the forecast interval (an alert), as in a
    live deployment. Values made up without the model in mind would make
    about every other reading an alert.
    """
    ts = contract.iso(moment or datetime.now(UTC))
    values = _values()
    return b'{"id":"%s","sensor":"%s","ts":"%s","v":%s}' % (
        reading_id(sensor, n).encode(),
        sensor.encode(),
        ts.encode(),
        values[(n + zlib.crc32(sensor.encode())) % len(values)],
    )


@dataclass
class PublishReport:
    """What the publishers did (wall-clock times are ``time.time()``)."""

    sent: int = 0
    acked: int = 0
    refused: int = 0
    started_at: float = float("nan")
    last_sent_at: float = float("nan")
    last_acked_at: float = float("nan")
    errors: list[str] = field(default_factory=list)
    per_sensor: dict[str, int] = field(default_factory=dict)

    @property
    def send_rate(self) -> float:
        """Readings sent per second, from the start to the last send."""
        span = self.last_sent_at - self.started_at
        return self.sent / span if span > 0 else float("nan")

    @property
    def ack_rate(self) -> float:
        """Readings acknowledged per second, from the start to the last acknowledgement."""
        span = self.last_acked_at - self.started_at
        return self.acked / span if span > 0 else float("nan")

    def merge(self, other: Mapping[str, Any]) -> None:
        self.sent += other["sent"]
        self.acked += other["acked"]
        self.refused += other["refused"]
        self.started_at = _nanmin(self.started_at, other["started_at"])
        self.last_sent_at = _nanmax(self.last_sent_at, other["last_sent_at"])
        self.last_acked_at = _nanmax(self.last_acked_at, other["last_acked_at"])
        self.errors += other["errors"]
        self.per_sensor.update(other["per_sensor"])


def _nanmin(a: float, b: float) -> float:
    return _ignoring_nan(min, a, b)


def _nanmax(a: float, b: float) -> float:
    return _ignoring_nan(max, a, b)


def _ignoring_nan(pick: Callable[[float, float], float], a: float, b: float) -> float:
    """``pick(a, b)``, or the one that is a number when the other is NaN (not yet measured)."""
    if a != a:
        return b
    if b != b:
        return a
    return pick(a, b)


class _Sensor:
    """One simulated sensor: its own client, counters and next reading number."""

    def __init__(self, env: Mapping[str, str], sensor: str, first: int) -> None:
        self.sensor = sensor
        self.topic = contract.readings_topic(sensor)
        self.next = first
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self.connected = False
        self.last_ack = float("nan")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=sensor, protocol=mqtt.MQTTv5)
        client.username_pw_set(env["MQTT_SENSOR_USERNAME"], env["MQTT_SENSOR_PASSWORD"])
        client.max_inflight_messages_set(INFLIGHT)
        client.max_queued_messages_set(0)  # unbounded: the worker bounds its own backlog
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        self.client = client

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self.connected = not reason_code.is_failure

    def _on_publish(self, _c: Any, _u: Any, _mid: int, reason_code: Any, _p: Any) -> None:
        self.acked += 1
        self.last_ack = time.time()
        if reason_code.is_failure:
            self.refused += 1

    def publish(self, data: bytes) -> None:
        info = self.client.publish(self.topic, data, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish on {self.topic} failed: {mqtt.error_string(info.rc)}")
        self.sent += 1
        self.next += 1


def _pump(sensors: Sequence[_Sensor], timeout: float) -> None:
    """One round of the shared event loop: read what arrived, write what is queued, keep alive."""
    by_socket = {sock: s for s in sensors if (sock := s.client.socket()) is not None}
    if not by_socket:
        time.sleep(timeout)
        return
    writers = [sock for sock, s in by_socket.items() if s.client.want_write()]
    readable, writable, _ = select.select(list(by_socket), writers, [], timeout)
    for sock in readable:
        by_socket[sock].client.loop_read()
    for sock in writable:
        by_socket[sock].client.loop_write()


def _worker(
    env: dict[str, str],
    sensors: list[str],
    per_sensor: int,
    rate: float | None,
    duration_s: float,
    first: int,
    start_at: Any,
    ready: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[Any],
) -> None:
    """One publisher process: connect its sensors, wait for the common start, publish, wait for the acks.

    ``start_at`` is a shared double the parent sets (wall clock) once every
    worker has passed ``ready``; the report goes to ``results``.
    """
    report: dict[str, Any] = {
        "sent": 0,
        "acked": 0,
        "refused": 0,
        "started_at": float("nan"),
        "last_sent_at": float("nan"),
        "last_acked_at": float("nan"),
        "errors": [],
        "per_sensor": {},
    }
    clients = [_Sensor(env, sensor, first) for sensor in sensors]
    try:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        for sensor in clients:
            sensor.client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]), clean_start=True, properties=properties)
        deadline = time.monotonic() + 60
        while not all(s.connected for s in clients):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(not s.connected for s in clients)} sensors could not connect")
            _pump(clients, 0.05)
        prepared: list[list[bytes]] = []
        if rate is None:
            prepared = [[payload(s.sensor, first + n) for n in range(per_sensor)] for s in clients]
        ready.wait(timeout=180)
        while start_at.value <= 0 or time.time() < start_at.value:
            _pump(clients, 0.01)
        started = time.time()
        report["started_at"] = started
        if rate is None:
            _saturate(clients, prepared)
        else:
            _paced(clients, rate, duration_s, per_sensor)
        report["last_sent_at"] = time.time()
        drain_deadline = time.monotonic() + 120
        while any(s.acked < s.sent for s in clients) and time.monotonic() < drain_deadline:
            _pump(clients, 0.05)
    except Exception as error:  # noqa: BLE001 - reported to the parent, which decides
        report["errors"].append(f"{type(error).__name__}: {error}")
    finally:
        for sensor in clients:
            report["sent"] += sensor.sent
            report["acked"] += sensor.acked
            report["refused"] += sensor.refused
            report["per_sensor"][sensor.sensor] = sensor.sent
            report["last_acked_at"] = _nanmax(report["last_acked_at"], sensor.last_ack)
            try:
                sensor.client.disconnect()
                _pump([sensor], 0.01)
            except Exception:  # noqa: BLE001, S110 - best effort on the way out
                pass
        results.put(report)


def _saturate(clients: Sequence[_Sensor], prepared: list[list[bytes]]) -> None:
    """Hand every prepared payload to the clients, round robin, keeping each client's window full."""
    positions = [0] * len(clients)
    remaining = sum(len(p) for p in prepared)
    while remaining:
        for index, sensor in enumerate(clients):
            # Keep a little more than the in-flight window queued in paho, not everything.
            room = INFLIGHT * 2 - (sensor.sent - sensor.acked)
            take = min(room, len(prepared[index]) - positions[index])
            for data in prepared[index][positions[index] : positions[index] + take]:
                sensor.publish(data)
            positions[index] += max(take, 0)
            remaining -= max(take, 0)
        _pump(clients, 0.002)


def _paced(clients: Sequence[_Sensor], rate: float, duration_s: float, limit: int) -> None:
    """Publish ``rate`` readings per second over all clients for ``duration_s`` (or ``limit`` per sensor).

    What is due is sent every TICK_S, and the worker sleeps in between: a loop
    polling every few milliseconds takes half a core on its own, CPU the
    pipeline under test would lack. Each reading's ``ts`` is the moment it is
    handed to paho, so the tick adds nothing to the latency measured.
    """
    started = time.monotonic()
    due_total = 0
    turn = 0
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= duration_s:
            return
        due = int(elapsed * rate) - due_total
        backlog = sum(s.sent - s.acked for s in clients)
        if backlog < BACKLOG_LIMIT:
            now = datetime.now(UTC)
            for _ in range(due):
                sensor = clients[turn % len(clients)]
                turn += 1
                if limit and sensor.sent >= limit:
                    continue
                sensor.publish(payload(sensor.sensor, sensor.next, now))
            due_total += due
        # Write what was just queued and read the acknowledgements that came, then sleep till the next tick.
        _pump(clients, 0)
        time.sleep(max(0.0, TICK_S - (time.monotonic() - started - elapsed)))


def publish(
    env: Mapping[str, str],
    sensors: Sequence[str],
    *,
    processes: int,
    per_sensor: int = 0,
    rate: float | None = None,
    duration_s: float = 0.0,
    first: int = 0,
    timeout_s: float = 600.0,
) -> PublishReport:
    """Publish from ``processes`` worker processes sharing ``sensors``; returns when all are acknowledged.

    ``rate=None`` sends ``per_sensor`` readings per sensor as fast as the broker
    takes them; otherwise ``rate`` readings per second in total for
    ``duration_s`` (``per_sensor``, if set, caps each sensor). Reading numbers
    start at ``first``, so a second call with the same sensors can continue
    where the last stopped. The workers get ``duration_s`` plus ``timeout_s``
    to connect, publish and collect their acknowledgements.
    """
    if rate is None and per_sensor <= 0:
        raise ValueError("saturating needs per_sensor > 0")
    processes = max(1, min(processes, len(sensors)))
    context = multiprocessing.get_context("spawn")  # no fork of a process holding client threads
    results = context.Queue()
    ready = context.Barrier(processes + 1)
    groups = [list(sensors[i::processes]) for i in range(processes)]
    # Workers start together, a moment after every one has connected and prepared its payloads.
    shared_start = context.Value("d", 0.0)
    workers = []
    for group in groups:
        share = None if rate is None else rate * len(group) / len(sensors)
        worker = context.Process(
            target=_worker,
            args=(dict(env), group, per_sensor, share, duration_s, first, shared_start, ready, results),
            daemon=True,
        )
        worker.start()
        workers.append(worker)
    report = PublishReport()
    try:
        ready.wait(timeout=180)
        shared_start.value = time.time() + 0.2
        got = 0
        deadline = time.monotonic() + duration_s + timeout_s
        while got < len(workers):
            try:
                report.merge(results.get(timeout=1.0))
                got += 1
            except queue.Empty:
                if time.monotonic() > deadline:
                    report.errors.append(f"{len(workers) - got} publisher processes did not finish in time")
                    break
                if not any(w.is_alive() for w in workers) and results.empty():
                    report.errors.append("publisher processes ended without a report")
                    break
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    return report
