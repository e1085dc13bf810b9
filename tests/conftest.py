"""Fixtures: the real local stack (started once per run on test ports) and isolated pipelines.

Tests that need servers use the ``stack`` fixture; it starts Mosquitto, Kafka,
FerretDB and mongo-express natively (see localstack/) on ports of their own,
with fresh random credentials, and stops them at the end. Each test gets its
own Kafka topics, consumer groups, sensor ids and MQTT client ids, so tests
never see each other's data: a :class:`localstack.namespace.Namespace`, the
harness the benchmarks start their services with too.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from pymongo import MongoClient
from pymongo.database import Database

from localstack.namespace import Namespace, NotReady
from localstack.services import ServiceProcess
from localstack.testing import stack_ports, throwaway_stack, worker_port_base
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
#: Each pytest-xdist worker (`make test` runs two) has a stack of its own, WORKER_PORT_STRIDE above
#: the one before; the modules that start stacks of their own read the variable, so they move with it.
_BASE = worker_port_base(int(os.environ.get("PIPELINE_TEST_PORT_BASE", "21000")), os.environ.get("PYTEST_XDIST_WORKER"))
os.environ["PIPELINE_TEST_PORT_BASE"] = str(_BASE)
TEST_PORTS = stack_ports(_BASE)


#: The longest tests first, so that with two workers neither is left alone with one at the end.
_FIRST = ("faults", "e2e", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        marks = {mark.name for mark in item.iter_markers()}
        return next((i for i, name in enumerate(_FIRST) if name in marks), len(_FIRST))

    items.sort(key=rank)  # stable: each kind keeps its own order


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


class Pipeline(Namespace):
    """One test's pipeline (:class:`localstack.namespace.Namespace`, as the benchmarks'): services started
    ready by default, a failed wait failing the test, and the stack's database at hand."""

    def __init__(self, stack: RunningStack, name: str, log_dir: Path) -> None:
        super().__init__(stack.env, name, log_dir)
        self.stack = stack

    @property
    def db(self) -> Database[dict[str, Any]]:
        return self.stack.mongo()[self.stack.env["MONGO_DATABASE"]]

    def wait_ready(self, process: ServiceProcess, timeout_s: float = 90.0) -> None:
        """Wait until the service's /readyz says it is connected to everything; fail the test if it exits."""

        def ready() -> bool:
            try:
                return self.ready(process)
            except NotReady as error:
                pytest.fail(str(error))

        wait_for(ready, timeout_s, f"{process.name} to be ready", self.logs)

    def start_server(self, replica: int = 1, wait: bool = True, **overrides: str) -> ServiceProcess:
        """Start a bridge replica; by default wait until it is subscribed and connected."""
        level = "DEBUG" if os.environ.get("PIPELINE_TEST_DEBUG") else "INFO"
        return super().start_server(replica, wait, **{"LOG_LEVEL": level, **overrides})

    def start_model(self, replica: int = 1, wait: bool = True, **overrides: str) -> ServiceProcess:
        """Start a model-service replica; by default wait until it is ready."""
        return super().start_model(replica, wait, **overrides)

    # Tests name their sensors by number (sensor n of the test's pipeline), the benchmarks by id.
    def start_sensor(self, n: int | str, name: str | None = None, **overrides: str) -> ServiceProcess:  # type: ignore[override]
        """Start sensor ``n`` of this pipeline (its id :meth:`sensor_id`)."""
        return super().start_sensor(self.sensor_id(n), name or f"sensor-{n}", **overrides)

    def start_dashboard(self, wait: bool = True, **overrides: str) -> ServiceProcess:
        """Start the dashboard on a free port (``process.env["DASHBOARD_PORT"]``); by default wait until ready."""
        return super().start_dashboard(wait, **overrides)


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
