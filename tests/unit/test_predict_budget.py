"""The predict time budget: a late call fails its batch, marks the service not ready, and recovers when it returns."""

from __future__ import annotations

import threading
import time

import pytest

from Models_analysis.scorer import PredictBudget
from pipeline.health import Dependency, readiness


def test_a_call_past_its_budget_is_reported_and_the_service_recovers_when_it_returns() -> None:
    health = Dependency("model")
    budget = PredictBudget(0.1, health)
    release = threading.Event()
    try:
        assert budget.call(lambda x: x + 1, 1) == 2
        with pytest.raises(TimeoutError, match="did not return within 0.1s"):
            budget.call(release.wait, 5)
        code, body = readiness({"model": health})
        assert code == 503 and "MODEL_PREDICT_TIMEOUT_S" in body["why"]["model"]  # type: ignore[index]
        busy = budget.busy()
        assert busy is not None and "has not returned" in busy
        release.set()
        deadline = time.monotonic() + 5
        while not health() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health(), "ready again once the late call returned, with no batch needed"
        assert budget.busy() is None
        assert budget.call(lambda: "ok") == "ok"
    finally:
        release.set()
        budget.close()


def test_an_error_inside_predict_is_the_callers_not_a_timeout() -> None:
    budget = PredictBudget(1.0, Dependency("model"))
    try:
        with pytest.raises(ZeroDivisionError):
            budget.call(lambda: 1 / 0)
    finally:
        budget.close()
