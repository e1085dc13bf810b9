"""The Kafka nodes of the local stack: names, ports and the controller quorum (pure functions).

``KAFKA_BROKERS=1`` (the default) runs one node, ``kafka``.
``KAFKA_BROKERS=3`` runs three, each a broker and a controller (KRaft combined
mode), named as Compose's services in ``docker-compose.cluster.yml``: ``kafka``,
``kafka-2``, ``kafka-3``. Node ``n`` listens on ``KAFKA_PORT + 2(n-1)`` for
clients and ``KAFKA_CONTROLLER_PORT + 2(n-1)`` for the quorum (9092/9093,
9094/9095, 9096/9097 by default), with its data in ``data/<name>/``. The
quorum is static: every node lists every controller in
``controller.quorum.voters``, as the Compose override does, and the storage
is formatted without ``--standalone`` (as the apache/kafka image formats it).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Each further node's ports are this far above the previous node's.
PORT_STEP = 2


@dataclass(frozen=True)
class KafkaNode:
    """One Kafka node: its KRaft node id, its name (server and Compose service), its two ports."""

    node_id: int
    port: int
    controller_port: int

    @property
    def name(self) -> str:
        """``kafka`` for node 1 (the single node of a one-broker stack), ``kafka-<n>`` for the others."""
        return node_name(self.node_id)

    @property
    def address(self) -> str:
        """Where clients reach it."""
        return f"127.0.0.1:{self.port}"

    def port_variables(self) -> dict[str, int]:
        """Its ports by variable (node 1's are KAFKA_PORT and KAFKA_CONTROLLER_PORT themselves)."""
        suffix = "" if self.node_id == 1 else f"_{self.node_id}"
        return {f"KAFKA_PORT{suffix}": self.port, f"KAFKA_CONTROLLER_PORT{suffix}": self.controller_port}


def node_name(node_id: int) -> str:
    """The server's (and Compose service's) name of a node id."""
    return "kafka" if node_id == 1 else f"kafka-{node_id}"


def kafka_nodes(brokers: int, port: int, controller_port: int) -> list[KafkaNode]:
    """The ``brokers`` nodes of a stack whose first node has ``port`` and ``controller_port``."""
    if brokers < 1:
        raise ValueError("KAFKA_BROKERS must be at least 1")
    return [
        KafkaNode(n, port + PORT_STEP * (n - 1), controller_port + PORT_STEP * (n - 1)) for n in range(1, brokers + 1)
    ]


def quorum_voters(nodes: list[KafkaNode]) -> str:
    """``controller.quorum.voters``: ``<id>@127.0.0.1:<controller port>`` of every node."""
    return ",".join(f"{node.node_id}@127.0.0.1:{node.controller_port}" for node in nodes)


def bootstrap_servers(nodes: list[KafkaNode]) -> str:
    """KAFKA_BOOTSTRAP_SERVERS for the services: every node, so any one of them may be down."""
    return ",".join(node.address for node in nodes)


def replication(brokers: int) -> tuple[int, int]:
    """Replication factor and min.insync.replicas of the pipeline's topics on ``brokers`` nodes.

    Three copies where there are three brokers (fewer on a smaller cluster), and
    writes need all but one of them: a broker may be lost without losing a
    confirmed record or refusing a write.
    """
    factor = min(3, brokers)
    return factor, max(1, factor - 1)
