"""A month of data: the live page's API and ingestion while the store holds it, and the disk it takes.

Loads, as the bridge would have written them, a month of 100 sensors at one
reading a minute (about 4.3 million readings, each with its prediction) plus
one day of ten sensors at one a second (864,000 more), with the documents the
bridge derives from them (a document per sensor and minute with its points and
forecasts, hourly and daily rollups, one per sensor). ``--quick`` loads two
days and one hour instead. Then, with a bridge, a model service and the
dashboard running, publishes at ``--rate`` readings a second from 100 more
sensors, and meanwhile asks every endpoint of the page's API in turn every
3 s (the page's poll interval), recording each answer's time. The bridge keeps raw data half a day less than
was loaded, so its retention deletes that half day (readings, predictions,
minutes) while the readings come in. Reports the load time, the disk used per million
readings (FerretDB's SQLite files, all collections), each endpoint's p50/p95,
and publish -> stored p99 from the bridge's own histogram. Writes
``bench/results/storage.json``.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from bench.common import Bench, run_standalone
from bench.load import publish
from bench.probes import histogram, histogram_delta, quantile, scrape
from bench.report import Table
from bench.report import write_result as write
from localstack.namespace import free_port
from localstack.services import ServiceProcess, dashboard_env
from pipeline import contract, periods
from pipeline.settings import MongoSettings
from Server.store import Store

BATCH = 10_000
#: The page's poll interval: every endpoint is asked once per poll (a page asks fewer).
POLL_S = 3.0
MODEL = {"name": "bench", "hash": "bench"}
#: The bridge's timeline flush interval: a loaded minute gets one chunk of points per FLUSH_S of readings.
FLUSH_S = 2


def _reading_docs(sensor: str, start: datetime, count: int, step: timedelta) -> Iterator[dict[str, Any]]:
    """``count`` readings of ``sensor`` from ``start``, ``step`` apart: a daily wave with noise."""
    first = int(start.timestamp() // step.total_seconds())
    for i in range(first, first + count):
        ts = start + (i - first) * step
        minute_of_day = ts.hour * 60 + ts.minute
        v = round(100 + 40 * ((minute_of_day % 1440) / 720 - 1) ** 2 + (hash((sensor, i)) % 100) / 10, 2)
        yield {"_id": f"{sensor}-{i}", "sensor": sensor, "ts": ts, "v": v, "received_at": ts}


def _prediction(reading: dict[str, Any]) -> dict[str, Any]:
    v = reading["v"]
    return {
        "_id": reading["_id"],
        "sensor": reading["sensor"],
        "ds": reading["ts"],
        "yhat": v + 1.0,
        "yhat_lower": v - 8.0,
        "yhat_upper": v + 10.0,
        "v": v,
        "anomaly": False,
        "model": MODEL,
        "scored_at": reading["ts"],
    }


def _derived(readings: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The minute, hour and day documents of a chunk of readings (each sensor's chunk ends on a day)."""
    minutes: dict[str, dict[str, Any]] = {}
    rollups: dict[str, dict[str, dict[str, Any]]] = {
        periods.COLLECTION[periods.HOUR]: {},
        periods.COLLECTION[periods.DAY]: {},
    }
    forecasts = {p["_id"]: p for p in predictions}
    for r in readings:
        for step in (periods.MINUTE, periods.HOUR, periods.DAY):
            start = periods.FLOOR[step](r["ts"])
            key = periods.period_id(r["sensor"], start)
            table = minutes if step == periods.MINUTE else rollups[periods.COLLECTION[step]]
            doc = table.setdefault(
                key, {"_id": key, "sensor": r["sensor"], "count": 0, "sum": 0.0, "min": r["v"], "max": r["v"]}
            )
            doc.update(count=doc["count"] + 1, sum=doc["sum"] + r["v"], min=min(doc["min"], r["v"]))
            doc["max"] = max(doc["max"], r["v"])
            if step == periods.MINUTE:
                doc["minute"] = start
                # Grouped as the bridge's flushes every 2 s would have written them.
                doc.setdefault("flushes", defaultdict(list))[r["ts"].second // FLUSH_S].append(r)
            else:
                doc["start"] = start
    for doc in minutes.values():
        flushes = doc.pop("flushes").values()
        doc["points"] = [periods.pack_points((r["_id"], r["ts"], r["v"]) for r in chunk) for chunk in flushes]
        doc["forecasts"] = [
            periods.pack_forecasts(forecasts[r["_id"]] | {"id": r["_id"]} for r in chunk) for chunk in flushes
        ]
    return {
        periods.COLLECTION[periods.MINUTE]: list(minutes.values()),
        **{k: list(v.values()) for k, v in rollups.items()},
    }


def _insert(db: Database[dict[str, Any]], name: str, documents: list[dict[str, Any]]) -> None:
    for i in range(0, len(documents), BATCH):
        db[name].insert_many(documents[i : i + BATCH], ordered=False)


def load(db: Database[dict[str, Any]], sensors: list[str], days: int, fast: list[str], fast_s: int) -> int:
    """Load ``days`` of one reading a minute for ``sensors`` and ``fast_s`` seconds at 1/s for ``fast``.

    A day of every sensor at a time, each collection in time order, as a bridge would have
    written them: insertion order is time order, which the bridge's retention relies on.
    Whole UTC days up to today's midnight, then today up to now with the fast sensors' last
    ``fast_s``, so no hour or day is split between two chunks.
    """
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first_day = periods.FLOOR[periods.DAY](now) - timedelta(days=days)
    chunks = [
        [(s, first_day + timedelta(days=day), 1440, timedelta(minutes=1)) for s in sensors] for day in range(days)
    ]
    today = periods.FLOOR[periods.DAY](now)
    chunks.append(
        [(s, now - timedelta(seconds=fast_s), fast_s, timedelta(seconds=1)) for s in fast]
        + [(s, today, int((now - today) / timedelta(minutes=1)), timedelta(minutes=1)) for s in sensors]
    )
    last: dict[str, dict[str, Any]] = {}
    total = 0
    for chunk in chunks:
        readings = sorted(
            (r for sensor, start, count, step in chunk for r in _reading_docs(sensor, start, count, step)),
            key=lambda r: r["ts"],
        )
        predictions = [_prediction(r) for r in readings]
        _insert(db, contract.COLLECTION_READINGS, readings)
        _insert(db, contract.COLLECTION_PREDICTIONS, predictions)
        for name, documents in _derived(readings, predictions).items():
            _insert(db, name, sorted(documents, key=lambda d: d.get("minute") or d["start"]))
        last.update({r["sensor"]: r for r in readings})
        total += len(readings)
        print(f"[storage] loaded {total:,} readings", flush=True)
    db[contract.COLLECTION_SENSORS].insert_many(
        [
            {"_id": s, "last": {"ts": r["ts"], "v": r["v"], "id": r["_id"]}, "last_seen": r["received_at"]}
            | {"first_seen": r["received_at"], "received": {}, "interval_s": 60.0 if s in sensors else 1.0}
            for s, r in last.items()
        ]
    )
    return total


def _disk_bytes(state_dir: Path) -> int:
    folder = state_dir / "data" / "ferretdb"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _ask(port: int, auth: str, paths: list[str], stop: threading.Event, times: dict[str, list[float]]) -> None:
    """Ask each path in turn every POLL_S (as the page polls) until ``stop``, recording each answer's seconds."""
    while not stop.wait(POLL_S):
        for name in paths:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{name}", headers={"Authorization": auth})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
            times[name].append(time.perf_counter() - started)


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Load the month, then measure the API and ingestion under load; write the tables."""
    days, fast_s, duration = (2, 3600, 30.0) if bench.quick else (30, 86_400, 90.0)
    namespace = bench.namespace("storage")
    loaded, fast = namespace.sensor_ids(100, "m"), namespace.sensor_ids(10, "f")
    live = namespace.sensor_ids(100, "l")
    mongo: MongoClient[dict[str, Any]] = MongoClient(bench.env["MONGO_URI"], tz_aware=True)
    db = mongo[bench.env["MONGO_DATABASE"]]
    # The collections as a bridge leaves them before any reading: its indexes (none on FerretDB).
    store = Store(MongoSettings.model_validate({"MONGO_URI": bench.env["MONGO_URI"], "MONGO_DATABASE": db.name}))
    store.ensure_indexes()
    store.close()
    disk_before = _disk_bytes(Path(bench.state_dir))
    print(f"\n[storage] loading {days} days of {len(loaded)} sensors and {fast_s:,} s of {len(fast)} ...", flush=True)
    started = time.monotonic()
    readings = load(db, loaded, days, fast, fast_s)
    load_s = time.monotonic() - started
    time.sleep(5)  # SQLite's WAL checkpoint settles
    disk = _disk_bytes(Path(bench.state_dir)) - disk_before
    auth = (
        "Basic "
        + base64.b64encode(
            f"{bench.env.get('MONGO_EXPRESS_USERNAME', 'admin')}:{bench.env['MONGO_EXPRESS_PASSWORD']}".encode()
        ).decode()
    )
    slow, quick_one = loaded[0], fast[0]
    paths = [
        "/api/sensors",
        f"/api/sensors/{quick_one}/series?minutes=60",
        f"/api/aggregates/{quick_one}?minutes=60",
        f"/api/aggregates/{slow}?minutes={7 * 1440}",
        f"/api/aggregates/{slow}?minutes={days * 1440}",
        "/api/alerts?limit=20",
        "/api/rejections?limit=20",
        f"/api/sensors/{slow}/readings.csv?minutes=1440",
        f"/api/sensors/{quick_one}/readings.csv?minutes=60",
    ]
    times: dict[str, list[float]] = defaultdict(list)
    with namespace.running():
        bridge = namespace.start_server(SERVER_RETENTION_RAW_DAYS=str(days - 0.5))
        model = namespace.start_model()
        port = free_port()
        dashboard = ServiceProcess(
            "dashboard",
            "Dashboard",
            dashboard_env(bench.env, DASHBOARD_PORT=str(port), HEALTH_PORT=str(port)),
            bench.log_dir / namespace.name / "dashboard.log",
        )
        dashboard.start()
        namespace.processes.append(dashboard)
        namespace.wait_ready(bridge)
        namespace.wait_ready(model)
        namespace.wait_ready(dashboard)
        before = histogram(scrape(bridge), "pipeline_publish_to_stored_seconds")
        stop = threading.Event()
        asker = threading.Thread(target=_ask, args=(port, auth, paths, stop, times), daemon=True)
        asker.start()
        print(f"[storage] publishing {args.rate}/s for {duration:.0f} s while asking the API ...", flush=True)
        report = publish(bench.env, live, processes=3, rate=args.rate, duration_s=duration)
        stop.set()
        asker.join(timeout=120)
        time.sleep(3)
        samples = scrape(bridge)
        ingest = histogram_delta(histogram(samples, "pipeline_publish_to_stored_seconds"), before)
        deleted = sum(value for _, value in samples.get("pipeline_retention_deleted_total", []))
    mongo.close()
    endpoints = [
        [name.split("?")[0].replace(quick_one, "<1/s sensor>").replace(slow, "<1/min sensor>") + _range(name)]
        + [len(t), statistics.median(t) * 1000, _p95(t) * 1000, max(t) * 1000]
        for name, t in times.items()
    ]
    figures = {
        "readings_loaded": readings,
        "load_s": load_s,
        "disk_mb": disk / 1e6,
        "disk_mb_per_million_readings": disk / 1e6 / (readings / 1e6),
        "rate": args.rate,
        "published": report.sent,
        "ingest_p99_s": quantile(ingest, 0.99),
        "retention_deleted": deleted,
        "endpoints_ms": {
            name: {
                "p50": statistics.median(t) * 1000,
                "p95": _p95(t) * 1000,
                "answers_ms": [round(x * 1000, 1) for x in t],
            }
            for name, t in times.items()
        },
    }
    tables = [
        Table(
            f"Storage: {readings:,} readings loaded ({days} days of {len(loaded)} sensors at 1/min, "
            f"{fast_s:,} s of {len(fast)} at 1/s), each with its prediction",
            [
                "load s",
                "readings/s",
                "disk MB",
                "MB per million readings",
                "ingest /s",
                "publish->stored p99 s",
                "deleted",
            ],
            [
                [load_s, readings / load_s, disk / 1e6, disk / 1e6 / (readings / 1e6)]
                + [args.rate, quantile(ingest, 0.99), deleted]
            ],
            [
                "disk: FerretDB's SQLite files after the load: readings, predictions and the derived documents",
                "deleted: documents the bridge's retention deleted while the readings came in (half a day expired)",
            ],
        ),
        Table(
            f"The live page's API while ingesting {args.rate}/s (ms)",
            ["endpoint", "answers", "p50", "p95", "max"],
            endpoints,
            [f"each endpoint asked in turn every {POLL_S:.0f} s (the page's poll) for the whole ingest phase"],
        ),
    ]
    write(bench.results_dir, "storage", figures, tables)
    return figures


def _range(path: str) -> str:
    return f" ({path.split('minutes=')[1]} min)" if "minutes=" in path else ""


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark."""
    parser.add_argument("--rate", type=int, default=1000, help="readings per second while measuring (default 1000)")


def main() -> int:
    """``python -m bench.storage``."""
    return run_standalone("bench.storage", __doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
