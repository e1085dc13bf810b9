"""The series the alerting rules read per sensor, per readiness check and per model scope.

- The bridge's per-sensor series (Server.metrics.SensorSeries): counted per
  stored reading, only for valid readings, for at most SERVER_SENSOR_METRICS_MAX
  sensors, and removed once a sensor has been silent for SENSOR_SERIES_TTL_S.
  The clock is the test's: nothing sleeps.
- ``pipeline_ready{check}`` (pipeline.health): the checks' answers at scrape
  time, /readyz asked or not.
- ``pipeline_model_info{scope}`` (Models_analysis.registry): one series per
  model file, removed with it.

The metrics are the process's own (prometheus_client's REGISTRY): every test
uses sensor ids and check names of its own.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import joblib
import pytest
from prometheus_client import REGISTRY

from Models_analysis.registry import ModelRegistry
from pipeline import contract, health
from Server import metrics
from Server.metrics import SensorSeries
from Server.settings import Settings as ServerSettings
from tests.helpers import payload
from tests.unit.models import ConstantModel
from tests.unit.test_settings_table import _reading, incoming, make, make_bridge


class Clock:
    """Unix time that moves only when the test says."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ids(n: int) -> list[str]:
    """``n`` sensor ids no other test uses."""
    prefix = uuid.uuid4().hex[:8]
    return [f"{prefix}-{i}" for i in range(n)]


def stored(sensor: str) -> float | None:
    return REGISTRY.get_sample_value("pipeline_sensor_readings_stored_total", {"sensor": sensor})


def last_stored(sensor: str) -> float | None:
    return REGISTRY.get_sample_value("pipeline_sensor_last_stored_timestamp_seconds", {"sensor": sensor})


# --- per-sensor series: counts, bound, removal -----------------------------------------------


def test_each_sensor_gets_its_count_and_the_time_of_its_last_stored_reading() -> None:
    a, b = ids(2)
    clock = Clock()
    series = SensorSeries(10, clock=clock)
    series.stored([a, b, a])
    assert (stored(a), stored(b)) == (2, 1)
    assert last_stored(a) == last_stored(b) == clock.now
    clock.now += 30
    series.stored([b])
    assert (stored(a), stored(b)) == (2, 2)
    assert (last_stored(a), last_stored(b)) == (clock.now - 30, clock.now)


def test_at_most_max_sensors_get_series_and_those_that_have_them_keep_them(caplog: pytest.LogCaptureFixture) -> None:
    first, second, *hostile = ids(50)
    series = SensorSeries(2, clock=Clock())
    series.stored([first, second])
    with caplog.at_level(logging.WARNING, logger="Server.metrics"):
        series.stored(hostile)
        series.stored(hostile)
    assert all(stored(sensor) is None and last_stored(sensor) is None for sensor in hostile)
    assert len(series) == 2
    # The sensors that had series keep counting.
    series.stored([first, *hostile])
    assert (stored(first), stored(second)) == (2, 1)
    # Said once, with the setting's name, not once per refused sensor or batch.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SERVER_SENSOR_METRICS_MAX" in warnings[0], warnings


def test_a_sensor_silent_for_the_ttl_loses_its_series_and_makes_room() -> None:
    old, kept, new = ids(3)
    clock = Clock()
    series = SensorSeries(2, ttl_s=3600, clock=clock)
    series.stored([old])
    clock.now += 1800
    series.stored([kept])
    clock.now += 1799  # old: 3599 s silent
    series.stored([new])
    assert stored(old) == 1 and stored(new) is None, "full, and nothing silent for the ttl yet"
    clock.now += 1  # old: 3600 s
    series.stored([new])
    assert stored(old) is None and last_stored(old) is None, "removed from /metrics"
    assert old not in series
    assert (stored(kept), stored(new)) == (1, 1)
    # Back after its series was removed: it starts again from 0, as a recreated series does.
    clock.now += 1800  # kept: 3600 s silent; new: 1800 s
    series.stored([old])
    assert (stored(old), stored(kept), stored(new)) == (1, None, 1)


def test_expire_alone_removes_every_sensor_past_the_ttl_and_only_those() -> None:
    a, b, c = ids(3)
    clock = Clock()
    series = SensorSeries(10, ttl_s=10, clock=clock)
    series.stored([a, b])
    clock.now += 5
    series.stored([c, a])  # a stored again: the least recently stored is b now
    clock.now += 5
    assert series.expire() == [b]
    assert (stored(a), stored(b), stored(c)) == (2, None, 1)
    clock.now += 10
    assert sorted(series.expire()) == sorted([a, c])
    assert len(series) == 0 and stored(a) is None and stored(c) is None


def test_the_default_keeps_series_for_a_day() -> None:
    assert metrics.SENSOR_SERIES_TTL_S == 24 * 3600
    assert make(ServerSettings).SERVER_SENSOR_METRICS_MAX == 10_000


# --- through the bridge: valid readings only, SERVER_SENSOR_METRICS_MAX -----------------------


def test_the_bridge_keeps_series_for_server_sensor_metrics_max_sensors_of_valid_readings_only() -> None:
    limit = 3
    built = make_bridge(SERVER_SENSOR_METRICS_MAX=limit)
    assert built.bridge.sensor_series.max_sensors == limit
    sensors = ids(limit + 2)
    hostile = ids(3)
    # Valid readings of limit + 2 sensors (two each), and payloads that break the contract on other topics.
    good = [
        incoming(payload(_reading(n, sensor).model_copy(update={"id": f"{sensor}-{n}"})), sensor, mid=n)
        for n, sensor in enumerate(sensors * 2)
    ]
    bad = [
        incoming(b"not json", hostile[0]),
        incoming(b'{"sensor": "' + hostile[1].encode() + b'", "ts": "never", "v": 1}', hostile[1]),
        incoming(b"x" * (contract.MAX_PAYLOAD_BYTES + 1), hostile[2]),
    ]
    assert built.bridge.loop.process(good[: len(sensors)] + bad)
    assert built.bridge.loop.process(good[len(sensors) :])
    assert [stored(s) for s in sensors] == [2.0] * limit + [None, None]
    assert all(last_stored(s) is not None for s in sensors[:limit])
    assert all(stored(s) is None for s in hostile)
    # A redelivered reading is a duplicate: not stored again, not counted again.
    assert built.bridge.loop.process(good[:1])
    assert stored(sensors[0]) == 2.0


# --- pipeline_ready{check} ---------------------------------------------------------------------


def ready(check: str) -> float | None:
    return REGISTRY.get_sample_value("pipeline_ready", {"check": check})


def test_readiness_is_a_metric_evaluated_at_each_scrape() -> None:
    passing, failing, raising = (f"check-{name}" for name in ids(3))
    state = {"up": True}

    def broken() -> bool:
        raise RuntimeError("cannot tell")

    health.HealthServer(0, ready={passing: lambda: state["up"], failing: lambda: False, raising: broken})
    # No /readyz was asked: a scrape evaluates the checks.
    body, _ = health.metrics()
    assert f'pipeline_ready{{check="{passing}"}} 1.0'.encode() in body
    assert f'pipeline_ready{{check="{failing}"}} 0.0'.encode() in body
    assert ready(raising) == 0, "a check that raises is failing, and the scrape still answers"
    state["up"] = False
    health.metrics()
    assert ready(passing) == 0
    state["up"] = True
    health.metrics()
    assert ready(passing) == 1


def test_readiness_asked_through_readyz_is_watched_from_then_on() -> None:
    (name,) = (f"check-{n}" for n in ids(1))
    state = {"up": False}
    code, body = health.readiness({name: lambda: state["up"]})
    assert code == 503 and body["checks"] == {name: False}
    assert ready(name) == 0, "set when /readyz is evaluated"
    state["up"] = True
    health.metrics()
    assert ready(name) == 1, "and at each scrape after it"


# --- pipeline_model_info{scope} ------------------------------------------------------------------


def model_info() -> dict[tuple[str, str], str]:
    """{(scope, name): hash} of every pipeline_model_info series at 1."""
    return {
        (sample.labels["scope"], sample.labels["name"]): sample.labels["hash"]
        for family in REGISTRY.collect()
        if family.name == "pipeline_model_info"
        for sample in family.samples
        if sample.value == 1
    }


def test_model_info_has_one_series_per_model_file_by_scope(tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex[:8]
    sensor, other = f"{prefix}-s1", f"{prefix}-s2"

    def save(stem: str, name: str, level: float) -> None:
        joblib.dump({"model": ConstantModel(level, 1.0), "metadata": {"name": name}}, tmp_path / "new.tmp")
        (tmp_path / "new.tmp").replace(tmp_path / f"{stem}.joblib")

    def mine() -> dict[tuple[str, str], str]:
        return {key: value for key, value in model_info().items() if key[1].startswith(prefix)}

    save("default", f"{prefix}-general", 1.0)
    save(sensor, f"{prefix}-own", 2.0)
    (tmp_path / f"{other}.txt").write_text("not a model: no scope")
    models = ModelRegistry(tmp_path)
    general = models.models["default"].identity.hash
    own = models.models[sensor].identity.hash
    assert mine() == {("default", f"{prefix}-general"): general, (sensor, f"{prefix}-own"): own}
    # The sensor's file replaced: its scope's series is the new model's, the old one is gone.
    save(sensor, f"{prefix}-own-v2", 3.0)
    models.refresh(force=True)
    own2 = models.models[sensor].identity.hash
    assert mine() == {("default", f"{prefix}-general"): general, (sensor, f"{prefix}-own-v2"): own2}
    assert not [s for f in REGISTRY.collect() for s in f.samples if s.labels.get("name") == f"{prefix}-own"], (
        "the replaced model's series is removed, not left at 0"
    )
    # The sensor's file removed: it uses the default, and its scope has no series.
    (tmp_path / f"{sensor}.joblib").unlink()
    models.refresh(force=True)
    assert mine() == {("default", f"{prefix}-general"): general}
