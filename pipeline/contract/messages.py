"""The messages: a reading, a prediction, an alert, a prediction error, a rejection, each with its document."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator

from pipeline.contract.limits import (
    EARLIEST_TS,
    MAX_ABS_VALUE,
    MAX_CLOCK_SKEW,
    MAX_KEPT_BYTES,
    MAX_REASON_CHARS,
    MAX_TOPIC_CHARS,
    ReadingId,
    RejectKind,
    SensorId,
    Text,
    UtcDatetime,
    _printable,
    iso,
)


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
        return _document(self, self.id, {"kind", "id"})


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
        return _document(self, self.id, {"id"})


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
        return _document(self, self.id, {"kind", "id"})


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
        return _document(self, self.key, {"key"})


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


Result = Prediction | PredictionError


def _result_kind(value: Any) -> str:
    # A message without "kind" is a prediction (its default): a producer written before the field still parses.
    return str(value.get("kind", "prediction") if isinstance(value, dict) else getattr(value, "kind", "prediction"))


#: A message on the results topic: its ``kind`` says which model it is.
_RESULT = TypeAdapter(
    Annotated[
        Annotated[Prediction, Tag("prediction")] | Annotated[PredictionError, Tag("prediction_error")],
        Discriminator(_result_kind),
    ]
)
_RESULT_TAGS = frozenset({"prediction", "prediction_error"})


def _document(message: BaseModel, key: str, exclude: set[str]) -> dict[str, Any]:
    """``message`` as a MongoDB document: its fields but ``exclude``, keyed by ``key`` (``_id``)."""
    document = message.model_dump(exclude=exclude)
    document["_id"] = key
    return document
