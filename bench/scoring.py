"""Benchmark 1, scoring: readings per second through the model service (Kafka in, predictions out).

Three figures, measured in one invocation on the same model (``models/default.joblib``,
Prophet with its uncertainty intervals):

- **seed**: the seed's way, one ``model.predict`` per reading (a one-row frame).
  Measured in this process with no Kafka at all, so it is the seed's best case.
- **raw ceiling**: one ``model.predict`` on a frame of MODEL_BATCH_MAX distinct
  times, no Kafka: what the service could reach if Kafka, parsing and
  producing cost nothing.
- **service**: the model service as a process. The readings topic is filled
  first (readings of 100 sensors, each with its own time, a millisecond apart:
  1,000 readings per second of event time), then the service starts; the rate
  is readings scored from the start of its first batch to the last prediction
  produced (each prediction carries its batch's ``scored_at``, and Kafka stamps
  when it was produced). With its defaults (readings forecast at the nearest
  second, MODEL_TIME_GRID_MS=1000), and once with every reading forecast at its
  exact time (MODEL_TIME_GRID_MS=0), the worst case.

**Per-sensor models, end to end** (issue #13, :mod:`bench.scoring_per_sensor`):
100 sensors, each with its own Prophet model, at 1,000 readings/s through the
bridge and one model service, beside the same run with one model for every sensor.

Run alone: ``python -m bench.scoring [--quick] [--only rates|per-sensor]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pandas as pd
from confluent_kafka import Producer

from bench.common import Bench, run_standalone
from bench.probes import metric, scrape, topic_reader
from bench.report import Table, write_result
from bench.scoring_per_sensor import run_per_sensor
from localstack.services import ROOT
from Models_analysis.model import load_model
from pipeline import contract

MODEL_PATH = ROOT / "models" / "default.joblib"
#: The model service's default micro-batch (MODEL_BATCH_MAX).
BATCH = 1000
SENSORS = 100
SEED_TARGET = 200.0
CEILING_TARGET = 0.8


def times(count: int, start: datetime) -> list[datetime]:
    """``count`` distinct times a millisecond apart (UTC), as readings would carry."""
    return [start + timedelta(milliseconds=i) for i in range(count)]


def frame_of(moments: list[datetime]) -> pd.DataFrame:
    """The frame Prophet's predict takes (naive UTC, as the service passes it)."""
    return pd.DataFrame({"ds": pd.to_datetime([m.replace(tzinfo=None) for m in moments])})


def seed_rate(model: Any, readings: int) -> dict[str, float]:
    """The seed's way: one predict per reading. Returns readings/s and seconds per reading."""
    start = datetime.now(UTC) - timedelta(hours=1)
    frames = [frame_of([t]) for t in times(readings, start)]
    model.predict(frames[0])  # warm up
    began = time.perf_counter()
    for frame in frames:
        model.predict(frame)
    took = time.perf_counter() - began
    return {"readings_per_s": readings / took, "seconds_per_reading": took / readings, "readings": readings}


def raw_ceiling(model: Any, batch: int, repeats: int) -> dict[str, Any]:
    """One predict on ``batch`` distinct times, ``repeats`` times; the median is the ceiling."""
    frames = [frame_of(times(batch, datetime.now(UTC) - timedelta(hours=2 + i))) for i in range(repeats + 1)]
    model.predict(frames[0])  # warm up
    durations = []
    for frame in frames[1:]:
        began = time.perf_counter()
        model.predict(frame)
        durations.append(time.perf_counter() - began)
    median = statistics.median(durations)
    return {
        "readings_per_s": batch / median,
        "seconds_per_batch_median": median,
        "seconds_per_batch_all": durations,
        "batch": batch,
    }


def fill_topic(bootstrap: str, topic: str, count: int) -> None:
    """Produce ``count`` forwarded readings (as the bridge writes them) from 100 sensors, distinct times."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    run = uuid.uuid4().hex[:6]
    start = datetime.now(UTC) - timedelta(hours=3)
    received = datetime.now(UTC)
    for i, moment in enumerate(times(count, start)):
        sensor = f"score{run}-s{i % SENSORS}"
        message = {
            "id": f"{sensor}-{i}",
            "sensor": sensor,
            "ts": contract.iso(moment),
            "v": 100.0 + i % 50,
            "received_at": contract.iso(received),
        }
        while True:
            try:
                producer.produce(topic, key=sensor.encode(), value=orjson.dumps(message))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not fill {topic}")


def consume_results(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[tuple[float, float]]:
    """(scored_at, produced at) in epoch seconds of ``count`` predictions on ``topic``."""
    consumer = topic_reader(bootstrap)
    consumer.subscribe([topic])
    seen: dict[str, tuple[float, float]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is not None:
                    continue
                result = orjson.loads(message.value() or b"{}")
                scored = datetime.fromisoformat(result["scored_at"]).timestamp()
                seen[result["id"]] = (scored, message.timestamp()[1] / 1000)
    finally:
        consumer.close()
    return list(seen.values())


def service_rate(bench: Bench, count: int, replicas: int, grid_ms: int = 1000) -> dict[str, Any]:
    """Fill a fresh readings topic with ``count`` readings, start the service, time the scoring."""
    namespace = bench.namespace(f"score{replicas}r{grid_ms}g")
    bootstrap = bench.env["KAFKA_BOOTSTRAP_SERVERS"]
    with namespace.running():
        from pipeline.kafka import ensure_pipeline_topics
        from pipeline.settings import KafkaSettings

        topics = namespace.topics
        ensure_pipeline_topics(KafkaSettings.model_validate({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics}))
        fill_topic(bootstrap, topics["KAFKA_TOPIC_READINGS"], count)
        models = [namespace.start_model(replica=r + 1, MODEL_TIME_GRID_MS=str(grid_ms)) for r in range(replicas)]
        for model in models:
            namespace.wait_ready(model)
        results = consume_results(bootstrap, topics["KAFKA_TOPIC_RESULTS"], count, timeout_s=max(300.0, count / 20))
        # The services' own clock on predict alone: how much of the wall time is Prophet.
        predict_s = sum(metric(scrape(model), "pipeline_predict_seconds_sum") for model in models)
    if len(results) < count:
        raise RuntimeError(f"only {len(results)} of {count} predictions arrived; logs in {bench.log_dir}")
    first_batch = min(scored for scored, _ in results)
    last_produced = max(produced for _, produced in results)
    batches = len({scored for scored, _ in results})
    return {
        "readings_per_s": count / (last_produced - first_batch),
        "readings": count,
        "seconds": last_produced - first_batch,
        "batches": batches,
        "mean_batch": count / batches,
        "predict_seconds": predict_s,
        "predict_share": predict_s / replicas / (last_produced - first_batch),
        "replicas": replicas,
        "grid_ms": grid_ms,
    }


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Every scoring benchmark (``make bench``): the rates, then the per-sensor models end to end."""
    only = getattr(args, "only", None)
    if only == "per-sensor":
        return run_per_sensor(bench, MODEL_PATH)
    figures = run_rates(bench)
    if only == "rates":
        return figures
    figures["per_sensor"] = run_per_sensor(bench, MODEL_PATH)
    return figures


def run_rates(bench: Bench) -> dict[str, Any]:
    """Measure the three rates, print and write the table; returns the figures."""
    readings = 5_000 if bench.quick else 20_000
    seed_readings = 10 if bench.quick else 30
    repeats = 3 if bench.quick else 5
    model = load_model(MODEL_PATH).model
    print(f"\n[scoring] seed's way: {seed_readings} single-row predicts ...", flush=True)
    seed = seed_rate(model, seed_readings)
    print(f"[scoring] raw ceiling: {repeats} predicts of {BATCH} rows ...", flush=True)
    ceiling = raw_ceiling(model, BATCH, repeats)
    del model
    service: list[dict[str, Any]] = []
    for replicas, grid_ms in ((1, 1000), (2, 1000), (1, 0)):
        print(
            f"[scoring] model service, {replicas} replica(s), MODEL_TIME_GRID_MS={grid_ms}: "
            f"{readings:,} readings through Kafka ...",
            flush=True,
        )
        service.append(service_rate(bench, readings, replicas, grid_ms))
    # The raw ceiling and the seed are measured again after the service runs: the
    # machine is shared, so the ratio uses the mean of before and after.
    seed_after = seed_rate(load_model(MODEL_PATH).model, seed_readings)
    ceiling_after = raw_ceiling(load_model(MODEL_PATH).model, BATCH, repeats)
    seed_mean = (seed["readings_per_s"] + seed_after["readings_per_s"]) / 2
    ceiling_mean = (ceiling["readings_per_s"] + ceiling_after["readings_per_s"]) / 2
    one = service[0]["readings_per_s"]
    exact = service[2]["readings_per_s"]
    figures = {
        "seed": [seed, seed_after],
        "raw_ceiling": [ceiling, ceiling_after],
        "service": service,
        "seed_readings_per_s": seed_mean,
        "raw_ceiling_readings_per_s": ceiling_mean,
        "service_readings_per_s": one,
        "service_vs_seed": one / seed_mean,
        "service_vs_raw_ceiling": one / ceiling_mean,
        "exact_times_vs_seed": exact / seed_mean,
        "exact_times_vs_raw_ceiling": exact / ceiling_mean,
        "targets": {
            "service_vs_seed": {"target": SEED_TARGET, "met": one / seed_mean >= SEED_TARGET},
            "service_vs_raw_ceiling": {"target": CEILING_TARGET, "met": one / ceiling_mean >= CEILING_TARGET},
        },
        "quick": bench.quick,
    }
    rows: list[list[Any]] = [
        ["seed: one predict per reading (no Kafka)", seed_mean, one / seed_mean, "–", "100 %"],
        [
            f"raw ceiling: one predict per {BATCH} readings (no Kafka)",
            ceiling_mean,
            ceiling_mean / seed_mean,
            1.0,
            "100 %",
        ],
    ]
    for result in service:
        rate = result["readings_per_s"]
        grid = "1 s grid (default)" if result["grid_ms"] == 1000 else "exact times (MODEL_TIME_GRID_MS=0)"
        rows.append(
            [
                f"model service, {result['replicas']} replica(s), Kafka in -> out, {grid}",
                rate,
                rate / seed_mean,
                rate / ceiling_mean,
                f"{100 * result['predict_share']:.0f} %",
            ]
        )
    rows[0][2] = 1.0
    table = Table(
        "Scoring: readings/s, Prophet default model with intervals (MODEL_BATCH_MAX=1000)",
        ["path", "readings/s", "x seed", "x raw ceiling", "time in predict"],
        rows,
        [
            f"targets (1 replica): >= {SEED_TARGET:.0f}x seed: {'met' if one / seed_mean >= SEED_TARGET else 'NOT met'}"
            f" ({one / seed_mean:.0f}x); >= {CEILING_TARGET}x raw ceiling: "
            f"{'met' if one / ceiling_mean >= CEILING_TARGET else 'NOT met'} ({one / ceiling_mean:.2f}x)",
            f"worst case, every reading forecast at its own time (1 replica): {exact / seed_mean:.0f}x seed, "
            f"{exact / ceiling_mean:.2f}x raw ceiling",
            f"service: {readings:,} readings of 100 sensors, each with its own time a millisecond apart (1,000 "
            "readings per second of event time); with the 1 s grid each second's readings share one predict row "
            "(README, Models); seed and ceiling: mean of a measurement before and after the service runs "
            "(the machine is shared)",
            "time in predict: the service's own pipeline_predict_seconds over its wall time (per replica); the rest "
            "is parsing, building and producing results, committing offsets, and waiting for the CPU",
        ],
    )
    write_result(bench.results_dir, "scoring", figures, [table])
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--only rates`` or ``--only per-sensor`` runs that part alone."""
    parser.add_argument("--only", choices=["rates", "per-sensor"], help="run only this part")


def main() -> int:
    """``python -m bench.scoring``."""
    return run_standalone("bench.scoring", __doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
