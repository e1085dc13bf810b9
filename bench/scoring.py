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

**Per-sensor models, end to end** (issue #13): 100 sensors, each with its own
Prophet model (fitted as ``train`` fits them, each on the demo data scaled
differently), publish over MQTT at 1,000 readings/s through the bridge and
one model service, and the bridge's publish -> prediction stored latency is
read as ``bench.e2e`` reads it; beside it the same run with one model for
every sensor (today's figure), and once with grids that refresh ten times as
often (MODEL_FORECAST_AHEAD=60). Each reading is scored by a lookup in its
model's grid of forecasts made ahead (Models_analysis.ahead).

Run alone: ``python -m bench.scoring [--quick] [--only rates|per-sensor]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from confluent_kafka import Consumer, Producer

from bench import e2e
from bench.common import Bench, run_standalone
from bench.machine import memory_mb
from bench.namespace import Namespace
from bench.probes import metric, scrape
from bench.report import Table, write_result
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
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
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
        return run_per_sensor(bench)
    figures = run_rates(bench)
    if only == "rates":
        return figures
    figures["per_sensor"] = run_per_sensor(bench)
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


#: Per-sensor models: the rate and its target, as the issue states them.
PER_SENSOR_RATE = 1000
PER_SENSOR_P99_TARGET_S = 1.0
DEMO_CSV = ROOT / "Data_collection" / "demo_data.csv"


def fit_per_sensor_models(folder: Path, count: int) -> dict[str, Any]:
    """``count`` Prophet models, each fitted as ``train`` fits them on the demo data scaled its own way."""
    from Models_analysis import train

    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
    frame = train.frame_from_csv(DEMO_CSV, None, None, "1min", datetime.now(UTC)).tail(3 * 1440)
    frame = frame.reset_index(drop=True)
    began = time.perf_counter()
    hashes = set()
    for i in range(count):
        scaled = frame.assign(y=frame["y"] * (0.9 + 0.2 * i / count))
        model = train.fit("prophet", scaled, 0.99, progress=False)
        saved = train.save(model, scaled, folder / f"m{i}.joblib", f"bench-sensor-{i}", "bench.scoring", 0.99)
        hashes.add(saved["hash"])
        if (i + 1) % 20 == 0:
            print(f"[scoring] {i + 1} of {count} per-sensor models fitted ...", flush=True)
    took = time.perf_counter() - began
    return {"models": count, "distinct_hashes": len(hashes), "fit_seconds_each": took / count, "rows": len(frame)}


class ModelsPipeline(e2e.Pipeline):
    """bench.e2e's pipeline (one bridge, one model service, one real sensor), the model service as given."""

    def __init__(self, bench: Bench, namespace: Namespace, **model: str) -> None:
        self.bench = bench
        self.namespace = namespace
        self.sensors = namespace.sensor_ids(SENSORS)
        self.server = namespace.start_server()
        self.model = namespace.start_model(1, **model)
        self.real_sensor = namespace.start_sensor(f"{namespace.name}-real", SENSOR_INTERVAL_S="0.2")
        for process in (self.server, self.model, self.real_sensor):
            namespace.wait_ready(process, timeout_s=300)
        self.next_reading = 0


def per_sensor_run(bench: Bench, label: str, models: Path | None, duration_s: float, **model: str) -> dict[str, Any]:
    """A warm-up at 100/s, then ``duration_s`` at 1,000/s; ``models``: a folder of ``m<i>.joblib``, one per sensor."""
    namespace = bench.namespace(label)
    overrides = dict(model)
    with namespace.running(), tempfile.TemporaryDirectory(prefix="bench-models-") as folder:
        if models is not None:
            for i, sensor in enumerate(namespace.sensor_ids(SENSORS)):
                shutil.copyfile(models / f"m{i}.joblib", Path(folder) / f"{sensor}.joblib")
            shutil.copyfile(MODEL_PATH, Path(folder) / "default.joblib")
            overrides.setdefault("MODEL_PATH", folder)
        pipeline = ModelsPipeline(bench, namespace, **overrides)
        warm = pipeline.phase(100, 10 if bench.quick else 20)  # every model used once: its grid is made
        before = scrape(pipeline.model)
        figures = pipeline.phase(PER_SENSOR_RATE, duration_s)
        after = scrape(pipeline.model)
        rss, hwm = memory_mb(pipeline.model.process.pid) if pipeline.model.process else (float("nan"),) * 2

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    figures.update(
        {
            "label": label,
            "warm_up": {k: warm[k] for k in ("rate", "sent", "p99_s", "share_within_1s")},
            "model_service_rss_mb": rss,
            "model_service_hwm_mb": hwm,
            "forecasts": {
                source: delta("pipeline_forecasts_total", source=source) for source in ("grid", "cache", "model")
            },
            "grids_made": {when: delta("pipeline_forecast_grids_total", when=when) for when in ("now", "ahead")},
            "grids_kept": metric(after, "pipeline_forecast_grids_kept"),
            "predict_seconds": delta("pipeline_predict_seconds_sum"),
            "settings": model,
        }
    )
    return figures


def run_per_sensor(bench: Bench) -> dict[str, Any]:
    """100 per-sensor Prophet models at 1,000 readings/s, beside one model for all; prints and writes the table."""
    duration = 20.0 if bench.quick else 60.0
    with tempfile.TemporaryDirectory(prefix="bench-fitted-") as fitted:
        print(f"\n[scoring] fitting {SENSORS} per-sensor Prophet models ...", flush=True)
        fitting = fit_per_sensor_models(Path(fitted), SENSORS)
        runs = []
        for label, models, settings in (
            ("single", None, {}),
            ("persensor", Path(fitted), {}),
            ("persensor60", Path(fitted), {"MODEL_FORECAST_AHEAD": "60"}),
        ):
            print(
                f"[scoring] end to end at {PER_SENSOR_RATE}/s for {duration:.0f}s: {label} {settings} ...", flush=True
            )
            runs.append(per_sensor_run(bench, label, models, duration, **settings))
    names = {
        "single": "one model for every sensor (today)",
        "persensor": f"{SENSORS} per-sensor Prophet models (MODEL_FORECAST_AHEAD=600)",
        "persensor60": f"{SENSORS} per-sensor Prophet models, grids refreshed 10x as often (MODEL_FORECAST_AHEAD=60)",
    }
    rows = [
        [
            names[r["label"]],
            r["achieved_rate"],
            r["p50_s"],
            r["p95_s"],
            r["p99_s"],
            f"{100 * r['share_within_1s']:.1f} %",
            r["stages"]["pipeline_stored_to_scored_seconds"]["p99_s"],
            r["cpu_cores"].get("model service", float("nan")),
            r["model_service_rss_mb"],
            f"{r['forecasts']['grid']:.0f} / {r['forecasts']['cache'] + r['forecasts']['model']:.0f}",
            f"{r['grids_made']['now']:.0f} / {r['grids_made']['ahead']:.0f}",
        ]
        for r in runs
    ]
    per_sensor = runs[1]
    met = per_sensor["p99_s"] < PER_SENSOR_P99_TARGET_S
    table = Table(
        f"Per-sensor models: publish -> prediction stored at {PER_SENSOR_RATE:,} readings/s, {SENSORS} sensors",
        [
            "models",
            "readings/s",
            "p50 s",
            "p95 s",
            "p99 s",
            "within 1 s",
            "model p99 s (accepted -> scored)",
            "model service, cores",
            "model service RSS MB",
            "lookups / predicted",
            "grids made now / ahead",
        ],
        rows,
        [
            f"target: {SENSORS} per-sensor Prophet models at {PER_SENSOR_RATE:,}/s, "
            f"p99 < {PER_SENSOR_P99_TARGET_S:g} s: "
            f"{'met' if met else 'NOT met'} ({per_sensor['p99_s']:.2f} s)",
            f"{duration:.0f} s at {PER_SENSOR_RATE:,}/s after 20 s at 100/s (every model's grid made then); one bridge,"
            " one model service, one real sensor, as bench.e2e; quantiles interpolated in the bridge's histogram",
            "models: Prophet as train fits it (calibrated), each on the demo data's last 3 days scaled its own way "
            f"({fitting['distinct_hashes']} distinct files, {fitting['fit_seconds_each']:.1f} s a fit)",
            "lookups / predicted: readings scored from a grid, and distinct times forecast by a direct predict;"
            " grids made now (in a batch: first reading of a model) / ahead (refreshed in the background)",
        ],
    )
    figures = {"fitting": fitting, "runs": runs, "target_p99_s": PER_SENSOR_P99_TARGET_S, "met": met}
    write_result(bench.results_dir, "scoring_per_sensor", figures, [table])
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--only rates`` or ``--only per-sensor`` runs that part alone."""
    parser.add_argument("--only", choices=["rates", "per-sensor"], help="run only this part")


def main() -> int:
    """``python -m bench.scoring``."""
    return run_standalone("bench.scoring", __doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
