"""The dashboard's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

QUERY_SECONDS = Histogram(
    "pipeline_dashboard_query_seconds", "Time to answer one JSON API request", ["api"], buckets=LATENCY_BUCKETS
)
UNAUTHORIZED = Counter("pipeline_dashboard_unauthorized", "Requests refused for missing or wrong credentials")
