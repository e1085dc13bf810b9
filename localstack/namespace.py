"""One isolated pipeline on a throwaway stack: the one harness the tests and the benchmarks start services with.

A namespace has Kafka topics, consumer groups, MQTT client ids and sensor ids of
its own, so many run on one stack (:func:`localstack.testing.throwaway_stack`)
without seeing each other's readings. Its services are real processes
(:class:`localstack.services.ServiceProcess`), configured as Compose configures
the containers. ``tests/conftest.py``'s ``pipeline`` fixture and
``bench.namespace`` add what each needs (a pytest failure, a database handle;
a ``with`` block) to this class.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from localstack.services import ServiceProcess, dashboard_env, model_env, sensor_env, server_env
from localstack.testing import namespaced_topics

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NotReady(RuntimeError):
    """A service exited, or did not say it was ready in time; the message holds its log's tail."""


@dataclass
class Namespace:
    """One isolated pipeline: its own topics, groups and ids on the stack ``env`` describes, and its processes."""

    env: dict[str, str]
    name: str
    log_dir: Path
    processes: list[ServiceProcess] = field(default_factory=list)
    bridge_ids: list[str] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        """The Kafka topic settings of this namespace."""
        return namespaced_topics(self.name)

    def sensor_id(self, n: int | str, prefix: str = "s") -> str:
        """Sensor ``n``'s id in this namespace."""
        return f"{self.name}-{prefix}{n}"

    def sensor_ids(self, count: int, prefix: str = "s") -> list[str]:
        """``count`` sensor ids of this namespace."""
        return [self.sensor_id(i, prefix) for i in range(count)]

    def start(self, name: str, module: str, env: dict[str, str]) -> ServiceProcess:
        """Start ``python -m module`` with ``env``, logging to ``log_dir/<name>.log``; not waited for."""
        process = ServiceProcess(name, module, env, self.log_dir / f"{name}.log")
        process.start()
        self.processes.append(process)
        return process

    def start_server(self, replica: int = 1, wait: bool = False, **overrides: str) -> ServiceProcess:
        """A bridge replica (its own MQTT_CLIENT_ID, the namespace's MQTT_SHARE_GROUP); ``wait``: until ready."""
        client_id = f"{self.name}-bridge-{replica}"
        self.bridge_ids.append(client_id)
        env = server_env(
            self.env,
            **self.topics,
            MQTT_CLIENT_ID=client_id,
            MQTT_SHARE_GROUP=f"{self.name}-bridge",
            KAFKA_RESULTS_GROUP_ID=f"{self.name}-results",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._started(self.start(f"server-{replica}", "Server", env), wait)

    def start_model(self, replica: int = 1, wait: bool = False, **overrides: str) -> ServiceProcess:
        """A model-service replica in the namespace's consumer group; ``wait``: until ready."""
        env = model_env(
            self.env,
            **self.topics,
            KAFKA_GROUP_ID=f"{self.name}-models",
            KAFKA_CLIENT_ID=f"{self.name}-model-{replica}",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._started(self.start(f"model-{replica}", "Models_analysis", env), wait)

    def start_sensor(self, sensor_id: str, name: str | None = None, **overrides: str) -> ServiceProcess:
        """A real sensor process (Data_collection) publishing as ``sensor_id``, with a health port of its own."""
        env = sensor_env(self.env, sensor_id, **{"HEALTH_PORT": str(free_port()), **overrides})
        return self.start(name or f"sensor-{sensor_id}", "Data_collection", env)

    def start_dashboard(self, wait: bool = False, **overrides: str) -> ServiceProcess:
        """The live page on a free port (``process.env["DASHBOARD_PORT"]``, which also answers /readyz)."""
        env = dashboard_env(self.env, **{"DASHBOARD_PORT": str(free_port()), **overrides})
        return self._started(self.start("dashboard", "Dashboard", env), wait)

    def _started(self, process: ServiceProcess, wait: bool) -> ServiceProcess:
        if wait:
            self.wait_ready(process)
        return process

    @staticmethod
    def health_port(process: ServiceProcess) -> str:
        """Where ``process`` answers /readyz: the dashboard beside its page, the others on HEALTH_PORT."""
        return process.env["DASHBOARD_PORT" if process.module == "Dashboard" else "HEALTH_PORT"]

    def ready(self, process: ServiceProcess) -> bool:
        """Whether ``process`` answers /readyz with 200 now; :class:`NotReady` if it has exited."""
        if not process.alive:
            raise NotReady(f"{process.name} exited with {process.returncode}:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port(process)}/readyz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait_ready(self, process: ServiceProcess, timeout_s: float = 120.0) -> None:
        """Wait until ``process`` is connected to everything it needs; :class:`NotReady` past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.ready(process):
            if time.monotonic() > deadline:
                raise NotReady(f"{process.name} not ready after {timeout_s:.0f}s:\n{process.log_tail()}")
            time.sleep(0.25)

    def stop_all(self) -> dict[str, int | None]:
        """Stop every process (sensors first, as an operator would), then end the bridges' MQTT sessions.

        Returns each process's exit code; the processes stay listed (for
        :meth:`logs`). A stopped bridge's persistent session would otherwise
        stay on the broker and keep collecting its share of every later
        namespace's readings.
        """
        ordered = sorted(self.processes, key=lambda p: not p.name.startswith("sensor"))
        codes = {p.name: p.stop() for p in ordered}
        for name, code in codes.items():
            if code not in (0, None):
                logger.warning("%s stopped with exit code %s; log: %s", name, code, self.log_dir / f"{name}.log")
        for client_id in self.bridge_ids:
            clear_session(self.env, client_id)
        self.bridge_ids.clear()
        return codes

    def logs(self) -> str:
        """The tail of every process's log, for a failure message."""
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(60)}" for p in self.processes)


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
