"""The message contract: the one definition of what flows through the pipeline.

Every service imports this module; a change here is a change to every service,
made once. It defines:

- the names of the MQTT topics, Kafka topics and MongoDB collections;
- a *reading* (what a sensor publishes), a *prediction* (what the model service
  returns), a *prediction error* (a reading the model could not score) and a
  *rejection* (a payload that broke the contract, kept byte-exact with a reason);
- how bytes become a validated reading (:func:`parse_reading`) and how the
  models are turned into Kafka values and MongoDB documents.

Readings keep the seed's field names (``ts``, ``sensor``, ``v``) so model code
written for the seed still reads them from the ``analytics`` topic.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar, get_args

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)

# --- names -------------------------------------------------------------------

#: Kafka topic carrying validated readings to the model service (the seed's name).
TOPIC_READINGS = "analytics"
#: Kafka topic carrying predictions and prediction errors back (the seed's name).
TOPIC_RESULTS = "analytics_results"
#: Kafka topic carrying every rejected payload with its reason.
TOPIC_DEADLETTER = "deadletter"
#: Kafka topic carrying one alert per anomaly.
TOPIC_ALERTS = "alerts"

#: MQTT topic a sensor publishes its readings to.
MQTT_READINGS_TOPIC = "sensors/{sensor}/readings"
#: MQTT topic filter the bridge subscribes to (shared by its replicas).
MQTT_READINGS_FILTER = "sensors/+/readings"

#: MongoDB database used when MONGO_DATABASE is not set.
DEFAULT_DATABASE = "sensor_pipeline"
COLLECTION_READINGS = "readings"
COLLECTION_PREDICTIONS = "predictions"
COLLECTION_PREDICTION_ERRORS = "prediction_errors"
COLLECTION_REJECTIONS = "rejections"
#: Per sensor and minute of event time: count/sum/min/max, and the minute's points and forecasts.
COLLECTION_AGGREGATES = "aggregates"
#: The same totals per sensor and hour, and per sensor and day (no points): kept longer.
COLLECTION_AGGREGATES_HOURLY = "aggregates_hourly"
COLLECTION_AGGREGATES_DAILY = "aggregates_daily"
#: One document per sensor: its last reading, when it was seen, its rate and usual interval.
COLLECTION_SENSORS = "sensors"
#: One document per anomaly: a reading outside its forecast interval.
COLLECTION_ALERTS = "alerts"
#: One document per bridge (``_id`` its MQTT client id): the latest anomalies it stored, which the page lists.
COLLECTION_RECENT_ANOMALIES = "recent_anomalies"
#: Per sensor and model: rolling mean absolute error and interval coverage.
COLLECTION_ACCURACY = "accuracy"
#: Every decision of the trainer: sensor, both models and their holdout metrics, promoted or not and why.
COLLECTION_MODEL_VERSIONS = "model_versions"
#: One document per sensor (``_id`` = the sensor): the trainer's latest decisions, newest first.
COLLECTION_MODEL_HISTORY = "model_history"
#: Per-minute re-scored forecasts, by sensor, model and minute (Models_analysis.rescore).
COLLECTION_RESCORED = "rescored"
#: One summary per re-scoring run.
COLLECTION_RESCORES = "rescores"
#: Per sensor (``_id`` = the sensor): the models it was re-scored with, each with its latest run.
COLLECTION_RESCORED_MODELS = "rescored_models"
#: The same per sensor, model and hour, written when the hour has settled.
COLLECTION_ACCURACY_HOURLY = "accuracy_hourly"

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


# --- the models --------------------------------------------------------------


class Reading(BaseModel):
    """One sensor reading.

    ``id`` is set once at the source and stays the same on every retry, so
    every store keyed by it is idempotent. Extra fields are kept as sent.
    ``received_at`` is set by the bridge when it accepts the reading.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: ReadingId
    sensor: SensorId
    ts: UtcDatetime
    v: float = Field(allow_inf_nan=False)
    received_at: UtcDatetime | None = None

    @field_validator("v", mode="before")
    @classmethod
    def _number_only(cls, value: Any) -> Any:
        # JSON true/false and "1.5" are not numbers; pydantic would coerce them.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a JSON number")
        if abs(value) > MAX_ABS_VALUE:  # NaN and infinities are refused by the field itself
            raise ValueError(f"is too large: a reading's value is at most {MAX_ABS_VALUE:,} in magnitude")
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        # pydantic would read a number as epoch seconds; the contract says ISO 8601.
        if not isinstance(value, str | datetime):
            raise ValueError("must be an ISO 8601 string with a time zone, like 2026-01-31T12:00:00Z")
        return value

    @field_validator("ts")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        if value < EARLIEST_TS:
            raise ValueError(f"is before {EARLIEST_TS.date()}: the sensor clock is wrong")
        if value > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError("is more than a day in the future: the sensor clock is wrong")
        return value

    @property
    def extras(self) -> dict[str, Any]:
        """The fields a sensor sent beyond the contract."""
        return dict(self.__pydantic_extra__ or {})

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready form used on MQTT and Kafka (timestamps as ISO 8601 UTC)."""
        message: dict[str, Any] = {
            "id": self.id,
            "sensor": self.sensor,
            "ts": iso(self.ts),
            "v": self.v,
        }
        if self.received_at is not None:
            message["received_at"] = iso(self.received_at)
        if self.__pydantic_extra__:  # read in place: the extras property copies them
            message.update(self.__pydantic_extra__)
        return message

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document: ``_id`` is the reading id, times are BSON dates."""
        document: dict[str, Any] = {"_id": self.id, "sensor": self.sensor, "ts": self.ts, "v": self.v}
        if self.received_at is not None:
            document["received_at"] = self.received_at
        if self.__pydantic_extra__:
            document.update(self.__pydantic_extra__)
        return document


class ModelIdentity(BaseModel):
    """Which model made a prediction: a name for people and a content hash for certainty."""

    model_config = ConfigDict(frozen=True)

    name: Text
    hash: Text


class Prediction(BaseModel):
    """The model's forecast for one reading, with the observed value beside it."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["prediction"] = "prediction"
    id: ReadingId
    sensor: SensorId
    ds: UtcDatetime
    yhat: float = Field(allow_inf_nan=False)
    yhat_lower: float = Field(allow_inf_nan=False)
    yhat_upper: float = Field(allow_inf_nan=False)
    v: float = Field(allow_inf_nan=False)
    anomaly: bool
    model: ModelIdentity
    scored_at: UtcDatetime

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document, keyed by the reading id."""
        document = self.model_dump(exclude={"kind", "id"})
        document["_id"] = self.id
        return document


class Alert(BaseModel):
    """An anomaly: the observed value fell outside the forecast interval, by ``miss``."""

    model_config = ConfigDict(frozen=True)

    id: ReadingId
    sensor: SensorId
    ts: UtcDatetime
    v: float = Field(allow_inf_nan=False)
    yhat: float = Field(allow_inf_nan=False)
    yhat_lower: float = Field(allow_inf_nan=False)
    yhat_upper: float = Field(allow_inf_nan=False)
    direction: Literal["above", "below"]
    #: How far outside the interval the value is (always positive).
    miss: float = Field(allow_inf_nan=False)
    model: ModelIdentity
    detected_at: UtcDatetime

    @classmethod
    def of(cls, prediction: Prediction) -> Alert:
        """The alert for an anomalous prediction."""
        above = prediction.v > prediction.yhat_upper
        return cls(
            id=prediction.id,
            sensor=prediction.sensor,
            ts=prediction.ds,
            v=prediction.v,
            yhat=prediction.yhat,
            yhat_lower=prediction.yhat_lower,
            yhat_upper=prediction.yhat_upper,
            direction="above" if above else "below",
            miss=prediction.v - prediction.yhat_upper if above else prediction.yhat_lower - prediction.v,
            model=prediction.model,
            detected_at=prediction.scored_at,
        )

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document, keyed by the reading id (one alert per reading)."""
        document = self.model_dump(exclude={"id"})
        document["_id"] = self.id
        return document


class PredictionError(BaseModel):
    """A reading the model could not score, with the reason; it is kept, not retried forever."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["prediction_error"] = "prediction_error"
    id: ReadingId
    sensor: SensorId
    reason: Text
    model: ModelIdentity
    scored_at: UtcDatetime

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document, keyed by the reading id."""
        document = self.model_dump(exclude={"kind", "id"})
        document["_id"] = self.id
        return document


class Rejection(BaseModel):
    """A message that broke the contract, kept with the reason it was refused.

    The payload is kept byte-exact up to :data:`MAX_KEPT_BYTES`; a longer one
    keeps that prefix, its ``size`` and the ``sha256`` of all of it
    (``truncated`` is true), so a rejection's record always fits MongoDB's and
    Kafka's limits, whatever arrived.
    """

    model_config = ConfigDict(frozen=True)

    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    size: int
    sha256: str
    truncated: bool
    transport: Literal["mqtt", "kafka"]
    topic: str
    received_at: UtcDatetime
    kind: RejectKind
    reason: str
    #: Stable id: a redelivered copy of the same bad message (same transport, topic and bytes) is kept once.
    key: str

    @classmethod
    def of(
        cls,
        raw: bytes,
        transport: Literal["mqtt", "kafka"],
        topic: str,
        reason: str,
        received_at: datetime,
        kind: RejectKind = "bad_field",
    ) -> Rejection:
        """Keep ``raw`` (its first MAX_KEPT_BYTES): as text when it is UTF-8 without NUL, else as base64."""
        kept = raw[:MAX_KEPT_BYTES]
        payload, encoding = _as_text(kept, whole=len(kept) == len(raw))
        digest = hashlib.sha256(raw).hexdigest()
        return cls(
            payload=payload,
            payload_encoding=encoding,
            size=len(raw),
            sha256=digest,
            truncated=len(kept) < len(raw),
            transport=transport,
            topic=_printable(topic, MAX_TOPIC_CHARS),
            received_at=received_at,
            kind=kind,
            reason=_printable(reason, MAX_REASON_CHARS),
            key=hashlib.sha256(f"{transport}:{topic}".encode(errors="replace") + b"\0" + raw).hexdigest(),
        )

    def raw(self) -> bytes:
        """The kept bytes: the whole payload unless ``truncated``."""
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document, keyed by :attr:`key`."""
        document = self.model_dump(exclude={"key"})
        document["_id"] = self.key
        return document


def _as_text(kept: bytes, whole: bool) -> tuple[str, Literal["utf-8", "base64"]]:
    """``kept`` as UTF-8 text if it is text without NUL (which some stores refuse), else as base64."""
    text: str | None = None
    try:
        text = kept.decode("utf-8")
    except UnicodeDecodeError as error:
        # A prefix may end inside a character: keep the text before it.
        if not whole and error.reason == "unexpected end of data":
            text = kept[: error.start].decode("utf-8")
    if text is not None and "\x00" not in text:
        return text, "utf-8"
    return base64.b64encode(kept).decode("ascii"), "base64"


def _printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with anything no UTF-8 encoder takes replaced."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _BAD_CHARACTER.sub("\ufffd", text)


Result = Prediction | PredictionError


def _result_kind(value: Any) -> str:
    # A message without "kind" is a prediction (its default), as before the field existed.
    return str(value.get("kind", "prediction") if isinstance(value, dict) else getattr(value, "kind", "prediction"))


#: A message on the results topic: its ``kind`` says which model it is.
_RESULT = TypeAdapter(
    Annotated[
        Annotated[Prediction, Tag("prediction")] | Annotated[PredictionError, Tag("prediction_error")],
        Discriminator(_result_kind),
    ]
)
_RESULT_TAGS = frozenset({"prediction", "prediction_error"})


# --- helpers -----------------------------------------------------------------


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` and milliseconds, the form every message uses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_reading_id() -> str:
    """A fresh, globally unique reading id (set once, at the source)."""
    return uuid.uuid4().hex


def readings_topic(sensor: str) -> str:
    """The MQTT topic a sensor publishes to."""
    return MQTT_READINGS_TOPIC.format(sensor=sensor)


def sensor_of_topic(topic: str) -> str | None:
    """The sensor id inside ``sensors/<sensor>/readings``, or None for another topic."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "sensors" and parts[2] == "readings":
        return parts[1]
    return None


def dumps(value: dict[str, Any]) -> bytes:
    """Serialize a message, every datetime in the one form messages use (:func:`iso`: UTC, milliseconds, ``Z``)."""
    # Passed through to _default: orjson's own form (``...831000+00:00``) differed from the readings' ``...831Z``.
    return orjson.dumps(value, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if a key repeats or is not a plain field name (at every depth)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if not _FIELD_NAME.match(key):
            raise ContractError(
                f"field name {_printable(key, 40)!r} is not allowed (letters, digits and _, at most 64,"
                " not starting with a digit)",
                "bad_key",
            )
        if key in obj:
            raise ContractError(f"duplicate key {key!r} in a JSON object", "duplicate_key")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ContractError(f"{name} is not a number JSON allows", "bad_number")


def _number_text(text: str) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        raise ContractError(
            f"a number written with {len(text)} characters, over the limit of {MAX_NUMBER_CHARS}", "bad_number"
        )


def _parse_int(text: str) -> int:
    _number_text(text)
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ContractError(f"the integer {text} is too large to store (MongoDB keeps 64-bit integers)", "bad_number")
    return value


def _parse_float(text: str) -> float:
    _number_text(text)
    value = float(text)
    if not math.isfinite(value):
        raise ContractError(f"the number {text} is too large to store", "bad_number")
    return value


def _check_values(value: Any, budget: list[int]) -> int:
    """Check strings and nesting below ``value``; returns its depth (a scalar is 0).

    ``budget`` counts keys and list items down to zero across the whole payload.
    """
    if isinstance(value, str):
        if _BAD_CHARACTER.search(value):
            raise ContractError(
                "a string holds a NUL character or a lone UTF-16 surrogate, which cannot be stored", "bad_string"
            )
        return 0
    if isinstance(value, dict | list):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise ContractError(f"more than {MAX_VALUES} keys and list items in the payload", "too_many_values")
        items = value.values() if isinstance(value, dict) else value
        deepest = 0
        for item in items:
            if isinstance(value, list) and isinstance(item, list):
                # FerretDB refuses arrays directly inside arrays.
                raise ContractError("a list directly inside a list cannot be stored", "too_deep")
            deepest = max(deepest, _check_values(item, budget))
        return 1 + deepest
    return 0


def _describe(error: ValidationError) -> tuple[str, RejectKind]:
    parts = []
    kind: RejectKind = "bad_field"
    for item in error.errors():
        loc = item["loc"]
        if loc and loc[0] in _RESULT_TAGS:  # the union's tag is not a field
            loc = loc[1:]
        where = ".".join(str(p) for p in loc) or "payload"
        message = item["msg"].removeprefix("Value error, ")
        if not loc:  # the message as a whole (pydantic's JSON parser)
            parts.append(f"payload is not a JSON object ({message})")
            kind = "not_json"
        elif item["type"] == "missing":
            parts.append(f"field {where!r} is missing")
            kind = "missing_field" if kind == "bad_field" else kind
        else:
            parts.append(f"field {where!r} {message[0].lower() + message[1:]}")
    return "; ".join(parts), kind


#: The stdlib parser (not orjson), because its hooks can refuse duplicate keys, NaN/Infinity
#: and oversized numbers while parsing. Built once: json.loads with hooks builds a decoder per
#: call; a decoder keeps no state between calls (json's own shared one serves every thread).
_STRICT_JSON = json.JSONDecoder(
    object_pairs_hook=_object,
    parse_constant=_reject_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)


def load_json_object(raw: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object, strictly, within every limit of the contract.

    Raises :class:`ContractError` with a reason for a person: empty, too large,
    not UTF-8, not JSON, duplicate or unstorable keys at any depth, NaN,
    Infinity or numbers past their limits, strings no store takes, too deep or
    too many values, or not an object.
    """
    if not raw:
        raise ContractError("payload is empty", "empty")
    if len(raw) > max_bytes:
        raise ContractError(f"payload is {len(raw)} bytes, over the {max_bytes}-byte limit", "too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ContractError(f"payload is not UTF-8 (bad byte at offset {error.start})", "not_utf8") from None
    try:
        # What json.loads does with these hooks, without building a decoder per payload.
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _STRICT_JSON.decode(text)
    except ContractError:
        raise
    except RecursionError:
        raise ContractError("payload is nested too deeply", "too_deep") from None
    except json.JSONDecodeError as error:
        raise ContractError(
            f"payload is not JSON ({error.msg} at line {error.lineno} column {error.colno})", "not_json"
        ) from None
    if not isinstance(value, dict):
        raise ContractError(
            f"payload is a JSON {type(value).__name__ if value is not None else 'null'}, not an object", "not_object"
        )
    return value


def parse_reading(
    raw: bytes, topic: str | None = None, *, max_bytes: int = MAX_PAYLOAD_BYTES, received_at: datetime | None = None
) -> Reading:
    """Validate a sensor's payload against the contract.

    When ``topic`` is given, the reading's sensor must be the one in the topic
    (a sensor may only speak for itself). ``received_at`` (the bridge's moment of
    arrival; a sensor may not send it) is validated with the reading, which
    costs less than a copy of the reading with it set. Raises :class:`ContractError` whose
    message says what was wrong. A reading returned here can always be
    encoded: :meth:`Reading.to_document` as BSON, :meth:`Reading.to_message`
    as a Kafka record within :data:`MAX_RECORD_BYTES` (tests/fuzz holds the
    property tests of that promise).
    """
    obj = load_json_object(raw, max_bytes=max_bytes)
    reserved = sorted(_RESERVED_FIELDS.intersection(obj))
    if reserved:
        raise ContractError(f"field {reserved[0]!r} is set by the pipeline, not by a sensor", "reserved_field")
    extras = [k for k in obj if k not in _CONTRACT_FIELDS]
    if len(extras) > MAX_EXTRA_FIELDS:
        raise ContractError(f"{len(extras)} extra fields, over the limit of {MAX_EXTRA_FIELDS}", "too_many_fields")
    budget = [MAX_VALUES - len(obj)]
    for key, value in obj.items():
        if _check_values(value, budget) > MAX_EXTRA_DEPTH:
            raise ContractError(f"extra field {key!r} nests deeper than {MAX_EXTRA_DEPTH} levels", "too_deep")
    try:
        reading = Reading.model_validate(obj if received_at is None else {**obj, "received_at": received_at})
    except ValidationError as error:
        raise ContractError(*_describe(error)) from None
    if topic is not None:
        expected = sensor_of_topic(topic)
        if expected is None:
            raise ContractError(
                f"topic {_printable(topic, 80)!r} is not a readings topic (sensors/<sensor>/readings)", "wrong_topic"
            )
        if reading.sensor != expected:
            raise ContractError(
                f"sensor {reading.sensor!r} does not match the topic's sensor {_printable(expected, 80)!r}",
                "wrong_sensor",
            )
    return reading


#: Largest message accepted on the pipeline's own Kafka topics.
INTERNAL_MAX_BYTES = 1 << 20

_Internal = TypeVar("_Internal", bound=BaseModel)


def _parse_internal(adapter: TypeAdapter[_Internal], raw: bytes) -> _Internal:
    """Parse a message on one of the pipeline's own Kafka topics.

    These messages were written by the pipeline with :func:`dumps` after the
    strict checks at the edge (:func:`parse_reading`), so pydantic's own JSON
    parser does here, at twice the speed of :func:`load_json_object`: it types
    and bounds every field the same way, but a duplicate key (which only a
    foreign producer could write) keeps its last value instead of being refused.
    """
    if len(raw) > INTERNAL_MAX_BYTES:
        raise ContractError(f"payload is {len(raw)} bytes, over the {INTERNAL_MAX_BYTES}-byte limit", "too_large")
    try:
        return adapter.validate_json(raw)
    except ValidationError as error:
        raise ContractError(*_describe(error)) from None


_READING = TypeAdapter(Reading)
_ALERT = TypeAdapter(Alert)


def parse_forwarded_reading(raw: bytes) -> Reading:
    """Parse a reading the bridge validated and forwarded (it carries ``received_at``)."""
    reading = _parse_internal(_READING, raw)
    # The same budget as at the edge: the contract's four fields, then the extras.
    if reading.extras and _check_values(reading.extras, [MAX_VALUES - len(_CONTRACT_FIELDS)]) > MAX_EXTRA_DEPTH + 1:
        raise ContractError(f"extra fields nest deeper than {MAX_EXTRA_DEPTH} levels", "too_deep")
    return reading


def parse_result(raw: bytes) -> Result:
    """Parse a message from the results topic into a prediction or a prediction error (by its ``kind``)."""
    return _parse_internal(_RESULT, raw)


def parse_alert(raw: bytes) -> Alert:
    """Parse a message from the alerts topic."""
    return _parse_internal(_ALERT, raw)


def result_message(result: Result | Alert) -> bytes:
    """The Kafka value for a prediction or a prediction error."""
    return dumps(result.model_dump())
