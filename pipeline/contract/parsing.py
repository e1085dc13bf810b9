"""Bytes into messages: the strict JSON of the edge, and pydantic's own parser on the pipeline's topics."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from pipeline.contract.limits import (
    _BAD_CHARACTER,
    _CONTRACT_FIELDS,
    _FIELD_NAME,
    _RESERVED_FIELDS,
    INT64_MAX,
    INT64_MIN,
    MAX_EXTRA_DEPTH,
    MAX_EXTRA_FIELDS,
    MAX_NUMBER_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_VALUES,
    ContractError,
    RejectKind,
    _printable,
    iso,
)
from pipeline.contract.messages import _RESULT, _RESULT_TAGS, Alert, Reading, Result
from pipeline.contract.names import sensor_of_topic


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
