"""TLS on the Kafka cluster: three brokers with docker-compose.cluster-tls.yml's settings, all real, on one local stack.

The stack runs with ``KAFKA_BROKERS=3`` and ``STACK_TLS_DIR`` (certificates made
here): each node's properties come from docker-compose.yml, docker-compose.cluster.yml,
docker-compose.tls.yml and docker-compose.cluster-tls.yml, merged as Compose merges
them (tests/unit/test_compose_tls.py holds the two to each other). Every broker's
port speaks only TLS and answers only after a SCRAM login; the topics have three
replicas; and the broker leading most ``analytics`` partitions is killed -9
mid-stream, with the same checks as tests/faults/test_cluster.py: every reading
and prediction exactly once in MongoDB, nothing uncommitted, and the copies on
the topics within what README allows.

It shares the cluster module's worker (one xdist group): two three-broker stacks
at once would be six JVMs on two cores.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from localstack.cluster import kafka_nodes
from localstack.testing import throwaway_stack
from localstack.tls import make_certificates
from tests.conftest import Pipeline
from tests.faults.test_cluster import TIMINGS, check_replication, kill_the_analytics_leader, services
from tests.helpers import ARTIFACTS, TLS_CLUSTER_STACK_OFFSET, kafka_client
from tests.integration.test_tls import TlsStack, exchange, is_kafka_response, kafka_api_versions

pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("cluster")]

PORT_BASE = int(os.environ.get("PIPELINE_TEST_PORT_BASE", "21000")) + TLS_CLUSTER_STACK_OFFSET


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Three brokers over TLS, one bridge, one model service; stopped cleanly (exit 0) at the end."""
    started = time.monotonic()
    certificates = tmp_path_factory.mktemp("tls")
    make_certificates(certificates)
    state_dir = tmp_path_factory.mktemp("tls-cluster-stack")
    try:
        with throwaway_stack(state_dir, PORT_BASE, certificates, kafka_brokers=3) as (handle, env):
            with services(TlsStack(handle, env, state_dir), "x", "test_cluster_tls", replicas=1) as pipeline:
                TIMINGS["tls: stack and services up"] = time.monotonic() - started
                yield pipeline
    finally:
        logs = ARTIFACTS / "logs" / "tls-cluster-stack"
        shutil.rmtree(logs, ignore_errors=True)
        if (state_dir / "logs").exists():
            shutil.copytree(state_dir / "logs", logs)
    TIMINGS["tls: module"] = time.monotonic() - started


def brokers(pipeline: Pipeline) -> list[int]:
    env = pipeline.stack.env
    return [node.port for node in kafka_nodes(3, int(env["KAFKA_PORT"]), int(env["KAFKA_CONTROLLER_PORT"]))]


def test_every_broker_speaks_only_tls_and_answers_only_after_a_login(tls_cluster: Pipeline) -> None:
    env = tls_cluster.stack.env
    ca = Path(env["KAFKA_TLS_CA_FILE"])
    assert env["KAFKA_BOOTSTRAP_SERVERS"].count(",") == 2, "the services are given all three brokers"
    for port in brokers(tls_cluster):
        assert not is_kafka_response(exchange(port, kafka_api_versions())), f"{port} answered Kafka in plain text"
        # The certificate checks out against the CA and the address the broker advertises.
        context = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() is not None
        # TLS without a SCRAM login gets no metadata.
        no_login = AdminClient(
            {
                "bootstrap.servers": f"127.0.0.1:{port}",
                "security.protocol": "SSL",
                "ssl.ca.location": str(ca),
                "socket.timeout.ms": 3000,
            }
        )
        with pytest.raises(KafkaException):
            no_login.list_topics(timeout=5)
    logged_in = AdminClient(kafka_client(env)).list_topics(timeout=10)
    assert sorted(logged_in.brokers) == [1, 2, 3]


def test_the_topics_have_three_replicas_over_tls(tls_cluster: Pipeline) -> None:
    check_replication(tls_cluster)


def test_kill_the_broker_that_leads_the_analytics_partitions_over_tls(tls_cluster: Pipeline) -> None:
    # 10,000 readings (half the plain cluster's): TLS costs the two cores more, and one broker fault is the point.
    kill_the_analytics_leader(tls_cluster, "tls-a", per_sensor=2_500)
