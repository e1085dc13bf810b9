"""What the pipeline's services need to reach the local stack's servers: :func:`service_env`."""

from __future__ import annotations

from localstack.cluster import bootstrap_servers, replication
from localstack.config import StackConfig


def service_env(config: StackConfig) -> dict[str, str]:
    """What the pipeline's services need to connect (includes credentials: do not log it)."""
    return {
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(config.mqtt_port),
        "MQTT_WS_PORT": str(config.mqtt_ws_port),
        "MQTT_SERVER_USERNAME": config.mqtt_server_username,
        "MQTT_SERVER_PASSWORD": config.mqtt_server_password,
        "MQTT_SERVER_CLIENT_IDS": config.mqtt_server_client_ids,
        "MQTT_SENSOR_USERNAME": config.mqtt_sensor_username,
        "MQTT_SENSOR_PASSWORD": config.mqtt_sensor_password,
        "MQTT_SENSOR_ACCOUNTS": config.mqtt_sensor_accounts,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers(config.kafka_nodes()),
        "MONGO_URI": config.mongo_uri,
        "MONGO_DATABASE": config.mongo_database,
        # Each sensor keeps what the broker has not acknowledged in <id>.sqlite here.
        "SENSOR_SPOOL_DIR": str(config.state_dir / "sensor-spool"),
        **_tls_env(config),
        **_replication_env(config),
    }


def _replication_env(config: StackConfig) -> dict[str, str]:
    """On a cluster: the replicas of the topics the services create, and how many must have each write."""
    if config.kafka_brokers == 1:
        return {}
    factor, min_insync = replication(config.kafka_brokers)
    return {"KAFKA_REPLICATION_FACTOR": str(factor), "KAFKA_MIN_INSYNC_REPLICAS": str(min_insync)}


def _tls_env(config: StackConfig) -> dict[str, str]:
    """With TLS: the CA for every client, Kafka's logins, the page's certificate (see localstack/services.py)."""
    if not config.tls:
        return {}
    ca = str(config.tls_file("ca.crt"))
    env = {
        "MQTT_TLS_CA_FILE": ca,
        "KAFKA_TLS_CA_FILE": ca,
        "KAFKA_SERVER_USERNAME": config.kafka_server_username,
        "KAFKA_SERVER_PASSWORD": config.kafka_server_password,
        "KAFKA_MODEL_USERNAME": config.kafka_model_username,
        "KAFKA_MODEL_PASSWORD": config.kafka_model_password,
        "DASHBOARD_TLS_CERT_FILE": str(config.tls_file("server.crt")),
        "DASHBOARD_TLS_KEY_FILE": str(config.tls_file("server.key")),
    }
    if config.uses_ferretdb:  # an external MONGO_URI carries its own TLS options
        env["MONGO_TLS_CA_FILE"] = ca
    return env
