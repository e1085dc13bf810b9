"""The bridge's ceiling: a bare paho subscriber at QoS 1 that only counts what it receives.

``bench.bridge`` sets it beside the bridge on the same readings: what an MQTT
subscriber on paho reaches on this machine, with nothing stored or forwarded.
It runs on paho's own client, on the bridge's (``pipeline.mqtt.Client``,
which reads the socket in blocks and decodes the common PUBLISH itself), or on
gmqtt (an asyncio client, measured as the alternative to paho).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import gmqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.machine import rusage_cpu_seconds
from pipeline.mqtt import Client as PipelineClient


@dataclass
class SubscribeReport:
    """What the bare subscriber received (wall-clock times are ``time.time()``)."""

    received: int
    first_at: float
    last_at: float
    error: str | None = None
    #: CPU seconds the subscriber used from its subscription to its end, and in its whole life (with its start-up).
    cpu_s: float = float("nan")
    cpu_s_total: float = float("nan")


#: The MQTT clients a bare subscriber can run on.
ClientName = Literal["paho", "pipeline", "gmqtt"]


class _Tally:
    """What a bare subscriber saw: how many messages, when, and its CPU from its subscription on."""

    def __init__(self, ready: multiprocessing.synchronize.Event) -> None:
        self.state = {"received": 0, "first_at": float("nan"), "last_at": float("nan"), "cpu_at_ready": float("nan")}
        self._ready = ready

    def subscribed(self) -> None:
        self.state["cpu_at_ready"] = rusage_cpu_seconds(resource.RUSAGE_SELF)
        self._ready.set()

    def received(self) -> int:
        """Count one message; returns the count."""
        now = time.time()
        if self.state["received"] == 0:
            self.state["first_at"] = now
        self.state["received"] += 1
        self.state["last_at"] = now
        return int(self.state["received"])

    def report(self, results: multiprocessing.Queue[Any], error: str | None) -> None:
        total = rusage_cpu_seconds(resource.RUSAGE_SELF)
        results.put({**self.state, "error": error, "cpu_s": total - self.state["cpu_at_ready"], "cpu_s_total": total})


def _subscriber(
    env: dict[str, str],
    topic_filter: str,
    expected: int,
    timeout_s: float,
    ready: multiprocessing.synchronize.Event,
    results: multiprocessing.Queue[Any],
    client_name: ClientName,
) -> None:
    """A bare subscriber at QoS 1 (the client acknowledges each message after on_message): the ceiling."""
    tally = _Tally(ready)
    if client_name == "gmqtt":
        tally.report(results, asyncio.run(_gmqtt_subscriber(env, topic_filter, expected, timeout_s, tally)))
        return
    # The bridge's user may use only the bridge's client ids (the throwaway stack's "*-bridge-*").
    make = PipelineClient if client_name == "pipeline" else mqtt.Client
    client = make(CallbackAPIVersion.VERSION2, client_id=f"bare-bridge-{time.time_ns()}", protocol=mqtt.MQTTv5)
    client.username_pw_set(env["MQTT_SERVER_USERNAME"], env["MQTT_SERVER_PASSWORD"])

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if not reason_code.is_failure:
            c.subscribe(topic_filter, qos=1)

    def on_subscribe(_c: Any, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        if not any(code.is_failure for code in codes):
            tally.subscribed()

    def on_message(_c: Any, _u: Any, _message: Any) -> None:
        tally.received()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    error = None
    try:
        client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]), clean_start=True)
        deadline = time.monotonic() + timeout_s
        while tally.state["received"] < expected and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        client.disconnect()
    except Exception as failure:  # noqa: BLE001 - reported to the parent
        error = f"{type(failure).__name__}: {failure}"
    tally.report(results, error)


async def _gmqtt_subscriber(
    env: dict[str, str], topic_filter: str, expected: int, timeout_s: float, tally: _Tally
) -> str | None:
    """The same subscriber on gmqtt, MQTT 5; returns what went wrong, if anything.

    ``optimistic_acknowledgement=False``: gmqtt sends the PUBACK once ``on_message``
    has returned its reason code, as paho does (gmqtt's default acknowledges first).
    gmqtt 0.8.0 does that only for a coroutine callback (a plain function's PUBACK is
    never sent), so ``on_message`` is ``async``: a task per message, which is what
    acknowledging after the work costs on gmqtt.
    """
    done = asyncio.Event()

    def on_subscribe(_c: Any, _mid: int, codes: Any, _p: Any) -> None:
        if all(code < 0x80 for code in codes):
            tally.subscribed()

    async def on_message(_c: Any, _topic: str, _payload: bytes, _qos: int, _p: Any) -> int:
        if tally.received() >= expected:
            done.set()
        return 0  # success: gmqtt acknowledges

    client = gmqtt.Client(f"bare-bridge-{time.time_ns()}", clean_session=True, optimistic_acknowledgement=False)
    client.set_auth_credentials(env["MQTT_SERVER_USERNAME"], env["MQTT_SERVER_PASSWORD"])
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    error = None
    try:
        await client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]), version=gmqtt.constants.MQTTv50)
        client.subscribe(topic_filter, qos=1)
        await asyncio.wait_for(done.wait(), timeout_s)
        await client.disconnect()
    except Exception as failure:  # noqa: BLE001 - reported to the parent
        error = f"{type(failure).__name__}: {failure}"
    return error


class BareSubscriber:
    """Runs :func:`_subscriber` in its own process (so it has a core's worth of GIL to itself)."""

    def __init__(
        self,
        env: Mapping[str, str],
        topic_filter: str,
        expected: int,
        timeout_s: float = 300.0,
        *,
        client: ClientName = "paho",
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready = context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=_subscriber,
            args=(dict(env), topic_filter, expected, timeout_s, self._ready, self._results, client),
            daemon=True,
        )
        self._timeout_s = timeout_s

    def start(self) -> None:
        """Start it and wait until the broker has confirmed the subscription."""
        self._process.start()
        if not self._ready.wait(60):
            self._process.kill()
            raise RuntimeError("the bare subscriber did not subscribe within 60 s")

    def result(self) -> SubscribeReport:
        """Wait for it to receive everything (or time out) and return what it saw."""
        try:
            got = self._results.get(timeout=self._timeout_s + 30)
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
        return SubscribeReport(
            got["received"], got["first_at"], got["last_at"], got["error"], got["cpu_s"], got["cpu_s_total"]
        )
