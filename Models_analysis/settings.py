"""The model service's settings (environment variables of the same names)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.settings import CommonSettings, KafkaSettings, MongoSettings, hostname


class Settings(CommonSettings, KafkaSettings):
    """What the model service reads from its environment."""

    #: The model file (joblib), or a folder of <sensor>.joblib plus default.joblib.
    #: A changed file is picked up without a restart.
    MODEL_PATH: Path = Path("models/default.joblib")
    #: How often the model files are checked for changes (between batches).
    MODEL_RELOAD_CHECK_S: float = Field(2.0, ge=0.1, le=3600)
    #: Consumer group: replicas in one group split the topic's partitions (the seed's name).
    KAFKA_GROUP_ID: str = Field("analytics-group", min_length=1)
    #: Client id of this replica in Kafka's logs and metrics.
    KAFKA_CLIENT_ID: str = Field(default_factory=lambda: f"model-{hostname()}", min_length=1)
    #: Most readings scored by one predict call.
    MODEL_BATCH_MAX: int = Field(1000, ge=1, le=100_000)
    #: Longest a reading waits for its batch to fill (the latency budget).
    MODEL_BATCH_WAIT_MS: int = Field(50, ge=0, le=60_000)
    #: Readings are forecast at the nearest multiple of this many milliseconds
    #: (0: at their exact time), so readings of many sensors in the same second
    #: share one predict row. See README "Models".
    MODEL_TIME_GRID_MS: int = Field(1000, ge=0, le=3_600_000)
    #: Forecasts kept between batches, by model and grid time (0: none).
    MODEL_FORECAST_CACHE: int = Field(10_000, ge=0, le=10_000_000)
    #: Grid times each model forecasts ahead of its newest reading, made before the readings
    #: arrive and refreshed in the background when half are used; a reading is then scored by
    #: a lookup (0: no grid, every batch calls predict). See README "Models".
    MODEL_FORECAST_AHEAD: int = Field(600, ge=0, le=100_000)
    #: A folder of <sensor>.joblib models written by the trainer (python -m Models_analysis.trainer);
    #: such a model serves its sensor before MODEL_PATH's (none: only MODEL_PATH).
    MODEL_TRAINED_PATH: Path | None = None
    #: Longest one predict call may take; past it the batch becomes prediction errors and
    #: the service is not ready until the call returns.
    MODEL_PREDICT_TIMEOUT_S: float = Field(10.0, gt=0, le=3600)
    #: How fast each sensor's interval adapts so that its share of anomalies stays at the model's
    #: nominal level (adaptive conformal inference, Models_analysis.adaptive; 0: the model's interval as is).
    MODEL_ADAPTIVE_GAMMA: float = Field(0.005, ge=0, lt=1)


class TrainerSettings(CommonSettings, MongoSettings):
    """What the trainer (python -m Models_analysis.trainer) reads from its environment."""

    #: The model service's MODEL_PATH: the default model and the users' own per-sensor models,
    #: the incumbents a challenger is compared with. The trainer never writes there.
    MODEL_PATH: Path = Path("models/default.joblib")
    #: Where the trainer writes <sensor>.joblib; the model service's MODEL_TRAINED_PATH. Required.
    MODEL_TRAINED_PATH: Path | None = None
    #: How often each sensor gets a challenger (R).
    TRAINER_EVERY_S: float = Field(86_400.0, ge=1, le=365 * 86_400)
    #: A sensor with too little history for a challenger is looked at again after this long (not a whole
    #: TRAINER_EVERY_S), so a new sensor gets its first trained model soon after it has enough.
    TRAINER_RETRY_S: float = Field(600.0, ge=1, le=365 * 86_400)
    #: The trailing window a challenger is fitted on, up to the sensor's latest reading, holdout included.
    TRAINER_WINDOW_S: float = Field(28 * 86_400.0, ge=60, le=3 * 365 * 86_400)
    #: The most recent stretch of the window, held out: both models are scored on it.
    TRAINER_HOLDOUT_S: float = Field(86_400.0, ge=1, le=365 * 86_400)
    #: Readings a sensor needs before the holdout to get a challenger ("enough history").
    TRAINER_MIN_READINGS: int = Field(500, ge=2, le=10_000_000)
    #: Most readings one fit takes (evenly thinned past it): bounds the trainer's memory.
    TRAINER_MAX_READINGS: int = Field(20_000, ge=10, le=10_000_000)
    #: The model kind fitted, as train --kind: prophet, mstl or trend.
    TRAINER_KIND: Literal["prophet", "mstl", "trend"] = "prophet"
    #: The interval a challenger is fitted and calibrated for (train --interval-width).
    TRAINER_INTERVAL_WIDTH: float = Field(0.99, gt=0, lt=1)
    #: A challenger is promoted only if its holdout MAE is at least this share below the incumbent's.
    TRAINER_MIN_GAIN: float = Field(0.05, ge=0, lt=1)
    #: Opt in to replacing a sensor's own model (MODEL_PATH/<sensor>.joblib) too; by default those are kept.
    TRAINER_REPLACE_USER_MODELS: bool = False
    #: The trainer's CPU priority is lowered by this much (nice), so scoring keeps the CPU.
    TRAINER_NICE: int = Field(10, ge=0, le=19)
