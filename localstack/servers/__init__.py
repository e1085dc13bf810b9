"""The four servers, one module each: how to configure, run and probe it (see :class:`Server`).

Each renders its configuration from the source Compose uses, so the two cannot
drift: Mosquitto from ``mosquitto/mosquitto.conf``, Kafka from the ``kafka``
service of ``docker-compose.yml``. FerretDB (standing in for MongoDB) and
mongo-express take command-line options and environment variables.
"""

from __future__ import annotations

from localstack.servers.base import Server
from localstack.servers.ferretdb import FerretDB
from localstack.servers.kafka import Kafka
from localstack.servers.mongo_express import MongoExpress
from localstack.servers.mosquitto import Mosquitto

#: Every server the stack can run, by name, in start order.
SERVER_CLASSES: dict[str, type[Server]] = {
    "ferretdb": FerretDB,
    "mongo-express": MongoExpress,
    "kafka": Kafka,
    "mosquitto": Mosquitto,
}
SERVER_NAMES = tuple(SERVER_CLASSES)

__all__ = ["SERVER_CLASSES", "SERVER_NAMES", "FerretDB", "Kafka", "MongoExpress", "Mosquitto", "Server"]
