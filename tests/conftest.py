"""Fixtures: the real local stack (started once per run on test ports) and isolated pipelines.

Tests that need servers use the ``stack`` fixture; it starts Mosquitto, Kafka,
FerretDB and mongo-express natively (see localstack/) on ports of their own,
with fresh random credentials, and stops them at the end. Each test gets its
own Kafka topics, consumer groups, sensor ids and MQTT client ids, so tests
never see each other's data.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from pymongo import MongoClient
from pymongo.database import Database

from localstack.services import ServiceProcess, dashboard_env, model_env, sensor_env, server_env
from localstack.testing import namespaced_topics, stack_ports, throwaway_stack
from tests.helpers import ARTIFACTS

# Property-based tests: a fixed example budget (HYPOTHESIS_MAX_EXAMPLES), no per-example deadline on
# a shared 2-core machine, and failing examples kept in the repository and replayed on every run.
settings.register_profile(
    "pipeline",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "300")),
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(Path(__file__).parent / "hypothesis-examples")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("pipeline")

#: Ports of the test stack: away from the defaults, so a `make run` stack can run beside it;
#: PIPELINE_TEST_PORT_BASE moves them all (two test runs on one machine).
_BASE = int(os.environ.get("PIPELINE_TEST_PORT_BASE", "21000"))
TEST_PORTS = stack_ports(_BASE)


@dataclass
class RunningStack:
    """The started stack: its handle and the environment the services need."""

    stack: Any
    env: dict[str, str]
    state_dir: Path

    def mongo(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.env["MONGO_URI"], tz_aware=True, serverSelectionTimeoutMS=10_000)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The local stack's servers, started for this test run and stopped after it."""
    state_dir = tmp_path_factory.mktemp("stack")
    with throwaway_stack(state_dir, _BASE) as (handle, env):
        yield RunningStack(handle, env, state_dir)


@dataclass
class Pipeline:
    """One test's pipeline: its own topics, groups and ids, and the processes it started."""

    stack: RunningStack
    name: str
    log_dir: Path
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        return namespaced_topics(self.name)

    def sensor_id(self, n: int | str) -> str:
        return f"{self.name}-s{n}"

    @property
    def db(self) -> Database[dict[str, Any]]:
        return self.stack.mongo()[self.stack.env["MONGO_DATABASE"]]

    def _start(self, name: str, module: str, env: dict[str, str], wait: bool = False) -> ServiceProcess:
        process = ServiceProcess(name, module, env, self.log_dir / f"{name}.log")
        process.start()
        self.processes.append(process)
        if wait:
            self.wait_ready(process)
        return process

    def wait_ready(self, process: ServiceProcess, timeout_s: float = 90.0, port: str | None = None) -> None:
        """Wait until the service's /readyz (on HEALTH_PORT, or ``port``) says it is connected to everything."""
        url = f"http://127.0.0.1:{port or process.env['HEALTH_PORT']}/readyz"

        def ready() -> bool:
            if not process.alive:
                pytest.fail(f"{process.name} exited with {process.returncode}:\n{process.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(ready, timeout_s, f"{process.name} to be ready", self.logs)

    def start_server(self, replica: int = 1, wait: bool = True, **overrides: str) -> ServiceProcess:
        """Start a bridge replica; by default wait until it is subscribed and connected."""
        env = server_env(
            self.stack.env,
            **self.topics,
            MQTT_CLIENT_ID=f"{self.name}-bridge-{replica}",
            MQTT_SHARE_GROUP=f"{self.name}-bridge",
            KAFKA_RESULTS_GROUP_ID=f"{self.name}-results",
            LOG_LEVEL="DEBUG" if os.environ.get("PIPELINE_TEST_DEBUG") else "INFO",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._start(f"server-{replica}", "Server", env, wait=wait)

    def start_model(self, replica: int = 1, wait: bool = True, **overrides: str) -> ServiceProcess:
        """Start a model-service replica; by default wait until it is ready."""
        env = model_env(
            self.stack.env,
            **self.topics,
            KAFKA_GROUP_ID=f"{self.name}-models",
            KAFKA_CLIENT_ID=f"{self.name}-model-{replica}",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._start(f"model-{replica}", "Models_analysis", env, wait=wait)

    def start_sensor(self, n: int | str, **overrides: str) -> ServiceProcess:
        env = sensor_env(self.stack.env, self.sensor_id(n), **{"HEALTH_PORT": "0", **overrides})
        return self._start(f"sensor-{n}", "Data_collection", env)

    def start_dashboard(self, wait: bool = True, **overrides: str) -> ServiceProcess:
        """Start the dashboard on a free port (``process.env["DASHBOARD_PORT"]``); by default wait until ready."""
        env = dashboard_env(self.stack.env, **{"DASHBOARD_PORT": str(free_port()), **overrides})
        process = self._start("dashboard", "Dashboard", env)
        if wait:
            # The dashboard answers /readyz on its own port, beside the page.
            self.wait_ready(process, port=env["DASHBOARD_PORT"])
        return process

    def stop_all(self) -> dict[str, int | None]:
        # Sensors first, then the rest, as an operator would.
        ordered = sorted(self.processes, key=lambda p: not p.name.startswith("sensor"))
        return {p.name: p.stop() for p in ordered}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(60)}" for p in self.processes)


@pytest.fixture
def pipeline(stack: RunningStack, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """A fresh, isolated pipeline namespace; every process it started is stopped after the test."""
    name = f"t{uuid.uuid4().hex[:8]}"
    log_dir = ARTIFACTS / "logs" / request.node.name.replace("/", "_")
    shutil.rmtree(log_dir, ignore_errors=True)
    instance = Pipeline(stack, name, log_dir)
    yield instance
    codes = instance.stop_all()
    crashed = {n: c for n, c in codes.items() if c not in (0, None)}
    if crashed and not getattr(request.node, "expects_crash", False):
        pytest.fail(f"services did not stop cleanly: {crashed}\n{instance.logs()}")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, on_timeout: Callable[[], str] | None = None
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.25)
    detail = on_timeout() if on_timeout else ""
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})\n{detail}")


def holds_for(
    condition: Callable[[], Any], seconds: float, what: str, on_failure: Callable[[], str] | None = None
) -> None:
    """Poll ``condition`` for ``seconds``; fail with ``what`` the first time it is false.

    For what must *stay* true (nothing more arrives, nothing is doubled): checked all along the
    window instead of once after a fixed sleep, so a breach that comes and goes is caught too.
    """
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if not value:
            detail = on_failure() if on_failure else ""
            pytest.fail(f"{what} stopped holding (got {value!r})\n{detail}")
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)
