"""The contract's bounds and its field types: every size, count and range a message can have, and why one is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, AwareDatetime, StringConstraints

# --- limits ------------------------------------------------------------------
#
# Every size, count and range a payload can have is bounded here, so that a
# reading that passes :func:`parse_reading` can always be encoded as BSON
# (MongoDB and FerretDB) and as a Kafka record within Kafka's limit. README
# "The message contract" lists them.

#: Largest payload the bridge accepts by default (SERVER_MAX_PAYLOAD_BYTES); larger ones are rejected, not parsed.
MAX_PAYLOAD_BYTES = 16 * 1024
#: The most SERVER_MAX_PAYLOAD_BYTES may be: the broker refuses a larger packet (mosquitto.conf ``max_packet_size``).
MAX_PAYLOAD_LIMIT = 256 * 1024
#: At most this many extra (non-contract) fields on a reading.
MAX_EXTRA_FIELDS = 32
#: Extra fields may nest objects/lists this deep (a scalar is depth 0).
MAX_EXTRA_DEPTH = 3
#: Keys and list items in a whole payload, at every depth.
MAX_VALUES = 2048
#: Characters a JSON number may be written with (``-1.2345678901234567e-308`` has 24).
MAX_NUMBER_CHARS = 40
#: A reading's value is at most this in magnitude (2^53: every integer up to it is exact as a double),
#: so the sums and errors the bridge keeps per sensor (aggregates, accuracy) can never overflow.
MAX_ABS_VALUE = 2**53
#: Integers must fit MongoDB's 64-bit integer.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Timestamps before this are taken for a broken clock, not for history.
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
#: Timestamps further ahead than this are taken for a broken clock.
MAX_CLOCK_SKEW = timedelta(days=1)
#: A rejection keeps at most this many bytes of the payload (plus its size and SHA-256), so its
#: record always fits MongoDB's and Kafka's limits whatever arrived.
MAX_KEPT_BYTES = 4096
#: Reasons and topics kept in a rejection are cut to these many characters.
MAX_REASON_CHARS = 1000
MAX_TOPIC_CHARS = 256
#: Largest record the pipeline produces to Kafka (the broker's default ``message.max.bytes`` is
#: 1,048,588 bytes; the headroom covers the record's key and headers).
MAX_RECORD_BYTES = 1_000_000

SensorId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
ReadingId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
#: Every key at every depth: MongoDB refuses ``$``-prefixed, dotted and NUL keys, FerretDB more.
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CONTRACT_FIELDS = frozenset({"id", "sensor", "ts", "v"})
#: Fields the bridge sets; a sensor may not send them.
_RESERVED_FIELDS = frozenset({"_id", "received_at"})
#: Lone UTF-16 surrogates (JSON can escape them; no UTF-8 encoder takes them) and NUL.
_BAD_CHARACTER = re.compile("[\ud800-\udfff\x00]")

#: Why a message was refused, in a fixed set of words: the ``reason`` label of
#: ``pipeline_rejections_total`` and the ``kind`` of a rejection. The reason
#: itself (which may quote the payload) is for people and never a label.
RejectKind = Literal[
    "empty",
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "duplicate_key",
    "bad_key",
    "bad_number",
    "bad_string",
    "too_deep",
    "too_many_values",
    "too_many_fields",
    "reserved_field",
    "missing_field",
    "bad_field",
    "wrong_topic",
    "wrong_sensor",
    "store_refused",
    "kafka_refused",
    "unexpected",
]
REJECT_KINDS: tuple[str, ...] = get_args(RejectKind)


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is past the last UTC moment Python (and BSON) has
        raise ValueError("is outside the years 1 to 9999 in UTC") from None


#: Every time in a message: with a zone, stored as UTC (so it is always a BSON date).
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
#: Free text the pipeline writes (a reason, a model's name): cut to MAX_REASON_CHARS, and a NUL or lone
#: surrogate (an exception's message can hold anything) replaced, so every store and encoder takes it.
Text = Annotated[str, AfterValidator(lambda text: _printable(text, MAX_REASON_CHARS))]


class ContractError(ValueError):
    """A payload that breaks the contract; ``str(error)`` is the reason for a person, ``kind`` its class."""

    def __init__(self, reason: str, kind: RejectKind = "bad_field") -> None:
        super().__init__(reason)
        self.kind: RejectKind = kind


def _printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with anything no UTF-8 encoder takes replaced."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _BAD_CHARACTER.sub("\ufffd", text)


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` and milliseconds, the form every message uses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
