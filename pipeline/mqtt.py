"""One way to make a paho-mqtt 2.x client for the pipeline: MQTT 5, login, TLS, backoff."""

from __future__ import annotations

import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pipeline.retry import RetryError, until_done
from pipeline.settings import MqttSettings


def make_client(settings: MqttSettings, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT 5 client with the settings' credentials, TLS when MQTT_TLS_CA_FILE is set, and reconnect backoff."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    client.username_pw_set(settings.MQTT_USERNAME, settings.MQTT_PASSWORD.get_secret_value())
    if settings.MQTT_TLS_CA_FILE is not None:
        client.tls_set(
            ca_certs=str(settings.MQTT_TLS_CA_FILE),
            certfile=str(settings.MQTT_TLS_CERT_FILE) if settings.MQTT_TLS_CERT_FILE else None,
            keyfile=str(settings.MQTT_TLS_KEY_FILE) if settings.MQTT_TLS_KEY_FILE else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    # Jittered by paho between reconnects: 1 s doubling to 30 s.
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect(
    client: mqtt.Client, settings: MqttSettings, stop: threading.Event, receive_maximum: int | None = None
) -> bool:
    """Connect with a persistent session (clean start off, session expiry set), then run the network loop.

    The first connection is made here, retried with backoff and each failure
    logged with its cause (refused, unreachable, a certificate that does not
    verify); later reconnects are paho's, in its own thread. Returns False if
    ``stop`` was set before the broker answered.
    """
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = settings.MQTT_SESSION_EXPIRY_S
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum

    def attempt() -> None:
        client.connect(
            settings.MQTT_HOST,
            settings.MQTT_PORT,
            keepalive=settings.MQTT_KEEPALIVE_S,
            clean_start=False,
            properties=properties,
        )

    try:
        until_done(attempt, stop, f"connect to MQTT {settings.MQTT_HOST}:{settings.MQTT_PORT}", (OSError,))
    except RetryError:
        return False
    client.loop_start()
    return True
