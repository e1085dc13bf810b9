"""One way to make a paho-mqtt 2.x client for the pipeline: MQTT 5, login, TLS, backoff."""

from __future__ import annotations

import ssl
import struct
import threading
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pipeline.retry import RetryError, until_done
from pipeline.settings import MqttSettings

#: Bytes asked of the socket at once: many readings' packets in one system call.
READ_SIZE = 65536
#: A PUBACK without reason code or properties (MQTT 5 allows it for success): type, length 2, packet id.
_PUBACK = struct.Struct("!BBH")
#: A PUBLISH's topic length and packet id.
_U16 = struct.Struct("!H")
#: What a PUBLISH without properties gets (each message its own copy, sharing paho's read-only tables).
_NO_PROPERTIES = Properties(PacketTypes.PUBLISH)


def _no_properties() -> Properties:
    """An empty PUBLISH ``Properties``, without paho's 5 µs of building its tables again."""
    properties = object.__new__(Properties)
    properties.__dict__.update(_NO_PROPERTIES.__dict__)
    return properties


class Client(mqtt.Client):
    """paho's client with its per-message costs cut: block reads, the common PUBLISH decoded here, batched PUBACKs.

    paho 2.2 asks the socket for each packet's first byte, then each byte of
    its length, then its body: three or four system calls a reading, and one
    ``select`` per packet. This client reads what the socket holds (up to
    ``READ_SIZE`` bytes) and hands paho's packet parser the bytes it asks for
    from that buffer, and its read loop parses every packet in the buffer
    before it returns to ``select`` (which cannot see bytes already taken off
    the socket). A closed connection drops the buffer with the socket. See
    :meth:`_handle_publish`, :meth:`_handle_on_message` and :meth:`ack_all`
    for the others. Measured in
    bench.bridge (2026-12-01): a bare QoS 1 subscriber's CPU a message, 0.036
    ms on paho's client, 0.014 ms on this one; the bridge's, 0.066-0.073 to
    0.038-0.041 ms. tests/unit/test_mqtt_client.py holds it to paho's decoder.
    """

    _read_buffer = b""
    _read_pos = 0

    def _handle_publish(self) -> MQTTErrorCode:
        """A QoS 0 or 1 PUBLISH without properties (MQTT 5), the message every sensor sends, decoded here.

        paho's decoder builds a ``Properties`` object from scratch for every
        message, 10 µs of the bridge's CPU a reading. This makes the same
        ``MQTTMessage`` (an empty ``Properties`` copied) and hands it to
        paho's callbacks; any other PUBLISH (QoS 2, properties, a packet too
        short to hold its header) is left to paho, which also reports a
        malformed one.
        """
        if self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        topic_end = 2 + _U16.unpack_from(packet)[0] if len(packet) >= 2 else len(packet) + 1
        properties_at = topic_end + (2 if qos else 0)
        if qos > 1 or len(packet) <= properties_at or packet[properties_at] != 0:
            return super()._handle_publish()
        message = mqtt.MQTTMessage(_U16.unpack_from(packet, topic_end)[0] if qos else 0, bytes(packet[2:topic_end]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.properties = _no_properties()
        message.payload = bytes(packet[properties_at + 1 :])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """``on_message``, without paho's topic match when no per-topic callback was added.

        paho matches every message's topic against the callbacks of
        ``message_callback_add`` even when there are none (4 % of the bridge's
        busy samples at saturation, py-spy, 2026-12-01). With any, paho's own
        dispatch runs; with none, this does what it would: call ``on_message``
        under the callback lock, and log (or raise) what it raises.
        """
        if self._on_message_filtered._root._children:
            super()._handle_on_message(message)
            return
        with self._callback_mutex:
            on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_pos >= len(self._read_buffer):
            data = super()._sock_recv(READ_SIZE)
            if not data:  # the peer closed the connection: paho sees b"" as before
                return data
            self._read_buffer, self._read_pos = data, 0
        start = self._read_pos
        self._read_pos = min(start + bufsize, len(self._read_buffer))
        return self._read_buffer[start : self._read_pos]

    def _sock_close(self) -> None:
        self._read_buffer, self._read_pos = b"", 0
        super()._sock_close()

    def ack_all(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``) with one write: their PUBACKs queued as one block.

        paho's ``ack`` queues each PUBACK alone and wakes its network thread
        for each, which then sends each with a system call of its own. The
        bytes on the wire are the same PUBACKs, in the same order.
        """
        block = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
        if block:
            self._packet_queue(mqtt.PUBACK, block, 0, 1)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Parse packets until the buffer is empty (``max_packets`` is paho's and not needed here)."""
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                return self._loop_rc_handle(rc)
            if self._read_pos >= len(self._read_buffer):
                return MQTTErrorCode.MQTT_ERR_SUCCESS


def make_client(settings: MqttSettings, client_id: str, *, manual_ack: bool = False) -> Client:
    """An MQTT 5 client with the settings' credentials, TLS when MQTT_TLS_CA_FILE is set, and reconnect backoff."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
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
