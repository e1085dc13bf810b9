"""Property-based fuzzing of every per-message path, up to the bytes each store and topic receives.

The invariants, for any input whatsoever:

- the bridge (``Server.ingest.prepare``), the results sink
  (``Server.results.parse``) and the model service
  (``contract.parse_forwarded_reading`` then ``score``) raise nothing but a
  :class:`contract.ContractError`, whose kind is one of the fixed set;
- whatever they accept is encodable: the MongoDB document as BSON and within
  FerretDB's rules, the Kafka record within :data:`contract.MAX_RECORD_BYTES`;
- every rejection record (what any refused input becomes) fits the same limits.

The example budget is fixed (``HYPOTHESIS_MAX_EXAMPLES``, 300 by default; see
tests/conftest.py), failing examples are kept in ``tests/hypothesis-examples``
and replayed on every run, and each failure found so far is pinned below in
``KNOWN`` so it is replayed even on a fresh clone.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from Models_analysis.model import LoadedModel, score
from pipeline import contract
from Server.ingest import prepare
from Server.results import parse
from tests.unit.models import ConstantModel

NOW = datetime.now(UTC)
SENSOR = "s-1"
TOPIC = contract.readings_topic(SENSOR)
LIMIT = contract.MAX_PAYLOAD_LIMIT
#: A rejection's record is a few KiB at most: a 4 KiB prefix (escaped: up to 6 characters a byte) and text.
REJECTION_RECORD_MAX = contract.MAX_KEPT_BYTES * 6 + 4 * 1024


# --- the invariants ------------------------------------------------------------


def assert_storable(value: Any, where: str = "document") -> None:
    """What MongoDB and FerretDB take: no $-prefixed, dotted or NUL keys, no list in a list, finite numbers."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str) and key, f"{where}: key {key!r}"
            assert not key.startswith("$") and "." not in key and "\x00" not in key, f"{where}: key {key!r}"
            assert_storable(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            assert not isinstance(item, list), f"{where}: a list inside a list"
            assert_storable(item, f"{where}[]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where}: {value}"
    elif isinstance(value, int) and not isinstance(value, bool):
        assert contract.INT64_MIN <= value <= contract.INT64_MAX, f"{where}: {value}"
    elif isinstance(value, str):
        value.encode("utf-8")  # no lone surrogates
        assert "\x00" not in value, f"{where}: NUL"


def assert_document(document: dict[str, Any]) -> None:
    assert_storable(document)
    assert len(bson.encode(document)) < 16 * 1024 * 1024


def assert_rejection_fits(raw: bytes, error: contract.ContractError, transport: str = "mqtt") -> None:
    assert error.kind in contract.REJECT_KINDS, error.kind
    assert str(error), "a rejection needs a reason a person can read"
    rejection = contract.Rejection.of(raw, transport, TOPIC, str(error), NOW, error.kind)  # type: ignore[arg-type]
    assert_document(rejection.to_document())
    record = contract.dumps(rejection.model_dump())
    assert len(record) <= REJECTION_RECORD_MAX
    assert len(rejection.raw()) <= contract.MAX_KEPT_BYTES and raw.startswith(rejection.raw())
    assert rejection.truncated == (len(raw) > contract.MAX_KEPT_BYTES)


def check_bridge(raw: bytes, topic: str = TOPIC) -> contract.Reading | None:
    """The bridge's per-message path: a reading fit for both stores, or a rejection that fits."""
    try:
        prepared = prepare(raw, topic, NOW, LIMIT)
    except contract.ContractError as error:
        assert_rejection_fits(raw, error)
        return None
    assert_document(prepared.document)
    assert len(prepared.value) <= contract.MAX_RECORD_BYTES
    assert abs(prepared.reading.v) <= contract.MAX_ABS_VALUE, "sums of a sensor's values must stay finite"
    # What the bridge forwards, the model service takes.
    forwarded = contract.parse_forwarded_reading(prepared.value)
    assert forwarded.id == prepared.reading.id and forwarded.v == prepared.reading.v
    return prepared.reading


def check_model_service(raw: bytes) -> None:
    """The model service's per-message path, then scoring and the results it produces."""
    try:
        reading = contract.parse_forwarded_reading(raw)
    except contract.ContractError as error:
        assert_rejection_fits(raw, error, "kafka")
        return
    model = LoadedModel(ConstantModel(level=0.0, width=1.0), contract.ModelIdentity(name="c", hash="h"), None)  # type: ignore[arg-type]
    for result in score(model, [reading], 1000):
        message = contract.result_message(result)
        assert len(message) <= contract.MAX_RECORD_BYTES
        assert_document(parse(message, is_alert=False).document)


def check_results_sink(raw: bytes, is_alert: bool) -> None:
    try:
        parsed = parse(raw, is_alert)
    except contract.ContractError as error:
        assert_rejection_fits(raw, error, "kafka")
        return
    assert_document(parsed.document)


# --- what an attacker sends ----------------------------------------------------

# Keys of every kind: plain, $-prefixed, dotted, NUL, empty, long, non-ASCII, lone surrogates.
keys = st.one_of(
    st.sampled_from(["id", "sensor", "ts", "v", "_id", "received_at", "$set", "a.b", "a\x00", "", "x" * 70]),
    st.text(max_size=12),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=4),
)
strings = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=6),  # surrogates, controls
    st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", "9999-12-31T23:59:59-01:00"]),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=6), st.dictionaries(keys, children, max_size=6)),
    max_leaves=40,
)
#: Number literals the JSON parser must bound: long digit runs, huge exponents, negative zero.
number_literals = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,80})(\.[0-9]{1,80})?([eE][+-]?[0-9]{1,6})?", fullmatch=True),
    st.sampled_from(["1e999", "-1e999", "1e-999", "-0", "9" * 5000, "0." + "1" * 5000, "18446744073709551616"]),
)
offsets = st.builds(
    lambda sign, h, m: "Z" if (h, m) == (0, 0) and sign == "+" else f"{sign}{h:02d}:{m:02d}",
    st.sampled_from("+-"),
    st.integers(0, 23),
    st.integers(0, 59),
)
timestamps = st.one_of(
    st.builds(
        lambda year, rest, offset: f"{year:04d}-{rest}{offset}",
        st.integers(1, 9999),
        st.sampled_from(["01-01T00:00:00", "12-31T23:59:59", "06-15T12:00:00.123456"]),
        offsets,
    ),
    st.builds(
        lambda delta, offset: (NOW + timedelta(seconds=delta)).strftime("%Y-%m-%dT%H:%M:%S") + offset,
        st.integers(-3 * 86400, 3 * 86400),
        offsets,
    ),
    strings,
    numbers,
)


def encode(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", errors="surrogatepass")


@st.composite
def readings(draw: st.DrawFn) -> bytes:
    """A valid reading, then mutated: any field replaced, extras of any shape, odd times, raw number literals."""
    body: dict[str, Any] = {"id": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True))}
    body["sensor"] = SENSOR
    body["ts"] = draw(timestamps)
    body["v"] = draw(st.one_of(st.floats(-1e6, 1e6), numbers))
    for _ in range(draw(st.integers(0, 3))):
        body[draw(keys)] = draw(json_values)
    if draw(st.booleans()):
        body[draw(st.sampled_from(["id", "sensor", "ts", "v"]))] = draw(json_values)
    text = encode(body, draw(st.booleans()))
    if draw(st.booleans()):
        # A raw literal where a value goes: the parser's number limits.
        text = text.replace(b'"v": ', b'"v": ' + draw(number_literals).encode() + b', "w": ', 1)
    return text


@st.composite
def sized(draw: st.DrawFn) -> bytes:
    """Payloads around every size and count limit: bytes, extra fields, keys and items, depth."""
    body: dict[str, Any] = {"id": "r1", "sensor": SENSOR, "ts": NOW.isoformat(), "v": 1.0}
    which = draw(st.sampled_from(["bytes", "fields", "values", "depth"]))
    if which == "bytes":
        base = len(encode({**body, "pad": ""}, True))
        body["pad"] = "x" * max(0, draw(st.integers(LIMIT - 64, LIMIT + 64)) - base)
    elif which == "fields":
        body.update({f"f{i}": i for i in range(draw(st.integers(0, contract.MAX_EXTRA_FIELDS + 3)))})
    elif which == "values":
        body["items"] = [0] * draw(st.integers(contract.MAX_VALUES - 5, contract.MAX_VALUES + 5))
    else:
        value: Any = 1
        for _ in range(draw(st.integers(0, contract.MAX_EXTRA_DEPTH + 3))):
            value = {"a": value} if draw(st.booleans()) else [value]
        body["deep"] = value
    return encode(body, True)


payloads = st.one_of(st.binary(max_size=200), json_values.map(lambda v: encode(v, False)), readings(), sized())

#: Failures found so far (by the issue's reporter and by this fuzzer), replayed on every run.
KNOWN: list[bytes] = [
    b'{"id": "a", "sensor": "s-1", "ts": "9999-12-31T23:59:59-01:00", "v": 1}',
    b'{"id": "a", "sensor": "s-1", "ts": "0001-01-01T00:00:00+01:00", "v": 1}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": ' + b"9" * 5000 + b"}",
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": 1' + b"0" * 400 + b".0}",
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": "\\ud800"}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": {"\\udc00": 1}}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": {"$set": 1}}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": {"a.b": 1}}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": {"a\\u0000": 1}}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": [[1]]}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "x": 18446744073709551616}',
    b'{"id": "a", "sensor": "s-1", "ts": "2026-11-27T10:00:00Z", "v": 1, "pad": "' + b"x" * (2 << 20) + b'"}',
    b"[" * 100_000,
]


@pytest.mark.parametrize("raw", KNOWN, ids=[f"known-{i}" for i in range(len(KNOWN))])
def test_known_hostile_payloads(raw: bytes) -> None:
    assert check_bridge(raw) is None, "each of these must be rejected"
    check_model_service(raw)
    check_results_sink(raw, is_alert=False)
    check_results_sink(raw, is_alert=True)


@given(payloads)
def test_bridge_accepts_only_what_it_can_store_and_forward(raw: bytes) -> None:
    check_bridge(raw)


@given(payloads, st.sampled_from(["sensors/s-2/readings", "sensors/s-1/other", "sensors//readings", "a/b"]))
def test_bridge_on_other_topics(raw: bytes, topic: str) -> None:
    assert check_bridge(raw, topic) is None


@given(readings())
def test_some_mutated_readings_still_pass(raw: bytes) -> None:
    # Not an assertion that they pass: the invariant holds on both sides of every limit.
    check_bridge(raw)


@given(payloads)
def test_model_service_never_raises_anything_but_a_contract_error(raw: bytes) -> None:
    check_model_service(raw)


@given(payloads, st.booleans())
def test_results_sink_never_raises_anything_but_a_contract_error(raw: bytes, is_alert: bool) -> None:
    check_results_sink(raw, is_alert)


@st.composite
def results(draw: st.DrawFn) -> bytes:
    """A prediction, prediction error or alert, mutated."""
    body: dict[str, Any] = {
        "kind": draw(st.sampled_from(["prediction", "prediction_error", "other", None])),
        "id": "r1",
        "sensor": SENSOR,
        "ds": draw(timestamps),
        "ts": draw(timestamps),
        "yhat": draw(numbers),
        "yhat_lower": 0.0,
        "yhat_upper": 1.0,
        "v": draw(numbers),
        "anomaly": draw(st.booleans()),
        "direction": draw(st.sampled_from(["above", "below", "x"])),
        "miss": 0.5,
        "reason": draw(strings),
        "model": draw(st.one_of(st.just({"name": "m", "hash": "h"}), json_values)),
        "scored_at": NOW.isoformat(),
        "detected_at": NOW.isoformat(),
    }
    if draw(st.booleans()):
        body[draw(keys)] = draw(json_values)
    return encode({k: v for k, v in body.items() if v is not None}, draw(st.booleans()))


@given(results(), st.booleans())
def test_results_sink_on_mutated_results(raw: bytes, is_alert: bool) -> None:
    check_results_sink(raw, is_alert)


def test_the_fuzzer_reaches_acceptance() -> None:
    """Guard against a strategy that only ever produces rejections (the property would hold vacuously).

    About 1-4 % of the mutated readings are valid (2 to 12 of 300, in 15 runs): 300 examples found none
    now and then (seen once in a run of the unit tests), so the guard draws 2,000.
    """
    accepted = 0

    @settings(max_examples=2000, database=None)
    @given(readings())
    def count(raw: bytes) -> None:
        nonlocal accepted
        accepted += check_bridge(raw) is not None

    count()
    assert accepted > 0, "none of 2,000 mutated readings was valid"
