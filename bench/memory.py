"""Benchmark 4, memory: the services' RSS during the end-to-end run (:mod:`bench.e2e`) and over a soak after it.

VmRSS and VmHWM of each service process (/proc/<pid>/status) are sampled in a
thread (:class:`Sampler`); :func:`report_memory` turns the samples into the two
memory tables: per service during the latency phases, and the growth over the
soak (the least-squares slope of RSS after its first fifth, and over its second half).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import Bench
from bench.machine import memory_mb
from bench.probes import slope_per_minute
from bench.report import Table, write_result
from localstack.services import ServiceProcess

#: How the memory tables name each service process.
LABELS = {
    "Server": "Server (bridge)",
    "Models_analysis": "Models_analysis",
    "Data_collection": "Data_collection (sensor)",
}
#: The soak after the latency phases: readings/s, and minutes by default (--soak-minutes; 1 with --quick).
SOAK_RATE = 500
SOAK_MINUTES = 20.0


@dataclass
class Sampler:
    """Samples each service's VmRSS and VmHWM in a thread: (seconds since start, rss MB, hwm MB) per service."""

    services: list[ServiceProcess]
    every_s: float
    samples: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every_s):
                return

    def sample(self) -> None:
        now = time.monotonic() - self._started
        for service in self.services:
            if service.process is not None:
                rss, hwm = memory_mb(service.process.pid)
                self.samples.setdefault(LABELS.get(service.module, service.name), []).append((now, rss, hwm))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


def _memory_rows(sampler: Sampler) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, figures = [], {}
    for name, samples in sampler.samples.items():
        rss = [s[1] for s in samples if s[1] == s[1]]
        if not rss:
            continue
        entry = {
            "first_mb": rss[0],
            "steady_mb": statistics.median(rss),
            "peak_rss_mb": max(rss),
            "hwm_mb": max(s[2] for s in samples if s[2] == s[2]),
        }
        figures[name] = entry
        rows.append([name, entry["first_mb"], entry["steady_mb"], entry["peak_rss_mb"], entry["hwm_mb"]])
    return rows, figures


def _soak_rows(sampler: Sampler, minutes: float) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, figures = [], {}
    warm = minutes * 60 / 5
    for name, samples in sampler.samples.items():
        points = [(t, rss) for t, rss, _ in samples if rss == rss]
        if not points:
            continue
        settled = [p for p in points if p[0] >= warm]
        half = [p for p in points if p[0] >= minutes * 30]
        entry = {
            "start_mb": points[0][1],
            "end_mb": points[-1][1],
            "peak_mb": max(s[2] for s in samples if s[2] == s[2]),
            "slope_mb_per_min": slope_per_minute(settled),
            "slope_second_half_mb_per_min": slope_per_minute(half),
            "samples": [[round(t, 1), round(rss, 2)] for t, rss in points],
        }
        figures[name] = entry
        rows.append(
            [
                name,
                entry["start_mb"],
                entry["end_mb"],
                entry["peak_mb"],
                entry["slope_mb_per_min"],
                entry["slope_second_half_mb_per_min"],
            ]
        )
    return rows, figures


def report_memory(
    bench: Bench, during: Sampler, soak_sampler: Sampler, soak: dict[str, Any], soak_minutes: float
) -> dict[str, Any]:
    """Print and write the memory tables of the end-to-end run (``during``) and the soak; returns the figures."""
    memory_rows, memory_during = _memory_rows(during)
    soak_rows, soak_figures = _soak_rows(soak_sampler, soak_minutes)
    memory_tables = [
        Table(
            "Memory during the end-to-end run (MB)",
            ["service", "RSS at start", "RSS steady (median)", "RSS max", "VmHWM (peak)"],
            memory_rows,
            ["sampled every second from /proc/<pid>/status; the sensor is the real Data_collection process"],
        ),
        Table(
            f"Memory over a {soak_minutes:g}-minute soak at {SOAK_RATE} readings/s (MB)",
            ["service", "RSS at start", "RSS at end", "VmHWM (peak)", "slope MB/min", "slope, 2nd half"],
            soak_rows,
            [
                f"slope: least squares over the soak after its first fifth, sampled every 5 s; soak p99 "
                f"{soak['p99_s']:.2f} s, achieved {soak['achieved_rate']:.0f}/s",
            ],
        ),
    ]
    memory_figures = {
        "during_e2e": memory_during,
        "soak": soak_figures,
        "soak_minutes": soak_minutes,
        "soak_rate": SOAK_RATE,
        "soak_latency": {k: v for k, v in soak.items() if k != "histogram"},
        "quick": bench.quick,
    }
    write_result(bench.results_dir, "memory", memory_figures, memory_tables)
    return memory_figures
