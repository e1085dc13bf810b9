"""bench.e2e's CPU-per-reading table: the whole stack is the sum of its parts, and the target line tells the truth."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench.e2e import TARGET_CPU_MS, TARGET_RATE, _cpu_table, stack_cpu_ms
from bench.machine import PARTS

cpu = st.floats(0, 5, allow_nan=False)


def phase(rate: float, per_part: list[float]) -> dict[str, Any]:
    return {"rate": rate, "seconds": 30.0, "cpu_ms_per_reading": dict(zip(PARTS, per_part, strict=True))}


@given(
    warm=st.lists(cpu, min_size=len(PARTS), max_size=len(PARTS)),
    steady=st.lists(cpu, min_size=len(PARTS), max_size=len(PARTS)),
)
def test_the_target_is_judged_on_the_steady_phase_at_the_target_rate_not_the_warm_up(
    warm: list[float], steady: list[float]
) -> None:
    warmup, at_target = phase(TARGET_RATE, warm), phase(TARGET_RATE, steady)
    other = phase(100, [9.0] * len(PARTS))
    table = _cpu_table([other, at_target], warmup, at_target)
    assert stack_cpu_ms(at_target) == sum(steady)
    assert [row[-1] for row in table.rows] == [sum(warm), 9.0 * len(PARTS), sum(steady)]
    assert "warm-up" in table.rows[0][0] and "warm-up" not in table.rows[2][0]
    verdict = table.notes[0]
    assert ("NOT met" not in verdict) == (sum(steady) <= TARGET_CPU_MS), verdict
    assert f"({sum(steady):.3f} ms)" in verdict
