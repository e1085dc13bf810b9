"""The contract: what a valid reading is, and the reason given for each kind of bad one."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pipeline import contract
from tests.bad_payloads import bad_payloads

TOPIC = "sensors/s1/readings"


def payload(**fields: object) -> bytes:
    base: dict[str, object] = {"id": "r-1", "sensor": "s1", "ts": "2026-11-27T10:00:00Z", "v": 12.5}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_reading_round_trips() -> None:
    reading = contract.parse_reading(payload(zone="north"), TOPIC)
    assert reading.id == "r-1"
    assert reading.sensor == "s1"
    assert reading.ts == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert reading.v == 12.5
    assert reading.extras == {"zone": "north"}
    message = reading.to_message()
    assert message == {"id": "r-1", "sensor": "s1", "ts": "2026-11-27T10:00:00.000Z", "v": 12.5, "zone": "north"}
    assert contract.parse_reading(contract.dumps(message), TOPIC) == reading
    document = reading.to_document()
    assert document["_id"] == "r-1" and document["ts"] == reading.ts and "id" not in document


def test_offsets_are_normalised_to_utc() -> None:
    reading = contract.parse_reading(payload(ts="2026-11-27T12:00:00+02:00"), TOPIC)
    assert reading.ts == datetime(2026, 11, 27, 10, tzinfo=UTC)


def test_integer_value_is_a_number() -> None:
    assert contract.parse_reading(payload(v=7), TOPIC).v == 7.0


BAD = bad_payloads("s1")


@pytest.mark.parametrize(("raw", "reason"), BAD, ids=[r for _, r in BAD])
def test_bad_payload_is_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_reading(raw, TOPIC)
    assert reason in str(caught.value)


def test_wrong_topic_is_refused() -> None:
    with pytest.raises(contract.ContractError, match="not a readings topic"):
        contract.parse_reading(payload(), "other/s1")


def test_rejection_keeps_bytes_exactly() -> None:
    now = datetime.now(UTC)
    text = contract.Rejection.of(b'{"v": 1', "mqtt", TOPIC, "bad", now)
    binary = contract.Rejection.of(b"\xff\x00\x01", "mqtt", TOPIC, "bad", now)
    assert (text.payload_encoding, text.payload) == ("utf-8", '{"v": 1')
    assert binary.payload_encoding == "base64"
    assert binary.raw() == b"\xff\x00\x01" and text.raw() == b'{"v": 1'
    assert text.key != binary.key
    assert contract.Rejection.of(b'{"v": 1', "mqtt", TOPIC, "other reason", now).key == text.key


def test_results_round_trip() -> None:
    now = datetime.now(UTC).replace(microsecond=123000)  # messages carry milliseconds
    identity = contract.ModelIdentity(name="m", hash="abc")
    prediction = contract.Prediction(
        id="r-1",
        sensor="s1",
        ds=now,
        yhat=1.0,
        yhat_lower=0.5,
        yhat_upper=1.5,
        v=2.0,
        anomaly=True,
        model=identity,
        scored_at=now,
    )
    error = contract.PredictionError(id="r-2", sensor="s1", reason="no", model=identity, scored_at=now)
    parsed = contract.parse_result(contract.result_message(prediction))
    assert parsed.model_dump() == prediction.model_dump()
    assert isinstance(contract.parse_result(contract.result_message(error)), contract.PredictionError)
    assert prediction.to_document()["_id"] == "r-1"
    with pytest.raises(contract.ContractError, match="'yhat' is missing"):
        contract.parse_result(b'{"id": "r", "sensor": "s1"}')


def test_topic_helpers() -> None:
    assert contract.readings_topic("s9") == "sensors/s9/readings"
    assert contract.sensor_of_topic("sensors/s9/readings") == "s9"
    assert contract.sensor_of_topic("sensors/s9/other") is None


def test_messages_on_internal_topics_are_parsed_with_readable_reasons() -> None:
    reading = contract.Reading(id="r-1", sensor="s1", ts=datetime(2026, 11, 27, 10, tzinfo=UTC), v=1.5)
    forwarded = contract.dumps(reading.to_message() | {"received_at": contract.iso(datetime.now(UTC))})
    assert contract.parse_forwarded_reading(forwarded).v == 1.5
    for raw, reason in [
        (b"nope", "payload is not a JSON object (Invalid JSON"),
        (b"[1]", "payload is not a JSON object (Input should be an object"),
        (b'{"id": "r", "sensor": "s1", "ts": "2026-11-27T10:00:00Z", "v": NaN}', "field 'v' input should be a finite"),
        (b'{"id": "r", "sensor": "s1", "ts": 5, "v": 1}', "field 'ts' must be an ISO 8601 string"),
        (b"{" + b" " * contract.INTERNAL_MAX_BYTES + b"}", "over the 1048576-byte limit"),
    ]:
        with pytest.raises(contract.ContractError) as caught:
            contract.parse_forwarded_reading(raw)
        assert str(caught.value).startswith(reason) or reason in str(caught.value), str(caught.value)
    # A foreign producer's spacing still finds a prediction error.
    spaced = b'{"kind" : "prediction_error", "id": "r", "sensor": "s1", "reason": "x",'
    spaced += b' "model": {"name": "m", "hash": "h"}, "scored_at": "2026-11-27T10:00:00Z"}'
    assert isinstance(contract.parse_result(spaced), contract.PredictionError)


@pytest.mark.parametrize("value", [2**53 + 1, -(2**53) - 1, 1e16, -1.7976931348623157e308])
def test_values_past_the_magnitude_limit_are_refused(value: float) -> None:
    """Sums and errors of a sensor's readings (aggregates, accuracy) must stay finite: |v| <= 2^53."""
    with pytest.raises(contract.ContractError, match="at most 9,007,199,254,740,992 in magnitude"):
        contract.parse_reading(payload(v=value), TOPIC)
    assert contract.parse_reading(payload(v=float(2**53)), TOPIC).v == 2**53
