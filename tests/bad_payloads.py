"""A catalogue of bad payloads, each with a fragment of the reason the pipeline must give."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta


def _payload(who: str, /, **fields: object) -> bytes:
    base: dict[str, object] = {"id": "bad-1", "sensor": who, "ts": datetime.now(UTC).isoformat(), "v": 12.5}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def bad_payloads(sensor: str) -> list[tuple[bytes, str]]:
    """(payload, reason fragment) pairs for a sensor publishing on its own topic."""
    now = datetime.now(UTC).isoformat()
    s = sensor.encode()
    return [
        (b"", "empty"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"text"', "a JSON str, not an object"),
        (b"null", "a JSON null"),
        (b"42", "a JSON int, not an object"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (
            b'{"id": "a", "id": "b", "sensor": "' + s + b'", "ts": "' + now.encode() + b'", "v": 1}',
            "duplicate key 'id'",
        ),
        (b'{"id": "a", "sensor": "' + s + b'", "ts": "' + now.encode() + b'", "v": NaN}', "NaN is not a number"),
        (
            b'{"id": "a", "sensor": "' + s + b'", "ts": "' + now.encode() + b'", "v": Infinity}',
            "Infinity is not a number",
        ),
        (b'{"id": "a", "sensor": "' + s + b'", "ts": "' + now.encode() + b'", "v": -Infinity}', "-Infinity is not"),
        (_payload(sensor, id=...), "'id' is missing"),
        (_payload(sensor, sensor=...), "'sensor' is missing"),
        (_payload(sensor, ts=...), "'ts' is missing"),
        (_payload(sensor, v=...), "'v' is missing"),
        (_payload(sensor, v="12.5"), "'v' must be a JSON number"),
        (_payload(sensor, v=True), "'v' must be a JSON number"),
        (_payload(sensor, v=None), "'v' must be a JSON number"),
        (_payload(sensor, v=[1, 2]), "'v' must be a JSON number"),
        (_payload(sensor, v=10**30), "too large"),
        (_payload(sensor, id=5), "'id'"),
        (_payload(sensor, id=""), "'id'"),
        (_payload(sensor, id="a b"), "'id'"),
        (_payload(sensor, sensor=7), "'sensor'"),
        (_payload(sensor, ts="yesterday"), "'ts'"),
        (_payload(sensor, ts="2026-11-27T10:00:00"), "'ts'"),
        (_payload(sensor, ts=1764237600), "ISO 8601 string"),
        (_payload(sensor, ts="1970-01-01T00:00:00Z"), "before 2000-01-01"),
        (_payload(sensor, ts=(datetime.now(UTC) + timedelta(days=30)).isoformat()), "in the future"),
        (_payload(sensor, sensor=sensor + "x"), f"does not match the topic's sensor {sensor!r}"),
        (_payload(sensor, received_at=now), "set by the pipeline"),
        (_payload(sensor, _id="x"), "set by the pipeline"),
        (_payload(sensor, **{"$where": 1}), "not allowed"),
        (_payload(sensor, **{"a.b": 1}), "not allowed"),
        (_payload(sensor, deep={"a": {"b": {"c": {"d": 1}}}}), "nests deeper"),
        (b'{"id": "a", "sensor": "' + s + b'", "ts": "' + now.encode() + b'", "v": 1, "x": 1e999}', "too large"),
        (b"[" * 5_000, "nested too deeply"),
        (_payload(sensor, pad="x" * 20_000), "over the 16384-byte limit"),
        (_payload(sensor, **{f"f{i}": i for i in range(40)}), "extra fields, over the limit"),
    ]
