"""Outage budget: what a bridge outage costs the broker, and how fast the pipeline catches up.

Starts a bridge once (so its persistent session and shared subscription exist)
and stops it, as in an outage of the bridge, or of MongoDB or Kafka (a bridge
that cannot store acknowledges nothing, so the broker queues the same way).
Publishes ``--readings`` readings from 100 sensors meanwhile, and measures
Mosquitto's memory (RSS) and its persistence file (mosquitto.db, saved every
second) before and after. Then starts the bridge and times the drain into
MongoDB and Kafka, checking every reading arrived once. The per-reading costs
give the outage budget in the README ("Outage budget"): how long an outage
``max_queued_messages`` and ``max_queued_bytes`` absorb at a given rate, and
what it costs. Writes ``bench/results/outage.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from bench.common import Bench, run_standalone, wait_until
from bench.load import publish
from bench.machine import memory_mb
from bench.report import Table, write_result
from pipeline import contract

SENSORS = 100


def _mosquitto_pid(state_dir: Path) -> int:
    """The pid of this stack's Mosquitto (its command line names the stack's config file)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"mosquitto") and str(state_dir).encode() in b" ".join(cmdline):
            return int(proc.name)
    raise RuntimeError(f"no mosquitto process of the stack in {state_dir}")


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Queue readings during a bridge outage, measure the broker, then the drain; write the table."""
    count = getattr(args, "readings", 0) or (50_000 if bench.quick else 300_000)
    namespace = bench.namespace("outage")
    sensors = namespace.sensor_ids(SENSORS)
    pid = _mosquitto_pid(bench.state_dir)
    database = Path(bench.state_dir) / "data" / "mosquitto" / "mosquitto.db"
    mongo: MongoClient[dict[str, Any]] = MongoClient(bench.env["MONGO_URI"], serverSelectionTimeoutMS=10_000)
    readings = mongo[bench.env["MONGO_DATABASE"]][contract.COLLECTION_READINGS]
    with namespace.running():
        bridge = namespace.start_server()
        namespace.wait_ready(bridge)
        bridge.stop()
        namespace.processes.remove(bridge)
        time.sleep(2)
        rss_before = memory_mb(pid)[0]
        db_before = database.stat().st_size if database.exists() else 0
        print(f"\n[outage] bridge away; publishing {count:,} readings from {SENSORS} sensors ...", flush=True)
        report = publish(bench.env, sensors, processes=3, per_sensor=count // SENSORS)
        if report.errors:
            raise RuntimeError(f"publishing failed: {report.errors}")
        time.sleep(3)  # mosquitto saves its database every second (autosave_interval 1)
        rss_full = memory_mb(pid)[0]
        db_full = database.stat().st_size if database.exists() else 0
        queued = report.sent
        print(f"[outage] {queued:,} queued; bridge back, draining ...", flush=True)
        started = time.monotonic()
        namespace.start_server()
        query = {"sensor": {"$in": sensors}}
        wait_until(lambda: readings.count_documents(query) >= queued, timeout_s=1800, every_s=2.0)
        drain_s = time.monotonic() - started
        stored = readings.count_documents(query)
        time.sleep(3)
        rss_after = memory_mb(pid)[0]
    mongo.close()
    per_message_kb = (rss_full - rss_before) * 1024 / queued
    db_per_message = (db_full - db_before) / queued
    figures = {
        "queued": queued,
        "stored": stored,
        "every_reading_stored_once": stored == queued,
        "mosquitto_rss_mb": {"before": rss_before, "full": rss_full, "after_drain": rss_after},
        "mosquitto_db_bytes": {"before": db_before, "full": db_full},
        "broker_memory_per_queued_reading_kb": per_message_kb,
        "broker_disk_per_queued_reading_bytes": db_per_message,
        "drain_s": drain_s,
        "drain_readings_per_s": queued / drain_s,
        "publish_readings_per_s": report.send_rate,
        "quick": bench.quick,
    }
    table = Table(
        f"Outage: {queued:,} readings queued by Mosquitto for a stopped bridge, then drained",
        ["queued", "RSS before MB", "RSS full MB", "KB/reading", "mosquitto.db MB", "B/reading", "drain s", "drain/s"],
        [
            [
                queued,
                rss_before,
                rss_full,
                per_message_kb,
                db_full / 1e6,
                db_per_message,
                drain_s,
                queued / drain_s,
            ]
        ],
        [
            f"stored after the drain: {stored:,} of {queued:,} (every reading once: {stored == queued})",
            f"Mosquitto RSS after the drain: {rss_after:.0f} MB",
        ],
    )
    write_result(bench.results_dir, "outage", figures, [table])
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark."""
    parser.add_argument("--readings", type=int, default=0, help="readings queued (default 300,000; --quick 50,000)")


def main() -> int:
    """``python -m bench.outage``."""
    return run_standalone("bench.outage", __doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
