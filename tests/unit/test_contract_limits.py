"""The contract's limits at their edges, and the kind of every refusal (issue #12).

The kind (``ContractError.kind``) is what a rejection is filed under: the ``kind`` of the
document in ``rejections`` and the ``reason`` label of ``pipeline_rejections_total``, which the
alert rules and the dashboard count by. Each limit is tried on both sides of its edge, by example
and by property (hypothesis), with the expected answers written here, from the contract as the
README states it (16 KiB payloads, 32 extra fields, 3 levels of nesting, 2,048 keys and items,
40-character numbers, 64-bit integers, 4,096 kept bytes, 1,000-character reasons).

The property tests run the profile's budget (tests/conftest.py), or a few examples under
``make mutation`` (mutmut sets MUTANT_UNDER_TEST), where each edge is still tried by ``@example``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import contract

F = TypeVar("F", bound=Callable[..., Any])

TOPIC = "sensors/s1/readings"
TS = "2026-11-27T10:00:00Z"
WHEN = datetime(2026, 11, 27, 10, tzinfo=UTC)
MODEL = contract.ModelIdentity(name="m", hash="h")


def few(test: F) -> F:
    """The profile's example budget, or 15 examples under mutmut (each edge is an @example anyway)."""
    if "MUTANT_UNDER_TEST" in os.environ:
        return settings(max_examples=15)(test)
    return test


def reading_json(**extras: object) -> bytes:
    return json.dumps({"id": "r-1", "sensor": "s1", "ts": TS, "v": 1.5, **extras}).encode()


def with_raw_extra(text: str) -> bytes:
    """A reading whose extra field ``x`` is written as ``text`` (a number as is, say)."""
    return f'{{"id": "r-1", "sensor": "s1", "ts": "{TS}", "v": 1.5, "x": {text}}}'.encode()


def kind_of(raw: bytes, topic: str | None = TOPIC, **kwargs: Any) -> str:
    """The kind parse_reading refuses ``raw`` with ("ok" when it takes it)."""
    try:
        contract.parse_reading(raw, topic, **kwargs)
    except contract.ContractError as error:
        assert " " in str(error), f"a refusal says why, for the person reading the rejection: {error!r}"
        return error.kind
    return "ok"


def nested(depth: int, leaf: object = 1) -> object:
    """An object ``depth`` levels deep: nested(0) is the leaf, nested(2) is {"a": {"a": leaf}}."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# --- the kind of each refusal -----------------------------------------------------------------

KINDS = [
    (b"", "empty"),
    (b"not json", "not_json"),
    (b'{"id": "r-1",', "not_json"),
    (b"[1, 2]", "not_object"),
    (b"null", "not_object"),
    (b"42", "not_object"),
    (b"\xff\xfe{}", "not_utf8"),
    (b"[" * 5_000, "too_deep"),
    (b'{"id": "a", "id": "b", "sensor": "s1", "ts": "2026-11-27T10:00:00Z", "v": 1}', "duplicate_key"),
    (reading_json(**{"$where": 1}), "bad_key"),
    (reading_json(**{"a.b": 1}), "bad_key"),
    (reading_json(inner={"1x": 1}), "bad_key"),
    (b'{"id": "a", "sensor": "s1", "ts": "2026-11-27T10:00:00Z", "v": NaN}', "bad_number"),
    (b'{"id": "a", "sensor": "s1", "ts": "2026-11-27T10:00:00Z", "v": -Infinity}', "bad_number"),
    (with_raw_extra("1e999"), "bad_number"),
    (with_raw_extra(str(2**63)), "bad_number"),
    (with_raw_extra("1" + "0" * 40), "bad_number"),
    (reading_json(x="a\u0000b"), "bad_string"),
    (with_raw_extra('"\\ud800"'), "bad_string"),
    (reading_json(x=[[1]]), "too_deep"),
    (reading_json(x=nested(4)), "too_deep"),
    (reading_json(x=[0] * 2044), "too_many_values"),
    (reading_json(**{f"f{i}": i for i in range(33)}), "too_many_fields"),
    (reading_json(received_at=TS), "reserved_field"),
    (reading_json(_id="x"), "reserved_field"),
    (json.dumps({"sensor": "s1", "ts": TS, "v": 1}).encode(), "missing_field"),
    (json.dumps({"id": "r-1", "sensor": "s1", "ts": TS}).encode(), "missing_field"),
    (json.dumps({"sensor": "s1", "ts": TS, "v": "x"}).encode(), "missing_field"),
    (reading_json(v="1.5"), "bad_field"),
    (reading_json(v=True), "bad_field"),
    (reading_json(ts=1764237600), "bad_field"),
    (reading_json(ts="1999-12-31T23:59:59Z"), "bad_field"),
    (reading_json(id="a b"), "bad_field"),
    (reading_json(sensor="s2"), "wrong_sensor"),
]


@pytest.mark.parametrize(("raw", "kind"), KINDS, ids=[f"{k}-{i}" for i, (_, k) in enumerate(KINDS)])
def test_each_refusal_is_filed_under_its_kind(raw: bytes, kind: str) -> None:
    assert kind_of(raw) == kind


def test_a_topic_that_is_not_a_readings_topic_is_wrong_topic() -> None:
    assert kind_of(reading_json(), "sensors/s1/other") == "wrong_topic"
    assert kind_of(reading_json(), "s1") == "wrong_topic"
    assert kind_of(reading_json(), None) == "ok", "no topic: the sensor is not checked"


def test_a_rejection_without_a_kind_is_a_bad_field_and_says_why() -> None:
    error = contract.ContractError("field 'v' is wrong")
    assert (error.kind, str(error)) == ("bad_field", "field 'v' is wrong")


def test_the_missing_fields_are_named_and_the_nested_ones_by_their_path() -> None:
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_reading(json.dumps({"id": "r-1", "sensor": "s1", "ts": TS}).encode(), TOPIC)
    assert (caught.value.kind, str(caught.value)) == ("missing_field", "field 'v' is missing")
    result = {
        "kind": "prediction_error", "id": "r-1", "sensor": "s1", "reason": "x", "model": {"name": "m"},
        "scored_at": TS,
    }  # fmt: skip
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_result(json.dumps(result).encode())
    assert (caught.value.kind, str(caught.value)) == ("missing_field", "field 'model.hash' is missing")
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_result(json.dumps(result | {"model": {"name": "m", "hash": "h"}, "reason": 5}).encode())
    assert (caught.value.kind, str(caught.value)) == ("bad_field", "field 'reason' input should be a valid string")


@pytest.mark.parametrize("raw", [b'"text"', b"[1]", b"5"])
def test_a_result_that_is_not_an_object_is_refused_as_not_json(raw: bytes) -> None:
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_result(raw)
    assert caught.value.kind == "not_json"
    assert str(caught.value) == "payload is not a JSON object (Input should be an object)"


def test_a_result_without_a_kind_is_a_prediction_and_an_unknown_kind_is_refused() -> None:
    prediction = contract.Prediction(
        id="r-1", sensor="s1", ds=WHEN, yhat=1.0, yhat_lower=0.0, yhat_upper=2.0, v=1.0, anomaly=False, model=MODEL,
        scored_at=WHEN,
    )  # fmt: skip
    value = json.loads(contract.result_message(prediction))
    del value["kind"]
    assert contract.parse_result(json.dumps(value).encode()) == prediction
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_result(json.dumps(value | {"kind": "forecast"}).encode())
    assert caught.value.kind == "not_json"


# --- the edges, by example and by property ----------------------------------------------------


@few
@given(st.integers(min_value=16_000, max_value=17_000))
@example(16 * 1024)
@example(16 * 1024 + 1)
def test_a_payload_up_to_16_kib_is_parsed_and_a_larger_one_refused_as_too_large(size: int) -> None:
    raw = reading_json(pad="")
    raw = raw[:-2] + b"x" * (size - len(raw)) + raw[-2:]
    assert len(raw) == size
    assert kind_of(raw) == ("ok" if size <= 16_384 else "too_large")


def test_the_payload_limit_is_the_callers() -> None:
    raw = reading_json()
    assert kind_of(raw, max_bytes=len(raw)) == "ok"
    assert kind_of(raw, max_bytes=len(raw) - 1) == "too_large"


@few
@given(st.integers(min_value=-(2**65), max_value=2**65))
@example(2**63 - 1)
@example(2**63)
@example(-(2**63))
@example(-(2**63) - 1)
def test_an_integer_is_taken_if_it_fits_64_bits(value: int) -> None:
    fits = -9_223_372_036_854_775_808 <= value <= 9_223_372_036_854_775_807
    raw = with_raw_extra(str(value))
    assert kind_of(raw) == ("ok" if fits else "bad_number")
    if fits:
        assert contract.parse_reading(raw, TOPIC).extras == {"x": value}


@few
@given(st.integers(min_value=1, max_value=60))
@example(40)
@example(41)
def test_a_number_is_taken_if_written_with_at_most_40_characters(length: int) -> None:
    text = {1: "1", 2: "10"}.get(length) or "0." + "0" * (length - 3) + "1"  # 0.001 has 5 characters
    assert len(text) == length
    assert kind_of(with_raw_extra(text)) == ("ok" if length <= 40 else "bad_number")


def test_a_float_past_a_double_is_refused_and_one_just_below_is_kept() -> None:
    assert kind_of(with_raw_extra("1e308")) == "ok"
    assert kind_of(with_raw_extra("1e309")) == "bad_number"
    assert kind_of(with_raw_extra("-1e309")) == "bad_number"


@few
@given(st.integers(min_value=0, max_value=40))
@example(32)
@example(33)
def test_up_to_32_extra_fields_are_taken(count: int) -> None:
    raw = reading_json(**{f"f{i}": i for i in range(count)})
    assert kind_of(raw) == ("ok" if count <= 32 else "too_many_fields")


@few
@given(st.integers(min_value=0, max_value=7), st.sampled_from(["dict", "list", "string"]))
@example(3, "dict")
@example(4, "dict")
@example(3, "string")
@example(3, "list")
def test_an_extra_field_may_nest_3_levels(depth: int, leaf: str) -> None:
    value: object = {"dict": {}, "list": [], "string": "s"}[leaf]
    levels = depth + (1 if leaf != "string" else 0)  # an empty object or list is a level of its own
    assert kind_of(reading_json(x=nested(depth, value))) == ("ok" if levels <= 3 else "too_deep")


@few
@given(st.integers(min_value=1_900, max_value=2_100))
@example(2_043)
@example(2_044)
def test_a_payload_holds_at_most_2048_keys_and_items(items: int) -> None:
    # The object's own 5 keys (id, sensor, ts, v, x) count, and the list's items.
    assert kind_of(reading_json(x=[0] * items)) == ("ok" if 5 + items <= 2048 else "too_many_values")


def test_the_budget_counts_keys_and_items_at_every_depth() -> None:
    # 6 keys at the top, 2 in "a", 2,040 items in "b": 2,048 in all.
    assert kind_of(reading_json(a={"p": 1, "q": 2}, b=[0] * 2040)) == "ok"
    assert kind_of(reading_json(a={"p": 1, "q": 2, "r": 3}, b=[0] * 2040)) == "too_many_values"


# --- forwarded readings (the model service's input) ----------------------------------------------


def forwarded(**extras: object) -> bytes:
    reading = contract.Reading(id="r-1", sensor="s1", ts=WHEN, v=1.5, received_at=WHEN, **extras)
    return contract.dumps(reading.to_message())


def forwarded_kind(raw: bytes) -> str:
    try:
        contract.parse_forwarded_reading(raw)
    except contract.ContractError as error:
        return error.kind
    return "ok"


def test_a_forwarded_reading_keeps_the_edges_limits_on_nesting_and_values() -> None:
    assert forwarded_kind(forwarded(x=nested(3))) == "ok"
    assert forwarded_kind(forwarded(x=nested(4))) == "too_deep"
    with pytest.raises(contract.ContractError, match=r"^extra fields nest deeper than 3 levels$"):
        contract.parse_forwarded_reading(forwarded(x=nested(4)))
    assert forwarded_kind(forwarded(x=[0] * 2043)) == "ok"
    assert forwarded_kind(forwarded(x=[0] * 2044)) == "too_many_values"
    assert forwarded_kind(forwarded(x="a\u0000b")) == "bad_string"
    parsed = contract.parse_forwarded_reading(forwarded(zone="north"))
    assert (parsed.received_at, parsed.extras) == (WHEN, {"zone": "north"})


def test_a_forwarded_reading_is_taken_up_to_1_mib() -> None:
    raw = forwarded()
    at_limit = raw[:-1] + b" " * (1_048_576 - len(raw)) + b"}"
    assert len(at_limit) == 1_048_576
    assert contract.parse_forwarded_reading(at_limit).id == "r-1"
    assert forwarded_kind(at_limit[:-1] + b" }") == "too_large"
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_alert(b" " * 1_048_577)
    assert caught.value.kind == "too_large"


# --- what a rejection keeps ----------------------------------------------------------------------


def test_a_rejection_document_is_keyed_by_transport_topic_and_bytes() -> None:
    rejection = contract.Rejection.of(b"bad", "mqtt", TOPIC, "the reason", WHEN, "not_json")
    assert rejection.to_document() == {
        "_id": hashlib.sha256(b"mqtt:sensors/s1/readings\x00bad").hexdigest(),
        "payload": "bad",
        "payload_encoding": "utf-8",
        "size": 3,
        "sha256": hashlib.sha256(b"bad").hexdigest(),
        "truncated": False,
        "transport": "mqtt",
        "topic": TOPIC,
        "received_at": WHEN,
        "kind": "not_json",
        "reason": "the reason",
    }
    assert contract.Rejection.of(b"bad", "kafka", TOPIC, "r", WHEN).key != rejection.key
    assert contract.Rejection.of(b"bad", "mqtt", "sensors/s2/readings", "r", WHEN).key != rejection.key
    assert contract.Rejection.of(b"bad", "mqtt", TOPIC, "r", WHEN).kind == "bad_field", "the default kind"


def test_a_rejection_on_a_topic_no_encoder_takes_is_still_kept() -> None:
    rejection = contract.Rejection.of(b"bad", "kafka", "t\ud800", "r", WHEN)
    assert rejection.key == hashlib.sha256(b"kafka:t?\x00bad").hexdigest()
    assert rejection.topic == "t\ufffd"


def test_a_payload_cut_inside_a_character_keeps_the_text_before_it() -> None:
    raw = b"a" * 4095 + "é".encode() + b"tail"  # the 4,096th byte is the first of "é"
    rejection = contract.Rejection.of(raw, "mqtt", TOPIC, "r", WHEN)
    assert (rejection.payload_encoding, rejection.payload) == ("utf-8", "a" * 4095)
    assert (rejection.size, rejection.truncated) == (4101, True)
    assert rejection.sha256 == hashlib.sha256(raw).hexdigest()


def test_a_whole_payload_ending_inside_a_character_is_kept_as_base64() -> None:
    raw = b"abc\xe2\x82"  # a three-byte character, cut short by the sensor: not text
    rejection = contract.Rejection.of(raw, "mqtt", TOPIC, "r", WHEN)
    assert (rejection.payload_encoding, rejection.payload) == ("base64", "YWJj4oI=")
    assert (rejection.raw(), rejection.truncated) == (raw, False)


def test_text_holding_a_nul_is_kept_as_base64_and_other_text_as_is() -> None:
    nul = contract.Rejection.of(b"a\x00b", "mqtt", TOPIC, "r", WHEN)
    assert (nul.payload_encoding, nul.payload, nul.raw()) == ("base64", "YQBi", b"a\x00b")
    text = contract.Rejection.of("é€".encode(), "mqtt", TOPIC, "r", WHEN)
    assert (text.payload_encoding, text.payload, text.raw()) == ("utf-8", "é€", "é€".encode())


@few
@given(st.binary(max_size=5_000))
@example(b"x" * 4096)
@example(b"x" * 4097)
def test_a_rejection_keeps_the_first_4096_bytes_exactly_with_the_size_and_hash_of_all(raw: bytes) -> None:
    rejection = contract.Rejection.of(raw, "mqtt", TOPIC, "r", WHEN)
    assert (rejection.size, rejection.truncated) == (len(raw), len(raw) > 4096)
    assert rejection.sha256 == hashlib.sha256(raw).hexdigest()
    kept = rejection.raw()
    if rejection.payload_encoding == "base64":
        assert kept == raw[:4096]
        assert base64.b64decode(rejection.payload) == kept
    else:  # text: the kept bytes, or their prefix up to a character cut in two
        assert raw[:4096].startswith(kept) and len(raw[:4096]) - len(kept) < 4
        assert "\x00" not in rejection.payload


# --- free text is cut and made storable ---------------------------------------------------------


@few
@given(st.text(max_size=1_100))
@example("x" * 1000)
@example("x" * 1001)
@example("a\u0000b\ud800")
def test_a_reason_is_at_most_1000_characters_and_holds_nothing_a_store_refuses(text: str) -> None:
    reason = contract.PredictionError(id="r-1", sensor="s1", reason=text, model=MODEL, scored_at=WHEN).reason
    clean = text.replace("\x00", "\ufffd")
    clean = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in clean)
    if len(text) <= 1000:
        assert reason == clean
    else:
        assert reason == clean[:999] + "…"


def test_a_rejections_topic_and_reason_are_cut() -> None:
    rejection = contract.Rejection.of(b"x", "mqtt", "t" * 300, "r" * 1001, WHEN)
    assert rejection.topic == "t" * 255 + "…"
    assert rejection.reason == "r" * 999 + "…"
    exact = contract.Rejection.of(b"x", "mqtt", "t" * 256, "r" * 1000, WHEN)
    assert (exact.topic, exact.reason) == ("t" * 256, "r" * 1000)


def test_a_model_name_with_a_nul_is_stored_with_a_replacement_character() -> None:
    assert contract.ModelIdentity(name="a\x00b", hash="h").name == "a\ufffdb"


def test_a_topic_quoted_in_a_reason_is_cut_to_80_characters() -> None:
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_reading(reading_json(), "x" * 100)
    assert "'" + "x" * 79 + "…'" in str(caught.value)


# --- times and the message form -------------------------------------------------------------------


@pytest.fixture
def paris_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local time zone is Europe/Paris (UTC+1 in November)."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_times_are_utc_in_messages_and_documents_whatever_the_hosts_zone(paris_host: None) -> None:
    reading = contract.parse_reading(reading_json(ts="2026-11-27T12:00:00+02:00"), TOPIC)
    assert reading.ts.utcoffset() == timedelta(0)
    assert reading.ts == datetime(2026, 11, 27, 10, tzinfo=UTC)
    assert reading.to_message()["ts"] == "2026-11-27T10:00:00.000Z"
    east = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC).astimezone()
    assert contract.iso(east) == "2026-11-27T12:00:00.123Z"


def test_a_datetime_in_a_message_is_written_as_iso_utc_with_milliseconds_and_z() -> None:
    assert contract.dumps({"at": datetime(2026, 11, 27, 10, 0, 0, 831000, tzinfo=UTC)}) == (
        b'{"at":"2026-11-27T10:00:00.831Z"}'
    )
    error = contract.PredictionError(id="r-1", sensor="s1", reason="x", model=MODEL, scored_at=WHEN)
    assert json.loads(contract.result_message(error))["scored_at"] == "2026-11-27T10:00:00.000Z"


def test_a_time_past_the_last_utc_moment_is_refused_as_a_bad_field() -> None:
    assert kind_of(reading_json(ts="9999-12-31T23:59:59-01:00")) == "bad_field"


def test_a_payload_starting_with_a_byte_order_mark_is_not_json_and_says_so() -> None:
    with pytest.raises(contract.ContractError) as caught:
        contract.parse_reading("\ufeff".encode() + reading_json(), TOPIC)
    assert caught.value.kind == "not_json"
    assert str(caught.value) == "payload is not JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1 column 1)"
