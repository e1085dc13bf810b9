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
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
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
#: Per-sensor, per-minute count/sum/mean/min/max of the readings (by event time).
COLLECTION_AGGREGATES = "aggregates"
#: One document per anomaly: a reading outside its forecast interval.
COLLECTION_ALERTS = "alerts"
#: Per sensor and model: rolling mean absolute error and interval coverage.
COLLECTION_ACCURACY = "accuracy"
#: The same per sensor, model and hour, written when the hour has settled.
COLLECTION_ACCURACY_HOURLY = "accuracy_hourly"

# --- limits ------------------------------------------------------------------

#: Largest payload the bridge accepts; larger ones are rejected, not parsed.
MAX_PAYLOAD_BYTES = 16 * 1024
#: At most this many extra (non-contract) fields on a reading.
MAX_EXTRA_FIELDS = 32
#: Extra fields may nest objects/lists this deep (a scalar is depth 0).
MAX_EXTRA_DEPTH = 3
#: Timestamps before this are taken for a broken clock, not for history.
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
#: Timestamps further ahead than this are taken for a broken clock.
MAX_CLOCK_SKEW = timedelta(days=1)

SensorId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
ReadingId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_CONTRACT_FIELDS = frozenset({"id", "sensor", "ts", "v"})
#: Fields the bridge sets; a sensor may not send them.
_RESERVED_FIELDS = frozenset({"_id", "received_at"})


class ContractError(ValueError):
    """A payload that breaks the contract; ``str(error)`` is the reason for a person."""


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
    ts: AwareDatetime
    v: float = Field(allow_inf_nan=False)
    received_at: AwareDatetime | None = None

    @field_validator("v", mode="before")
    @classmethod
    def _number_only(cls, value: Any) -> Any:
        # JSON true/false and "1.5" are not numbers; pydantic would coerce them.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a JSON number")
        if isinstance(value, int) and abs(value) > 2**53:
            raise ValueError("is too large to store exactly as a double")
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
        value = value.astimezone(UTC)
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
        message.update(self.extras)
        return message

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document: ``_id`` is the reading id, times are BSON dates."""
        document: dict[str, Any] = {"_id": self.id, "sensor": self.sensor, "ts": self.ts, "v": self.v}
        if self.received_at is not None:
            document["received_at"] = self.received_at
        document.update(self.extras)
        return document


class ModelIdentity(BaseModel):
    """Which model made a prediction: a name for people and a content hash for certainty."""

    model_config = ConfigDict(frozen=True)

    name: str
    hash: str


class Prediction(BaseModel):
    """The model's forecast for one reading, with the observed value beside it."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["prediction"] = "prediction"
    id: ReadingId
    sensor: SensorId
    ds: AwareDatetime
    yhat: float = Field(allow_inf_nan=False)
    yhat_lower: float = Field(allow_inf_nan=False)
    yhat_upper: float = Field(allow_inf_nan=False)
    v: float = Field(allow_inf_nan=False)
    anomaly: bool
    model: ModelIdentity
    scored_at: AwareDatetime

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
    ts: AwareDatetime
    v: float = Field(allow_inf_nan=False)
    yhat: float = Field(allow_inf_nan=False)
    yhat_lower: float = Field(allow_inf_nan=False)
    yhat_upper: float = Field(allow_inf_nan=False)
    direction: Literal["above", "below"]
    #: How far outside the interval the value is (always positive).
    miss: float = Field(allow_inf_nan=False)
    model: ModelIdentity
    detected_at: AwareDatetime

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
    reason: str
    model: ModelIdentity
    scored_at: AwareDatetime

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document, keyed by the reading id."""
        document = self.model_dump(exclude={"kind", "id"})
        document["_id"] = self.id
        return document


class Rejection(BaseModel):
    """A payload that broke the contract, kept byte-exact with the reason it was refused."""

    model_config = ConfigDict(frozen=True)

    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    size: int
    transport: Literal["mqtt", "kafka"]
    topic: str
    received_at: AwareDatetime
    reason: str

    @classmethod
    def of(
        cls, raw: bytes, transport: Literal["mqtt", "kafka"], topic: str, reason: str, received_at: datetime
    ) -> Rejection:
        """Keep ``raw`` exactly: as text when it is UTF-8, else as base64."""
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return cls(
            payload=payload,
            payload_encoding=encoding,  # type: ignore[arg-type]
            size=len(raw),
            transport=transport,
            topic=topic,
            received_at=received_at,
            reason=reason,
        )

    def raw(self) -> bytes:
        """The payload's original bytes."""
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")

    @property
    def key(self) -> str:
        """A stable id: a redelivered copy of the same bad message is kept once."""
        return hashlib.sha256(f"{self.transport}:{self.topic}".encode() + b"\0" + self.raw()).hexdigest()

    def to_document(self) -> dict[str, Any]:
        """The MongoDB document, keyed by :attr:`key`."""
        document = self.model_dump()
        document["_id"] = self.key
        return document


Result = Prediction | PredictionError


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
    """Serialize a message (datetimes as ISO 8601 with offset)."""
    return orjson.dumps(value, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ContractError(f"duplicate key {key!r} in a JSON object")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ContractError(f"{name} is not a number JSON allows")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "payload"
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # the message as a whole (pydantic's JSON parser)
            parts.append(f"payload is not a JSON object ({message})")
        elif item["type"] == "missing":
            parts.append(f"field {where!r} is missing")
        else:
            parts.append(f"field {where!r} {message[0].lower() + message[1:]}")
    return "; ".join(parts)


def load_json_object(raw: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """Parse ``raw`` as one JSON object, strictly.

    Raises :class:`ContractError` with a reason for a person: empty, too large,
    not UTF-8, not JSON, duplicate keys, NaN/Infinity, or not an object.
    """
    if not raw:
        raise ContractError("payload is empty")
    if len(raw) > max_bytes:
        raise ContractError(f"payload is {len(raw)} bytes, over the {max_bytes}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ContractError(f"payload is not UTF-8 (bad byte at offset {error.start})") from None
    try:
        # The stdlib parser is used (not orjson) because it can refuse duplicate
        # keys and NaN/Infinity, which orjson silently accepts or mangles.
        value = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except ContractError:
        raise
    except RecursionError:
        raise ContractError("payload is nested too deeply") from None
    except json.JSONDecodeError as error:
        raise ContractError(f"payload is not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(value, dict):
        raise ContractError(f"payload is a JSON {type(value).__name__ if value is not None else 'null'}, not an object")
    return value


def parse_reading(raw: bytes, topic: str | None = None, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> Reading:
    """Validate a sensor's payload against the contract.

    When ``topic`` is given, the reading's sensor must be the one in the topic
    (a sensor may only speak for itself). Raises :class:`ContractError` whose
    message says what was wrong.
    """
    obj = load_json_object(raw, max_bytes=max_bytes)
    reserved = sorted(_RESERVED_FIELDS.intersection(obj))
    if reserved:
        raise ContractError(f"field {reserved[0]!r} is set by the pipeline, not by a sensor")
    extras = [k for k in obj if k not in _CONTRACT_FIELDS]
    if len(extras) > MAX_EXTRA_FIELDS:
        raise ContractError(f"{len(extras)} extra fields, over the limit of {MAX_EXTRA_FIELDS}")
    for key in extras:
        if not _FIELD_NAME.match(key):
            raise ContractError(
                f"extra field name {key[:40]!r} is not allowed (letters, digits, _; not starting with a digit)"
            )
        if _depth(obj[key]) > MAX_EXTRA_DEPTH:
            raise ContractError(f"extra field {key!r} nests deeper than {MAX_EXTRA_DEPTH} levels")
        if _has_bad_number(obj[key]):
            raise ContractError(f"extra field {key!r} holds a number too large to store")
    try:
        reading = Reading.model_validate(obj)
    except ValidationError as error:
        raise ContractError(_describe(error)) from None
    if topic is not None:
        expected = sensor_of_topic(topic)
        if expected is None:
            raise ContractError(f"topic {topic!r} is not a readings topic (sensors/<sensor>/readings)")
        if reading.sensor != expected:
            raise ContractError(f"sensor {reading.sensor!r} does not match the topic's sensor {expected!r}")
    return reading


def _has_bad_number(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) >= 2**63
    if isinstance(value, dict):
        return any(_has_bad_number(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bad_number(v) for v in value)
    return False


#: Largest message accepted on the pipeline's own Kafka topics.
INTERNAL_MAX_BYTES = 1 << 20

_Internal = TypeVar("_Internal", bound=BaseModel)
_PREDICTION_ERROR = re.compile(rb'"kind"\s*:\s*"prediction_error"')


def _parse_internal(model: type[_Internal], raw: bytes) -> _Internal:
    """Parse a message on one of the pipeline's own Kafka topics into ``model``.

    These messages were written by the pipeline with :func:`dumps` after the
    strict checks at the edge (:func:`parse_reading`), so pydantic's own JSON
    parser does here, at twice the speed of :func:`load_json_object`: it types
    and bounds every field the same way, but a duplicate key (which only a
    foreign producer could write) keeps its last value instead of being refused.
    """
    if len(raw) > INTERNAL_MAX_BYTES:
        raise ContractError(f"payload is {len(raw)} bytes, over the {INTERNAL_MAX_BYTES}-byte limit")
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise ContractError(_describe(error)) from None


def parse_forwarded_reading(raw: bytes) -> Reading:
    """Parse a reading the bridge validated and forwarded (it carries ``received_at``)."""
    return _parse_internal(Reading, raw)


def parse_result(raw: bytes) -> Result:
    """Parse a message from the results topic into a prediction or a prediction error."""
    if _PREDICTION_ERROR.search(raw):
        return _parse_internal(PredictionError, raw)
    return _parse_internal(Prediction, raw)


def parse_alert(raw: bytes) -> Alert:
    """Parse a message from the alerts topic."""
    return _parse_internal(Alert, raw)


def result_message(result: Result | Alert) -> bytes:
    """The Kafka value for a prediction or a prediction error."""
    return dumps(result.model_dump())
