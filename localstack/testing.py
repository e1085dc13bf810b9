"""A throwaway local stack for tests and benchmarks: its own ports, state directory and random secrets.

The test suite (``tests/conftest.py``) and the benchmarks (``bench/``) both start
Mosquitto, Kafka, FerretDB and mongo-express this way, away from the default
ports so a ``make run`` stack (or another test run) can run beside them::

    with throwaway_stack(state_dir, port_base=25000) as (stack, env):
        ...  # env holds what the services need: ports, credentials, MONGO_URI
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localstack.stack import Stack, StackConfig

#: Offsets from a port base: base 21000 gives MQTT on 21883, Kafka on 21092, and so on.
PORT_OFFSETS = {
    "MQTT_PORT": 883,
    "MQTT_WS_PORT": 884,
    "KAFKA_PORT": 92,
    "KAFKA_CONTROLLER_PORT": 93,
    "MONGO_PORT": 17,
    "MONGO_EXPRESS_PORT": 81,
}


#: Each pytest-xdist worker's stacks are this many ports above the previous worker's.
WORKER_PORT_STRIDE = 2000


def worker_port_base(base: int, worker: str | None) -> int:
    """The port base of pytest-xdist worker ``worker`` ("gw0", "gw1", ...; None outside xdist)."""
    return base + WORKER_PORT_STRIDE * int((worker or "gw0").removeprefix("gw"))


def stack_ports(base: int) -> dict[str, str]:
    """The stack's port variables for a port base (see :data:`PORT_OFFSETS`)."""
    return {name: str(base + offset) for name, offset in PORT_OFFSETS.items()}


def throwaway_settings(state_dir: Path, port_base: int) -> dict[str, str]:
    """Environment variables for a fresh stack: ports from ``port_base``, ``state_dir``, random passwords."""
    return {
        **stack_ports(port_base),
        "STACK_DIR": str(state_dir),
        "MONGO_DATABASE": "sensor_pipeline",
        "MONGO_APP_USERNAME": "pipeline",
        "MONGO_APP_PASSWORD": secrets.token_urlsafe(16),
        "MQTT_SERVER_USERNAME": "bridge",
        "MQTT_SERVER_PASSWORD": secrets.token_urlsafe(16),
        # The bridge's client ids: the default, and the tests' and benchmarks' "<namespace>-bridge-<n>".
        "MQTT_SERVER_CLIENT_IDS": "bridge-*,*-bridge-*",
        "MQTT_SENSOR_USERNAME": "sensor",
        "MQTT_SENSOR_PASSWORD": secrets.token_urlsafe(16),
        # Two sensors with users of their own (tests/integration/test_security.py).
        "MQTT_SENSOR_ACCOUNTS": ",".join(f"own-{n}:{secrets.token_urlsafe(16)}" for n in (1, 2)),
        "MONGO_EXPRESS_USERNAME": "admin",
        "MONGO_EXPRESS_PASSWORD": secrets.token_urlsafe(16),
    }


def tls_settings(tls_dir: Path) -> dict[str, str]:
    """What switches a throwaway stack's TLS on: the certificates' folder and Kafka's SCRAM passwords."""
    return {
        "STACK_TLS_DIR": str(tls_dir),
        "KAFKA_SERVER_PASSWORD": secrets.token_urlsafe(16),
        "KAFKA_MODEL_PASSWORD": secrets.token_urlsafe(16),
        "KAFKA_BROKER_PASSWORD": secrets.token_urlsafe(16),
    }


@contextmanager
def throwaway_stack(
    state_dir: Path, port_base: int, tls_dir: Path | None = None, kafka_brokers: int = 1
) -> Iterator[tuple[Stack, dict[str, str]]]:
    """Start the servers with :func:`throwaway_settings`; stop them and restore ``os.environ`` on exit.

    With ``tls_dir`` (a folder :func:`localstack.tls.make_certificates` wrote) every
    server speaks only TLS, Kafka wants SCRAM logins, and the environment yielded
    carries the CA and the logins for the services (:func:`tls_settings`).
    ``kafka_brokers=3`` runs a Kafka cluster of three nodes (KAFKA_BROKERS; their
    ports follow KAFKA_PORT two apart: base+92 to base+97), and the environment
    then lists all three and asks the services for topics with three replicas.

    Yields the stack's handle and the environment the services need (the
    settings plus :meth:`Stack.service_env`; it holds credentials: do not log
    it). The stack always runs its own FerretDB: a ``MONGO_URI`` in the
    caller's environment is ignored.
    """
    settings = throwaway_settings(state_dir, port_base)
    settings["KAFKA_BROKERS"] = str(kafka_brokers)
    if tls_dir is not None:
        settings.update(tls_settings(tls_dir))
    # Read from a copy: the caller's environment is left as it was (tests of the configuration run beside it).
    environ = {k: v for k, v in os.environ.items() if k != "MONGO_URI" and (tls_dir or k != "STACK_TLS_DIR")}
    handle = Stack(StackConfig.from_env({**environ, **settings}))
    handle.start()
    try:
        yield handle, {**settings, **handle.service_env()}
    finally:
        handle.stop()


def namespaced_topics(name: str) -> dict[str, str]:
    """Kafka topic settings of their own for one test or benchmark namespace (``<name>.analytics`` ...)."""
    return {
        "KAFKA_TOPIC_READINGS": f"{name}.analytics",
        "KAFKA_TOPIC_RESULTS": f"{name}.analytics_results",
        "KAFKA_TOPIC_DEADLETTER": f"{name}.deadletter",
        "KAFKA_TOPIC_ALERTS": f"{name}.alerts",
    }


def compose_cli() -> Path:
    """The real Docker Compose CLI that localstack/install.sh built (its version from localstack/compose/go.mod)."""
    go_mod = Path(__file__).parent / "compose" / "go.mod"
    version = next(
        line.split()[1]
        for line in go_mod.read_text().splitlines()
        if line.strip().startswith("github.com/docker/compose/v5 ")
    )
    cache = StackConfig.from_env(require_secrets=False).cache_dir
    return cache / f"compose-{version}" / "docker-compose"
