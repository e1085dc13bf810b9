"""Forecast ahead, score by lookup (Models_analysis.ahead): the grid, its lookup, and when it is made.

No servers: the scorer runs with a recording consumer and producer, and
deterministic models whose forecast at any time is known in closed form.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from unittest import mock

import pandas as pd
import pytest
from confluent_kafka import Producer
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import Models_analysis.scorer as scorer_module
from Models_analysis.ahead import BEHIND_SHARE, Grids, Plan, grid_times, make_grid, plan
from Models_analysis.model import LoadedModel, grid_point, score
from Models_analysis.registry import ModelRegistry
from Models_analysis.scorer import Scorer
from Models_analysis.settings import Settings
from pipeline import contract
from tests.unit.fakes import RecordingConsumer, RecordingProducer

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SLOPE = 0.01  # units per second: the wave's steepest slope is AMPLITUDE * 2π / PERIOD_S
AMPLITUDE = 50.0
PERIOD_S = 3600.0


class WaveModel:
    """yhat = 100 + 50 sin(2πt / 1 h), interval ±5: deterministic, like a calibrated model; records rows asked."""

    def __init__(self, level: float = 100.0) -> None:
        self.level = level
        self.rows_seen: list[int] = []
        self._lock = threading.Lock()

    @staticmethod
    def at(moment: datetime, level: float = 100.0) -> float:
        return level + AMPLITUDE * math.sin(2 * math.pi * moment.timestamp() / PERIOD_S)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        with self._lock:
            self.rows_seen.append(len(frame))
        seconds = ((pd.to_datetime(frame["ds"]) - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy()
        yhat = self.level + AMPLITUDE * pd.Series(seconds * 2 * math.pi / PERIOD_S).map(math.sin).to_numpy()
        return pd.DataFrame({"ds": frame["ds"], "yhat": yhat, "yhat_lower": yhat - 5, "yhat_upper": yhat + 5})


def loaded(model: Any, name: str = "wave") -> LoadedModel:
    return LoadedModel(
        model, contract.ModelIdentity(name=name, hash=f"{name}-{id(model):x}"[:16]), Path(f"{name}.joblib")
    )


class Registry:
    """Stands in for ModelRegistry: one model for every sensor, replaceable."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def for_sensor(self, sensor: str) -> LoadedModel:
        return self.model

    def refresh(self, force: bool = False) -> None:
        pass

    def in_use(self) -> list[LoadedModel]:
        return [self.model]


@contextmanager
def scorer(model: LoadedModel, **values: Any) -> Iterator[tuple[Scorer, Registry]]:
    registry = Registry(model)
    with mock.patch.object(scorer_module, "Consumer", RecordingConsumer):
        built = Scorer(
            Settings(**values),
            cast(ModelRegistry, registry),
            cast(Producer, RecordingProducer()),
            threading.Event(),
        )
    try:
        yield built, registry
    finally:
        built.budget.close()
        built.grids.close()


def readings_at(times: list[datetime], v: float = 100.0) -> list[contract.Reading]:
    return [contract.Reading(id=f"r-{n}", sensor=f"s-{n % 3}", ts=t, v=v) for n, t in enumerate(times)]


def wait_refreshed(built: Scorer, model_hash: str, before: Any) -> None:
    deadline = time.monotonic() + 10
    while built.grids.get(model_hash) is before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert built.grids.get(model_hash) is not before, "the background refresh made no new grid"


# --- the grid and its lookup ----------------------------------------------------------------------


@hypothesis_settings(max_examples=200)
@given(
    step=st.sampled_from([1, 10, 250, 1000, 5000, 60_000]),
    ahead=st.integers(1, 400),
    anchor_ms=st.integers(0, 10**9),
    where=st.floats(0, 1),
    jitter=st.floats(-0.5, 0.5),
)
def test_any_time_inside_the_grid_gets_the_direct_predict_at_its_grid_time(
    step: int, ahead: int, anchor_ms: int, where: float, jitter: float
) -> None:
    model = loaded(WaveModel())
    anchor = START + timedelta(milliseconds=anchor_ms)
    grid = make_grid(model, anchor, step, ahead)
    # Any time from the grid's first to its last time, up to half a step either side.
    offset = where * (grid.end_ms - grid.start_ms) + jitter * step * 0.999
    moment = datetime.fromtimestamp((grid.start_ms + offset) / 1000, UTC)
    if grid.index(moment) is None:
        assert offset < 0 or offset > grid.end_ms - grid.start_ms, "only half a step beyond an end is outside"
        return
    row = grid.lookup(moment)
    assert row is not None
    # The same row a direct predict gives at the grid time the service forecasts the reading at ...
    point = grid_point(moment, step)
    direct = score(model, readings_at([point]))[0]
    assert isinstance(direct, contract.Prediction)
    assert row == pytest.approx((direct.yhat, direct.yhat_lower, direct.yhat_upper), abs=1e-9)
    # ... and within the model's change over half a step of a predict at the exact time.
    exact = WaveModel.at(moment)
    slope = AMPLITUDE * 2 * math.pi / PERIOD_S
    assert abs(row[0] - exact) <= slope * step / 2000 + 1e-6


@hypothesis_settings(max_examples=200)
@given(
    step=st.sampled_from([1, 1000, 60_000]),
    ahead=st.integers(1, 300),
    beyond=st.integers(1, 10**6),
    before=st.booleans(),
)
def test_a_time_outside_the_grid_is_not_looked_up(step: int, ahead: int, beyond: int, before: bool) -> None:
    grid = make_grid(loaded(WaveModel()), START, step, ahead)
    ms = grid.start_ms - step * beyond if before else grid.end_ms + step * beyond
    assert grid.lookup(datetime.fromtimestamp(ms / 1000, UTC)) is None


def test_a_grid_reaches_ahead_and_a_tenth_behind_its_anchor() -> None:
    start_ms, times = grid_times(START, 1000, 600)
    assert len(times) == 600 + math.ceil(600 * BEHIND_SHARE) + 1
    assert times[0] == START - timedelta(seconds=60) and times[-1] == START + timedelta(seconds=600)
    assert start_ms == round(times[0].timestamp() * 1000)


# --- when a grid is made ---------------------------------------------------------------------------


def test_plan_makes_a_grid_when_there_is_none_or_it_ran_out_and_refreshes_past_half() -> None:
    model = loaded(WaveModel())
    horizon = timedelta(seconds=600)
    now = START
    assert plan(None, [now], now, horizon).build_at == now
    grid = make_grid(model, now, 1000, 600)
    assert plan(grid, [now + timedelta(seconds=100)], now, horizon) == plan(grid, [], now, horizon)
    assert plan(grid, [now + timedelta(seconds=301)], now, horizon).refresh_at == now + timedelta(seconds=301)
    later = now + timedelta(seconds=601)
    assert plan(grid, [later], later, horizon).build_at == later, "the grid ran out: a new one at once"
    assert plan(grid, [later], now - timedelta(seconds=10), horizon) == Plan(None, None), "far future: no new grid"


def test_scoring_is_a_lookup_once_the_grid_is_made() -> None:
    wave = WaveModel()
    model = loaded(wave)
    with scorer(model, MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=600) as (built, _):
        now = datetime.now(UTC)
        first = built.score(readings_at([now]))
        assert wave.rows_seen == [661], "the first reading makes the grid: one predict of 60 behind + 601"
        later = built.score(readings_at([now + timedelta(seconds=s) for s in (-30, 1, 2, 120, 250)]))
        assert wave.rows_seen == [661], "inside the grid: no predict"
    for result in [*first, *later]:
        assert isinstance(result, contract.Prediction)
        assert result.yhat == pytest.approx(WaveModel.at(grid_point(result.ds, 1000)))


def test_the_grid_is_refreshed_in_the_background_before_it_runs_out() -> None:
    wave = WaveModel()
    model = loaded(wave)
    with scorer(model, MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=100) as (built, _):
        now = datetime.now(UTC)
        built.score(readings_at([now]))
        old = built.grids.get(model.identity.hash)
        assert old is not None
        results = built.score(readings_at([now + timedelta(seconds=60)]))  # past half of 100 s
        assert isinstance(results[0], contract.Prediction), "scored from the old grid meanwhile"
        wait_refreshed(built, model.identity.hash, old)
        new = built.grids.get(model.identity.hash)
        assert new is not None and new.end_ms == old.end_ms + 60_000
        assert wave.rows_seen == [111, 111], "one more predict, in the background"


def test_outside_the_grid_a_reading_is_predicted_directly() -> None:
    wave = WaveModel()
    model = loaded(wave)
    with scorer(model, MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=100) as (built, _):
        now = datetime.now(UTC)
        built.score(readings_at([now]))
        grid = built.grids.get(model.identity.hash)
        old = now - timedelta(hours=3)  # late, or history replayed
        far = now + timedelta(hours=3)  # far ahead of the wall clock: must not move the grid
        results = built.score(readings_at([old, far, now]))
        assert wave.rows_seen == [111, 2], "the two outside the grid in one direct predict"
        assert built.grids.get(model.identity.hash) is grid
    for result in results:
        assert isinstance(result, contract.Prediction)
        assert result.yhat == pytest.approx(WaveModel.at(grid_point(result.ds, 1000)))


def test_a_stream_past_the_grid_makes_a_new_one_at_once() -> None:
    wave = WaveModel()
    with scorer(loaded(wave), MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=100) as (built, _):
        start = datetime.now(UTC) - timedelta(hours=2)  # a replay of two hours ago, then a pause
        built.score(readings_at([start]))
        built.score(readings_at([start + timedelta(seconds=500)]))
    assert wave.rows_seen == [111, 111]


def test_a_swapped_model_gets_its_own_grid_and_the_old_one_is_dropped() -> None:
    first, second = loaded(WaveModel(100), "first"), loaded(WaveModel(200), "second")
    with scorer(first, MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=100) as (built, registry):
        now = datetime.now(UTC)
        assert built.score(readings_at([now]))[0].model == first.identity
        registry.model = second
        result = built.score(readings_at([now]))[0]
        assert isinstance(result, contract.Prediction) and result.model == second.identity
        assert result.yhat == pytest.approx(WaveModel.at(grid_point(now, 1000), 200))
        assert built.grids.get(first.identity.hash) is None and len(built.grids) == 1


@pytest.mark.parametrize(("grid_ms", "ahead"), [(0, 600), (1000, 0)])
def test_without_a_grid_every_batch_predicts(grid_ms: int, ahead: int) -> None:
    wave = WaveModel()
    with scorer(loaded(wave), MODEL_TIME_GRID_MS=grid_ms, MODEL_FORECAST_AHEAD=ahead, MODEL_FORECAST_CACHE=0) as (
        built,
        _,
    ):
        now = datetime.now(UTC)
        built.score(readings_at([now]))
        built.score(readings_at([now]))
        assert len(built.grids) == 0
    assert wave.rows_seen == [1, 1]


def test_a_model_that_fails_on_the_grid_still_scores_directly() -> None:
    class NoFuture(WaveModel):
        def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
            if len(frame) > 1:
                raise ValueError("one row at a time")
            return super().predict(frame)

    model = NoFuture()
    with scorer(loaded(model), MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=100) as (built, _):
        results = built.score(readings_at([datetime.now(UTC)]))
        assert model.rows_seen == [1], "the grid's predict failed (not recorded), then one direct predict"
        later = built.score(readings_at([datetime.now(UTC) + timedelta(seconds=1)]))
    assert isinstance(results[0], contract.Prediction) and isinstance(later[0], contract.Prediction)
    assert model.rows_seen == [1, 1], "no second try at a grid within RETRY_AFTER_S"


def test_grids_are_made_in_a_thread_of_lower_priority() -> None:
    grids = Grids(1000, 10)
    seen: list[int] = []

    def make(model: LoadedModel, anchor: datetime, step: int, ahead: int) -> Any:
        import os

        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return make_grid(model, anchor, step, ahead)

    grids.make = make
    model = loaded(WaveModel())
    grids.build(model, START)
    future = grids.refresh_later(model, START + timedelta(seconds=6))
    assert future is not None
    future.result(10)
    grids.close()
    assert seen[1] > seen[0], f"refresh nice {seen[1]} should be above the scoring thread's {seen[0]}"


def test_one_models_predict_never_runs_in_two_threads_at_once() -> None:
    class OneAtATime(WaveModel):
        def __init__(self) -> None:
            super().__init__()
            self.inside = 0
            self.most = 0
            self.slow = False

        def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
            with self._lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            try:
                if self.slow:
                    time.sleep(0.3)
                return super().predict(frame)
            finally:
                with self._lock:
                    self.inside -= 1

    wave = OneAtATime()
    model = loaded(wave)
    with scorer(model, MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=100) as (built, _):
        now = datetime.now(UTC)
        built.score(readings_at([now]))
        old = built.grids.get(model.identity.hash)
        wave.slow = True
        built.score(readings_at([now + timedelta(seconds=60)]))  # starts a refresh in the background ...
        time.sleep(0.05)
        results = built.score(readings_at([now - timedelta(hours=1)]))  # ... while this one predicts directly
        wait_refreshed(built, model.identity.hash, old)
    assert isinstance(results[0], contract.Prediction)
    assert wave.most == 1, "the refresh and the direct predict overlapped"
