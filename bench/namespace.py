"""One isolated pipeline inside the benchmarks' stack: its own topics, groups, client ids and sensor ids.

:meth:`bench.common.Bench.namespace` makes one; its services are started as real
processes (:class:`localstack.services.ServiceProcess`) and stopped, sessions and
all, when the block of :meth:`Namespace.running` ends, so the next benchmark on
the same stack sees none of its readings.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from localstack.services import ServiceProcess, model_env, sensor_env, server_env
from localstack.testing import namespaced_topics

if TYPE_CHECKING:
    from bench.common import Bench

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Namespace:
    """One isolated pipeline: its own Kafka topics and groups, MQTT client ids and sensor ids."""

    bench: Bench
    name: str
    processes: list[ServiceProcess] = field(default_factory=list)
    bridge_ids: list[str] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        """The Kafka topic settings of this namespace."""
        return namespaced_topics(self.name)

    def sensor_ids(self, count: int, prefix: str = "s") -> list[str]:
        """``count`` sensor ids of this namespace."""
        return [f"{self.name}-{prefix}{i}" for i in range(count)]

    def _start(self, name: str, module: str, env: dict[str, str]) -> ServiceProcess:
        process = ServiceProcess(name, module, env, self.bench.log_dir / self.name / f"{name}.log")
        process.start()
        self.processes.append(process)
        return process

    def start_server(self, replica: int = 1, **overrides: str) -> ServiceProcess:
        """A bridge replica (MQTT_CLIENT_ID distinct per replica, one MQTT_SHARE_GROUP); not yet waited for."""
        client_id = f"{self.name}-bridge-{replica}"
        self.bridge_ids.append(client_id)
        env = server_env(
            self.bench.env,
            **self.topics,
            MQTT_CLIENT_ID=client_id,
            MQTT_SHARE_GROUP=f"{self.name}-bridge",
            KAFKA_RESULTS_GROUP_ID=f"{self.name}-results",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._start(f"server-{replica}", "Server", env)

    def start_model(self, replica: int = 1, **overrides: str) -> ServiceProcess:
        """A model-service replica in this namespace's consumer group; not yet waited for."""
        env = model_env(
            self.bench.env,
            **self.topics,
            KAFKA_GROUP_ID=f"{self.name}-models",
            KAFKA_CLIENT_ID=f"{self.name}-model-{replica}",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._start(f"model-{replica}", "Models_analysis", env)

    def start_sensor(self, sensor_id: str, **overrides: str) -> ServiceProcess:
        """A real sensor process (Data_collection) with its own health and metrics port."""
        env = sensor_env(self.bench.env, sensor_id, **{"HEALTH_PORT": str(free_port()), **overrides})
        return self._start(f"sensor-{sensor_id}", "Data_collection", env)

    def wait_ready(self, process: ServiceProcess, timeout_s: float = 120.0) -> None:
        """Wait until the process's /readyz answers 200; RuntimeError with its log if it dies or times out."""
        url = f"http://127.0.0.1:{process.env['HEALTH_PORT']}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not process.alive:
                raise RuntimeError(f"{process.name} exited with {process.returncode}:\n{process.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{process.name} not ready after {timeout_s:.0f}s:\n{process.log_tail()}")

    def stop_all(self) -> None:
        """Stop every process (sensors first), then drop the bridges' persistent MQTT sessions.

        A stopped bridge's session would otherwise stay on the broker and keep
        collecting its share of every later benchmark's readings.
        """
        ordered = sorted(self.processes, key=lambda p: not p.name.startswith("sensor"))
        for process in ordered:
            code = process.stop()
            if code not in (0, None):
                logger.warning("%s stopped with exit code %s; log: %s", process.name, code, process.log_path)
        self.processes.clear()
        for client_id in self.bridge_ids:
            clear_session(self.bench.env, client_id)
        self.bridge_ids.clear()

    @contextlib.contextmanager
    def running(self) -> Iterator[Namespace]:
        """Stop everything this namespace started when the block ends, however it ends."""
        try:
            yield self
        finally:
            self.stop_all()


def clear_session(env: dict[str, str], client_id: str) -> None:
    """End a persistent MQTT session: connect with its client id, clean start, no expiry, then leave."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(env["MQTT_SERVER_USERNAME"], env["MQTT_SERVER_PASSWORD"])
    try:
        client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]), clean_start=True, properties=properties)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        client.disconnect()
        client.loop_stop()
    except OSError as error:
        logger.warning("could not clear the MQTT session of %s: %s", client_id, error)
