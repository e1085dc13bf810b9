"""Small non-Prophet models for tests (importable, so joblib can pickle them)."""

from __future__ import annotations

import time

import pandas as pd


class ConstantModel:
    """Forecasts a constant level with a fixed interval; records the batch sizes it saw."""

    def __init__(self, level: float, width: float) -> None:
        self.level = level
        self.width = width
        self.rows_seen: list[int] = []

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.rows_seen.append(len(frame))
        n = len(frame)
        return pd.DataFrame(
            {
                "ds": frame["ds"],
                "yhat": [self.level] * n,
                "yhat_lower": [self.level - self.width] * n,
                "yhat_upper": [self.level + self.width] * n,
            }
        )


class BrokenOnce(ConstantModel):
    """Raises for one particular time, like a model refusing a timestamp."""

    def __init__(self, bad: pd.Timestamp) -> None:
        super().__init__(level=0.0, width=100.0)
        self.bad = bad

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        if (frame["ds"] == self.bad).any():
            raise ValueError(f"cannot forecast {self.bad}")
        return super().predict(frame)


class SlowModel(ConstantModel):
    """Takes ``seconds`` over each of its first ``times`` predict calls (a model that hangs), then is quick."""

    def __init__(self, seconds: float, times: int = 1) -> None:
        super().__init__(level=0.0, width=100.0)
        self.seconds = seconds
        self.times = times

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.times > 0:
            self.times -= 1
            time.sleep(self.seconds)
        return super().predict(frame)
