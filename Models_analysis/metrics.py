"""The model service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

SCORED = Counter("pipeline_readings_scored", "Readings scored into a prediction")
PREDICTION_ERRORS = Counter("pipeline_prediction_errors", "Readings the model could not score")
ANOMALIES = Counter("pipeline_anomalies", "Predictions whose observed value is outside the interval")
REJECTED = Counter(
    "pipeline_model_rejections", "Messages on the readings topic that broke the contract, by kind", ["reason"]
)
BATCH_SIZE = Histogram("pipeline_score_batch_size", "Readings per predict call", buckets=BATCH_BUCKETS)
PREDICT_SECONDS = Histogram("pipeline_predict_seconds", "Time of one batch's predict", buckets=LATENCY_BUCKETS)
FORECASTS = Counter("pipeline_forecasts", "Distinct forecast times used, by where the forecast came from", ["source"])
GRIDS_MADE = Counter(
    "pipeline_forecast_grids",
    "Grids of forecasts made ahead, by when: now (in a batch: none yet, or run out) or ahead (in the background)",
    ["when"],
)
GRIDS = Gauge("pipeline_forecast_grids_kept", "Models with a grid of forecasts made ahead")
STORED_TO_SCORED = Histogram(
    "pipeline_stored_to_scored_seconds", "Reading accepted by the bridge to scored", buckets=LATENCY_BUCKETS
)
#: One series per model file in use: ``scope`` is ``default`` (every sensor without a file of its own) or
#: the sensor id of a ``<sensor>.joblib`` in the MODEL_PATH folder. Models_analysis.registry removes a
#: scope's series when its model is replaced or its file removed, so there are as many as model files.
MODEL = Gauge(
    "pipeline_model_info", "The model in use (value 1), by scope (default or a sensor)", ["scope", "name", "hash"]
)
