"""Adaptive intervals (Models_analysis.adaptive): the step, its bounds, and the share missed over a long run."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from Models_analysis import adaptive
from Models_analysis.adaptive import Bounds, Level, Levels, nominal_level
from Models_analysis.calibration import Calibrated
from Models_analysis.settings import Settings


def test_a_step_moves_alpha_by_gamma_times_its_distance_from_the_target() -> None:
    level = Level(0.05, 0.005)
    level.step(missed=True)
    assert level.alpha == pytest.approx(0.04525)  # 0.05 + 0.005 * (0.05 - 1)
    level.step(missed=False)
    assert level.alpha == pytest.approx(0.04550)  # + 0.005 * 0.05


def test_alpha_stays_within_a_tenth_and_four_times_the_target() -> None:
    level = Level(0.05, 0.1)
    for _ in range(100):
        level.step(missed=True)
    assert level.alpha == pytest.approx(0.005)
    for _ in range(10_000):
        level.step(missed=False)
    assert level.alpha == pytest.approx(0.2)
    wide = Level(0.2, 0.1)
    for _ in range(10_000):
        wide.step(missed=False)
    assert wide.alpha == pytest.approx(0.5), "never past half the readings missed"


def test_the_interval_at_the_target_is_the_models_own_and_a_lower_alpha_widens_each_side() -> None:
    level = Level(0.05, 0.005)
    model = Bounds(10.0, 8.0, 13.0)
    assert level.interval(model) is model
    level.alpha = 0.01
    wider = level.interval(model)
    ratio = 2.5758293035489 / 1.959963984540054  # z(0.995) / z(0.975)
    assert wider.yhat == 10.0
    assert wider.lower == pytest.approx(10.0 - 2.0 * ratio)
    assert wider.upper == pytest.approx(10.0 + 3.0 * ratio), "an asymmetric interval keeps its shape"


@given(
    yhat=st.floats(-1e6, 1e6),
    below=st.floats(0, 1e6),
    above=st.floats(0, 1e6),
    alpha=st.floats(0.001, 0.5),
    target=st.floats(0.001, 0.5),
)
def test_a_lower_alpha_never_narrows_either_side(
    yhat: float, below: float, above: float, alpha: float, target: float
) -> None:
    model = Bounds(yhat, yhat - below, yhat + above)
    ratio = adaptive.quantile_ratio(alpha, target)
    scaled = model.scaled(ratio)
    assert ratio >= 1 if alpha <= target else ratio <= 1
    if alpha <= target:
        assert scaled.lower <= model.lower + 1e-9 * (1 + abs(yhat)) and scaled.upper >= model.upper - 1e-9 * (
            1 + abs(yhat)
        )
    else:
        assert scaled.lower >= model.lower - 1e-9 * (1 + abs(yhat)) and scaled.upper <= model.upper + 1e-9 * (
            1 + abs(yhat)
        )


@settings(max_examples=12, deadline=None)
@given(scale=st.floats(0.8, 1.3), seed=st.integers(0, 2**32 - 1))
def test_over_a_long_run_the_share_missed_is_the_target_whatever_the_models_error(scale: float, seed: int) -> None:
    """A model claiming N(0, 1) errors at 95 % while its errors are N(0, scale): 5 % missed all the same.

    Gibbs and Candès bound the gap by (1 - target + gamma) / (gamma * T) = 0.0096 at T = 20,000 when
    alpha is never held at a bound; the margin above it is for the rare steps held there.
    """
    rng = random.Random(seed)
    half = 1.959963984540054
    readings = [(0.0, -half, half, rng.gauss(0.0, scale)) for _ in range(20_000)]
    served = adaptive.replay(readings, 0.95, 0.005)
    missed = sum(not b.holds(v) for b, (*_, v) in zip(served, readings, strict=True)) / len(readings)
    assert abs(missed - 0.05) <= 0.012, f"missed {missed:.4f} with errors {scale:.2f} times what the model claims"
    fixed = sum(abs(v) > half for *_, v in readings) / len(readings)
    if abs(scale - 1) > 0.15:
        assert abs(fixed - 0.05) > 0.015, "the model's own interval is off: the adaptation is what brought it to 5 %"


def test_a_forecast_that_is_not_finite_is_passed_on_and_does_not_move_the_level() -> None:
    served = adaptive.replay([(math.nan, 0.0, 1.0, 5.0), (0.0, -1.0, 1.0, 0.0)], 0.95, 0.5)
    assert math.isnan(served[0].yhat)
    assert served[1] == Bounds(0.0, -1.0, 1.0), "still at the target: the first reading moved nothing"


def test_levels_are_per_sensor_carry_over_a_swap_and_restart_when_the_nominal_level_changes() -> None:
    levels = Levels(gamma=0.1)
    model = Bounds(0.0, -1.0, 1.0)
    served, missed = levels.check("a", 0.95, model, 5.0)
    assert served == model and missed
    wider, _ = levels.check("a", 0.95, Bounds(0.0, -1.0, 1.0), 0.0)
    assert wider.upper > 1.0, "sensor a missed once: its next interval is wider"
    assert levels.check("b", 0.95, model, 0.0)[0] == model, "sensor b has its own level"
    assert levels.check("a", 0.99, model, 0.0)[0] == model, "a model of another level starts at its target"


def test_at_most_max_tracked_sensors_are_kept_the_least_recently_scored_dropped() -> None:
    levels = Levels(gamma=0.1, max_tracked=2)
    model = Bounds(0.0, -1.0, 1.0)
    levels.check("a", 0.95, model, 5.0)
    levels.check("b", 0.95, model, 5.0)
    levels.check("a", 0.95, model, 0.0)
    levels.check("c", 0.95, model, 5.0)
    assert len(levels) == 2
    assert levels.check("a", 0.95, model, 0.0)[0] != model, "a was kept"
    assert levels.check("b", 0.95, model, 0.0)[0] == model, "b was dropped and starts again at the target"


def test_gamma_zero_is_off_and_a_bad_gamma_or_target_is_refused() -> None:
    assert not Levels(0.0).enabled and Levels(0.005).enabled
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="gamma"):
            Levels(bad)
    with pytest.raises(ValueError, match="target"):
        Level(1.0, 0.005)


def test_model_adaptive_gamma_defaults_to_gibbs_and_candes_step_and_refuses_a_bad_value() -> None:
    assert Settings().MODEL_ADAPTIVE_GAMMA == 0.005
    assert Settings(MODEL_ADAPTIVE_GAMMA=0).MODEL_ADAPTIVE_GAMMA == 0
    for bad in (-0.01, 1.0):
        with pytest.raises(ValueError, match="MODEL_ADAPTIVE_GAMMA"):
            Settings(MODEL_ADAPTIVE_GAMMA=bad)


class _Own:
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame


class _Prophetish(_Own):
    interval_width = 0.8


def test_the_nominal_level_comes_from_the_calibration_the_metadata_or_the_model_and_never_a_guess() -> None:
    assert nominal_level(Calibrated(_Own(), 1.0, 0.95, 100), {}) == 0.95
    assert nominal_level(_Own(), {"interval_width": 0.99}) == 0.99
    assert nominal_level(_Prophetish(), {}) == 0.8
    assert nominal_level(_Own(), {}) is None, "a model of one's own that says nothing keeps its interval"
    assert nominal_level(_Own(), {"interval_width": True}) is None
    assert nominal_level(_Own(), {"interval_width": 1.5}) is None
    assert nominal_level(_Own(), {"interval_width": "0.9"}) is None


def test_a_replay_adapts_the_served_kinds_in_series_order_and_leaves_the_baselines_alone() -> None:
    rows = []
    for i in range(6):
        for kind in ("prophet", "naive-week"):
            rows.append({"kind": kind, "origin": 0, "i": 5 - i, "ds": i, "y": 9.0, "yhat": 0.0})
    points = pd.DataFrame(rows).assign(yhat_lower=-1.0, yhat_upper=1.0)
    adapted = adaptive.adapt_points(points, ["prophet"], 0.95, 0.01)
    naive = adapted[adapted["kind"] == "naive-week"]
    assert (naive["yhat_upper"] == 1.0).all()
    mine = adapted[adapted["kind"] == "prophet"].sort_values("i")
    uppers = mine["yhat_upper"].tolist()
    assert uppers[0] == 1.0 and uppers == sorted(uppers) and uppers[-1] > uppers[1], "wider with each miss, by i"
    assert adaptive.adapt_points(points, ["prophet"], 0.95, 0.0) is points


class _Levelled(_Own):
    level = 0.5  # a model's own attribute of that name (a forecast level, say) is not its interval's


def test_an_attribute_called_level_on_a_model_of_ones_own_is_not_taken_for_its_nominal_level() -> None:
    assert nominal_level(_Levelled(), {}) is None


@given(
    level=st.floats(1e-12, 1 - 1e-12),
    yhat=st.floats(-1e300, 1e300),
    below=st.floats(0, 1e300),
    above=st.floats(0, 1e300),
    misses=st.lists(st.booleans(), max_size=50),
)
def test_a_served_interval_is_always_finite_whatever_level_the_model_states(
    level: float, yhat: float, below: float, above: float, misses: list[bool]
) -> None:
    state = Level(1 - level, 0.5)
    for missed in misses:
        state.step(missed)
    served = state.interval(Bounds(yhat, yhat - below, yhat + above))
    assert math.isfinite(served.lower) and math.isfinite(served.upper), served


def test_the_readmes_bounds_and_recovery_of_a_95_percent_interval() -> None:
    """README: at most 1.43 times wider and 0.65 times narrower, back to the model's after 180 readings inside."""
    level = Level(0.05, 0.005)
    model = Bounds(0.0, -1.0, 1.0)
    for _ in range(100):
        level.step(missed=True)
    assert level.interval(model).upper == pytest.approx(1.43, abs=0.005)
    hits = 0
    while level.interval(model) != model:
        level.step(missed=False)
        hits += 1
    assert hits == 180
    for _ in range(10_000):
        level.step(missed=False)
    assert level.interval(model).upper == pytest.approx(0.65, abs=0.005)
