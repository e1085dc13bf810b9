"""pipeline.mqtt.Client against paho's own decoder: the same messages, whatever the socket hands over.

The client reads the socket in blocks and decodes the common PUBLISH itself
(see its docstring). These tests feed it real bytes through a socket pair, cut
anywhere, with any block size, and check that it delivers exactly what paho's
decoder makes of each packet, in order, acknowledges as paho would, and never
leaves a whole packet sitting in its buffer once the socket has nothing more
to read (``select`` cannot see that buffer, so a packet left there would wait
for the next one to arrive).
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import paho.mqtt.client as paho
from hypothesis import example, given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pipeline import mqtt


def remaining_length(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass(frozen=True)
class Publish:
    qos: int
    dup: bool
    retain: bool
    topic: bytes
    mid: int
    properties: bytes  # packed, with its length (empty for MQTT 3.1.1)
    payload: bytes

    @property
    def header(self) -> int:
        return 0x30 | (self.dup << 3) | (self.qos << 1) | self.retain

    @property
    def body(self) -> bytes:
        mid = struct.pack("!H", self.mid) if self.qos else b""
        return struct.pack("!H", len(self.topic)) + self.topic + mid + self.properties + self.payload

    def wire(self) -> bytes:
        return bytes([self.header]) + remaining_length(len(self.body)) + self.body


PINGRESP = b"\xd0\x00"


def packed_properties(expiry: int | None, content_type: str | None, user: list[tuple[str, str]]) -> bytes:
    properties = Properties(PacketTypes.PUBLISH)
    if expiry is not None:
        properties.MessageExpiryInterval = expiry
    if content_type is not None:
        properties.ContentType = content_type
    if user:
        properties.UserProperty = user
    return bytes(properties.pack())


texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
v5_properties = st.one_of(
    st.just(b"\x00"),
    st.builds(
        packed_properties,
        st.none() | st.integers(0, 2**32 - 1),
        st.none() | texts,
        st.lists(st.tuples(texts, texts), max_size=2),
    ),
)


def publishes(protocol: MQTTProtocolVersion) -> st.SearchStrategy[Publish]:
    return st.builds(
        Publish,
        qos=st.integers(0, 2),
        dup=st.booleans(),
        retain=st.booleans(),
        # Any bytes, invalid UTF-8 too (paho keeps the raw topic; MQTT 3.1.1 refuses an empty one).
        topic=st.binary(min_size=0 if protocol == paho.MQTTv5 else 1, max_size=40),
        mid=st.integers(1, 65535),
        properties=v5_properties if protocol == paho.MQTTv5 else st.just(b""),
        payload=st.binary(max_size=600),
    )


def packets(protocol: MQTTProtocolVersion) -> st.SearchStrategy[list[Publish | bytes]]:
    return st.lists(st.one_of(publishes(protocol), st.just(PINGRESP)), min_size=1, max_size=25)


def fields(message: Any) -> tuple[Any, ...]:
    properties = message.properties
    return (
        message._topic,
        message.mid,
        message.qos,
        bool(message.dup),
        bool(message.retain),
        bytes(message.payload),
        None if properties is None else properties.json(),
    )


def expected(item: Publish, protocol: MQTTProtocolVersion) -> tuple[Any, ...]:
    """What paho's own decoder makes of the packet."""
    decoded = _packet.decode_publish(item.header, item.body, MQTTProtocolVersion(protocol))
    properties = decoded.properties
    return (
        decoded.topic,
        decoded.mid,
        decoded.qos,
        decoded.dup,
        decoded.retain,
        bytes(decoded.payload),
        None if properties is None else properties.json(),
    )


class Wired:
    """A pipeline.mqtt.Client reading one end of a socket pair; the test writes the other."""

    def __init__(self, protocol: MQTTProtocolVersion = paho.MQTTv5, manual_ack: bool = False) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol, manual_ack=manual_ack)
        self.delivered: list[tuple[Any, ...]] = []
        self.client.on_message = lambda _c, _u, message: self.delivered.append(fields(message))
        self.attach()

    def attach(self) -> None:
        """A new connection (what paho's reconnect gives the client: a new socket, no packet half-read)."""
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.client._sock = self.ours
        self.client._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }

    def send(self, data: bytes) -> MQTTErrorCode:
        """Write ``data``, then run the client's reads as its network loop would: while ``select`` sees data."""
        self.theirs.sendall(data)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while self.client._sock is not None and select.select([self.ours], [], [], 0)[0]:
            rc = self.client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        return rc

    def written(self) -> bytes:
        """What the client sent back (its PUBACKs and PUBRECs)."""
        out = b""
        while True:
            try:
                chunk = self.theirs.recv(65536)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk


def cut(data: bytes, points: list[int]) -> Iterator[bytes]:
    """``data`` in pieces, cut at ``points`` (any order, repeats allowed)."""
    at = 0
    for point in sorted({p % (len(data) + 1) for p in points}) + [len(data)]:
        yield data[at:point]
        at = point


@settings(max_examples=300, deadline=None)
@given(
    protocol=st.sampled_from([paho.MQTTv5, paho.MQTTv311]),
    data=st.data(),
    read_size=st.integers(1, 300) | st.just(mqtt.READ_SIZE),
    points=st.lists(st.integers(0, 20_000), max_size=12),
)
def test_every_message_is_delivered_as_paho_decodes_it_however_the_bytes_arrive(
    protocol: MQTTProtocolVersion, data: st.DataObject, read_size: int, points: list[int]
) -> None:
    items = data.draw(packets(protocol))
    with mock.patch.object(mqtt, "READ_SIZE", read_size):
        check_delivery(items, protocol, points)


def check_delivery(items: list[Publish | bytes], protocol: MQTTProtocolVersion, points: list[int]) -> None:
    wired = Wired(protocol)
    stream = b"".join(item.wire() if isinstance(item, Publish) else item for item in items)
    ends = []  # where each packet ends in the stream
    at = 0
    for item in items:
        at += len(item.wire() if isinstance(item, Publish) else item)
        ends.append(at)
    sent = 0
    for piece in cut(stream, points):
        assert wired.send(piece) == MQTTErrorCode.MQTT_ERR_SUCCESS
        sent += len(piece)
        whole = [item for item, end in zip(items, ends, strict=True) if end <= sent]
        want = [expected(item, protocol) for item in whole if isinstance(item, Publish) and item.qos < 2]
        assert wired.delivered == want, "every whole packet the socket gave is delivered before select waits again"
    # QoS 1 is acknowledged at once (paho's automatic PUBACK), QoS 2 gets its PUBREC: the same bytes paho sends.
    replies = b"".join(
        struct.pack("!BBH", 0x40 if item.qos == 1 else 0x50, 2, item.mid)
        for item in items
        if isinstance(item, Publish) and item.qos
    )
    assert wired.written() == replies


@settings(max_examples=200, deadline=None)
@given(mids=st.lists(st.integers(1, 65535), max_size=600))
@example(mids=[])
def test_ack_all_sends_the_pubacks_paho_sends_one_by_one(mids: list[int]) -> None:
    ours = Wired(manual_ack=True)
    ours.client.ack_all(mids)
    # paho's own client, acknowledging each message by itself.
    theirs = paho.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True)
    left, right = socket.socketpair()
    theirs._sock = left
    for mid in mids:
        theirs.ack(mid, 1)
    right.setblocking(False)
    sent = b""
    while True:
        try:
            sent += right.recv(65536)
        except BlockingIOError:
            break
    assert ours.written() == sent
    assert len(sent) == 4 * len(mids)


@given(
    before=st.lists(publishes(paho.MQTTv5), min_size=1, max_size=5),
    after=publishes(paho.MQTTv5).filter(lambda item: item.qos < 2),
)
@settings(max_examples=100, deadline=None)
def test_a_dropped_connection_drops_what_was_read_from_it(before: list[Publish], after: Publish) -> None:
    """A malformed packet closes the connection; the packets read behind it in the same block are not delivered."""
    wired = Wired()
    # A PUBLISH whose topic is longer than the packet: paho reports it malformed and closes the connection.
    malformed = b"\x30\x03\x00\x09a"
    rc = wired.send(malformed + b"".join(item.wire() for item in before))
    assert rc == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert wired.client._sock is None
    assert wired.delivered == []
    wired.attach()
    assert wired.send(after.wire()) == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert wired.delivered == [expected(after, paho.MQTTv5)], "only the new connection's message"


def test_a_closed_socket_is_reported_as_a_lost_connection() -> None:
    wired = Wired()
    wired.theirs.close()
    assert wired.client.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
    assert wired.client.loop_read() == MQTTErrorCode.MQTT_ERR_NO_CONN


def test_the_empty_properties_of_one_message_are_not_shared_with_the_next() -> None:
    wired = Wired()
    messages: list[Any] = []
    wired.client.on_message = lambda _c, _u, message: messages.append(message)
    item = Publish(1, False, False, b"t", 1, b"\x00", b"x")
    wired.send(item.wire() + Publish(1, False, False, b"t", 2, b"\x00", b"y").wire())
    messages[0].properties.ContentType = "text/csv"
    assert not hasattr(messages[1].properties, "ContentType")
    assert messages[1].properties.json() == Properties(PacketTypes.PUBLISH).json()


LEVELS = st.sampled_from(["sensors", "s1", "s2", "readings", "$SYS", "x"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=3).map("/".join)


def _under(levels: list[str]) -> str:
    return "/".join([*levels, "#"])


FILTERS = st.lists(st.sampled_from(["sensors", "s1", "readings", "+", "$SYS"]), min_size=1, max_size=3).map(
    "/".join
) | st.lists(LEVELS, max_size=2).map(_under)


def dispatched(client: paho.Client, filters: list[str], removed: list[str], topics: list[bytes]) -> list[Any]:
    """Which callback got each message: ``on_message`` or a per-topic callback (by its filter)."""
    got: list[Any] = []
    client.on_message = lambda _c, _u, m: got.append(("on_message", m.mid))

    def recorder(topic_filter: str) -> Any:
        return lambda _c, _u, m: got.append((topic_filter, m.mid))

    for topic_filter in filters:
        client.message_callback_add(topic_filter, recorder(topic_filter))
    for topic_filter in removed:
        client.message_callback_remove(topic_filter)
    for mid, topic in enumerate(topics):
        client._handle_on_message(paho.MQTTMessage(mid, topic))
    return sorted(got, key=lambda item: (item[1], item[0]))


@given(
    filters=st.lists(FILTERS, max_size=4),
    remove=st.lists(st.integers(0, 3), max_size=4),
    topics=st.lists(TOPICS.map(str.encode) | st.just(b"sensors/\xff/readings"), max_size=8),
)
def test_each_message_goes_to_the_callbacks_paho_would_give_it(
    filters: list[str], remove: list[int], topics: list[bytes]
) -> None:
    """With or without per-topic callbacks (added, then maybe all removed again), as paho dispatches."""
    removed = [filters[i] for i in remove if i < len(filters)]
    ours = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5)
    theirs = paho.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5)
    assert dispatched(ours, filters, removed, topics) == dispatched(theirs, filters, removed, topics)


def test_an_exception_in_on_message_is_raised_or_logged_as_paho_does() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5)
    logged: list[str] = []
    client.on_log = lambda _c, _u, _level, text: logged.append(text)

    def broken(_c: Any, _u: Any, _m: Any) -> None:
        raise ValueError("bad reading")

    client.on_message = broken
    client.suppress_exceptions = True
    client._handle_on_message(paho.MQTTMessage(1, b"sensors/s1/readings"))
    assert logged == ["Caught exception in on_message: bad reading"]
    client.suppress_exceptions = False
    try:
        client._handle_on_message(paho.MQTTMessage(2, b"sensors/s1/readings"))
    except ValueError as error:
        assert str(error) == "bad reading"
    else:
        raise AssertionError("on_message's exception was swallowed")
    client.on_message = None
    client._handle_on_message(paho.MQTTMessage(3, b"sensors/s1/readings"))  # no callback: nothing to call
