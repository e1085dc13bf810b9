"""What every benchmark shares: a throwaway stack, the services as processes, results, tables and probes.

A benchmark gets a :class:`Bench` (the running stack plus its options), starts
the services it needs in a :class:`Namespace` of its own (topics, client ids,
groups and sensor ids nobody else uses), and hands its figures to
:func:`write_result`, which writes ``bench/results/<name>.json`` and rebuilds
``bench/results/latest.md`` from every result there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families

from localstack.services import ROOT, ServiceProcess, model_env, sensor_env, server_env
from localstack.testing import namespaced_topics

logger = logging.getLogger(__name__)

RESULTS_DIR = ROOT / "bench" / "results"
#: Ports of the benchmarks' stack: away from the defaults and from the tests' (21000).
DEFAULT_PORT_BASE = 25000
#: The Python packages whose versions a result records.
PACKAGES = ("prophet", "pandas", "numpy", "paho-mqtt", "confluent-kafka", "pymongo", "pydantic", "orjson")


# --------------------------------------------------------------------------- options and the stack


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes."""
    parser.add_argument("--quick", action="store_true", help="a short run (fewer readings, shorter phases)")
    parser.add_argument(
        "--port-base",
        type=int,
        default=DEFAULT_PORT_BASE,
        help=f"ports of the throwaway stack start here (default {DEFAULT_PORT_BASE}: MQTT on +883, Kafka on +92, ...)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"where the JSON and latest.md go (default {RESULTS_DIR})"
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the services' logs go (default: a logs/ folder in the stack's temporary directory)",
    )


@dataclass
class Bench:
    """A running throwaway stack and the options of this invocation."""

    env: dict[str, str]
    quick: bool
    results_dir: Path
    log_dir: Path
    state_dir: Path

    def namespace(self, label: str) -> Namespace:
        """A fresh namespace (topics, ids, groups) for one part of a benchmark."""
        return Namespace(self, f"b{label}{uuid.uuid4().hex[:6]}")


@contextlib.contextmanager
def bench_stack(args: argparse.Namespace) -> Iterator[Bench]:
    """Start the stack on ``args.port_base`` in a fresh temporary STACK_DIR; stop it on exit."""
    from localstack.testing import throwaway_stack

    state_dir = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    log_dir = args.log_dir or state_dir / "service-logs"
    print(f"starting the local stack on port base {args.port_base} in {state_dir} ...", flush=True)
    started = time.monotonic()
    with throwaway_stack(state_dir, args.port_base) as (_handle, env):
        print(f"stack ready after {time.monotonic() - started:.0f}s; service logs in {log_dir}", flush=True)
        yield Bench(env, args.quick, args.results_dir, log_dir, state_dir)


def run_standalone(
    module: str,
    description: str,
    run: Callable[[Bench, argparse.Namespace], Any],
    extra: Callable[[Any], None] | None = None,
) -> int:
    """The ``main`` of a benchmark module run on its own: parse options, start a stack, run, stop."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    add_common_arguments(parser)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    setup_logging()
    with bench_stack(args) as bench:
        run(bench, args)
    return 0


def setup_logging() -> None:
    """Warnings only: the benchmarks print their own progress."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Prophet logs an ERROR when the optional plotly is missing; nothing here plots.
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------- services


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Namespace:
    """One isolated pipeline: its own Kafka topics and groups, MQTT client ids and sensor ids."""

    bench: Bench
    name: str
    processes: list[ServiceProcess] = field(default_factory=list)
    bridge_ids: list[str] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        """The Kafka topic settings of this namespace."""
        return namespaced_topics(self.name)

    def sensor_ids(self, count: int, prefix: str = "s") -> list[str]:
        """``count`` sensor ids of this namespace."""
        return [f"{self.name}-{prefix}{i}" for i in range(count)]

    def _start(self, name: str, module: str, env: dict[str, str]) -> ServiceProcess:
        process = ServiceProcess(name, module, env, self.bench.log_dir / self.name / f"{name}.log")
        process.start()
        self.processes.append(process)
        return process

    def start_server(self, replica: int = 1, **overrides: str) -> ServiceProcess:
        """A bridge replica (MQTT_CLIENT_ID distinct per replica, one MQTT_SHARE_GROUP); not yet waited for."""
        client_id = f"{self.name}-bridge-{replica}"
        self.bridge_ids.append(client_id)
        env = server_env(
            self.bench.env,
            **self.topics,
            MQTT_CLIENT_ID=client_id,
            MQTT_SHARE_GROUP=f"{self.name}-bridge",
            KAFKA_RESULTS_GROUP_ID=f"{self.name}-results",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._start(f"server-{replica}", "Server", env)

    def start_model(self, replica: int = 1, **overrides: str) -> ServiceProcess:
        """A model-service replica in this namespace's consumer group; not yet waited for."""
        env = model_env(
            self.bench.env,
            **self.topics,
            KAFKA_GROUP_ID=f"{self.name}-models",
            KAFKA_CLIENT_ID=f"{self.name}-model-{replica}",
            **{"HEALTH_PORT": str(free_port()), **overrides},
        )
        return self._start(f"model-{replica}", "Models_analysis", env)

    def start_sensor(self, sensor_id: str, **overrides: str) -> ServiceProcess:
        """A real sensor process (Data_collection) with its own health and metrics port."""
        env = sensor_env(self.bench.env, sensor_id, **{"HEALTH_PORT": str(free_port()), **overrides})
        return self._start(f"sensor-{sensor_id}", "Data_collection", env)

    def wait_ready(self, process: ServiceProcess, timeout_s: float = 120.0) -> None:
        """Wait until the process's /readyz answers 200; RuntimeError with its log if it dies or times out."""
        url = f"http://127.0.0.1:{process.env['HEALTH_PORT']}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not process.alive:
                raise RuntimeError(f"{process.name} exited with {process.returncode}:\n{process.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{process.name} not ready after {timeout_s:.0f}s:\n{process.log_tail()}")

    def stop_all(self) -> None:
        """Stop every process (sensors first), then drop the bridges' persistent MQTT sessions.

        A stopped bridge's session would otherwise stay on the broker and keep
        collecting its share of every later benchmark's readings.
        """
        ordered = sorted(self.processes, key=lambda p: not p.name.startswith("sensor"))
        for process in ordered:
            code = process.stop()
            if code not in (0, None):
                logger.warning("%s stopped with exit code %s; log: %s", process.name, code, process.log_path)
        self.processes.clear()
        for client_id in self.bridge_ids:
            clear_session(self.bench.env, client_id)
        self.bridge_ids.clear()

    @contextlib.contextmanager
    def running(self) -> Iterator[Namespace]:
        """Stop everything this namespace started when the block ends, however it ends."""
        try:
            yield self
        finally:
            self.stop_all()


def clear_session(env: dict[str, str], client_id: str) -> None:
    """End a persistent MQTT session: connect with its client id, clean start, no expiry, then leave."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(env["MQTT_SERVER_USERNAME"], env["MQTT_SERVER_PASSWORD"])
    try:
        client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]), clean_start=True, properties=properties)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        client.disconnect()
        client.loop_stop()
    except OSError as error:
        logger.warning("could not clear the MQTT session of %s: %s", client_id, error)


# --------------------------------------------------------------------------- probes


def scrape(process: ServiceProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A service's /metrics as {sample name: [(labels, value), ...]}."""
    url = f"http://127.0.0.1:{process.env['HEALTH_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def metric(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of a sample's values over the series matching ``labels``."""
    return sum(value for series, value in samples.get(name, []) if all(series.get(k) == v for k, v in labels.items()))


def histogram(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts {upper bound: count} (``name`` without ``_bucket``)."""
    buckets: dict[float, float] = {}
    for series, value in samples.get(f"{name}_bucket", []):
        bound = float(series["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return dict(sorted(buckets.items()))


def histogram_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """Cumulative counts observed between two snapshots of one histogram."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the q-quantile."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets.items():
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            inside = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / inside if inside else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def fraction_within(buckets: dict[float, float], bound: float) -> float:
    """The share of observations at or under ``bound`` (a bucket bound)."""
    total = buckets.get(float("inf"), 0.0)
    return buckets.get(bound, float("nan")) / total if total else float("nan")


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc/<pid>/status; (nan, nan) once it has gone."""
    values = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024  # kB
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


#: Who uses the CPU during a benchmark: (label, a string in the process's command line), first match wins.
CPU_GROUPS = (
    ("bridge", "-m Server"),
    ("model service", "-m Models_analysis"),
    ("real sensor", "-m Data_collection"),
    ("FerretDB", "ferretdb"),
    ("Kafka", "kafka.Kafka"),
    ("Mosquitto", "mosquitto"),
    ("mongo-express", "mongo-express"),
)
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds_by_group() -> dict[str, float]:
    """CPU seconds (user + system) of every live process, summed per CPU_GROUPS label."""
    used: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        label = next((name for name, marker in CPU_GROUPS if marker in command), None)
        if label is not None:
            used[label] = used.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return used


def _machine_ticks() -> list[int]:
    """The machine's CPU counters from /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


class CpuMeter:
    """Cores each part of the stack used between :meth:`start` and :meth:`stop`.

    Processes are told apart by their command line (CPU_GROUPS); the
    benchmark's own publisher processes are counted from ``RUSAGE_CHILDREN``
    (they are the only children that end, and are reaped, in between).
    """

    def start(self) -> CpuMeter:
        self._started = time.monotonic()
        self._groups = _cpu_seconds_by_group()
        self._machine = _machine_ticks()
        self._children = _children_cpu()
        return self

    def stop(self) -> dict[str, float]:
        """{label: cores} for the stack's processes, the publishers, and the machine's busy, idle and steal."""
        wall = time.monotonic() - self._started
        after = _cpu_seconds_by_group()
        cores = {k: max(0.0, v - self._groups.get(k, 0.0)) / wall for k, v in after.items()}
        cores["publishers (simulated sensors)"] = (_children_cpu() - self._children) / wall
        ticks = [b - a for a, b in zip(self._machine, _machine_ticks(), strict=True)]
        cores["machine: busy"] = (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / _TICK / wall
        cores["machine: idle"] = (ticks[3] + ticks[4]) / _TICK / wall
        cores["machine: stolen by the host"] = ticks[7] / _TICK / wall
        return cores


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return float("nan")
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return float("nan")
    return 60.0 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


# --------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return float("nan")


def _mosquitto_version() -> str:
    try:
        out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=10, check=False).stdout
        return out.splitlines()[0].removeprefix("mosquitto version ").strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> dict[str, Any]:
    """The machine and the versions of everything measured, recorded with every result."""
    from confluent_kafka import libversion

    from localstack.stack import component_versions

    versions: dict[str, str] = {"python": platform.python_version()}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    versions["librdkafka"] = libversion()[0]
    versions["mosquitto"] = _mosquitto_version()
    versions.update(component_versions())
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": _memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


# --------------------------------------------------------------------------- results


@dataclass
class Table:
    """A titled table of figures, printed to the terminal and written into latest.md."""

    title: str
    headers: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "headers": self.headers, "rows": self.rows, "notes": self.notes}


def fmt(value: Any) -> str:
    """A cell as text: floats to a sensible precision, NaN as a dash."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(table: Table) -> None:
    """The table in plain text, columns aligned."""
    cells = [table.headers] + [[fmt(c) for c in row] for row in table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.headers))]
    print(f"\n{table.title}")
    for index, row in enumerate(cells):
        print(
            "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for note in table.notes:
        print(f"  {note}")
    sys.stdout.flush()


def markdown_table(table: dict[str, Any]) -> str:
    """A table (as stored in a result) in Markdown."""
    lines = [f"**{table['title']}**", "", "| " + " | ".join(table["headers"]) + " |"]
    lines.append("| " + " | ".join("---" for _ in table["headers"]) + " |")
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in table["rows"]]
    if table.get("notes"):
        lines.append("")
        lines += [f"- {note}" for note in table["notes"]]
    return "\n".join(lines)


def write_result(results_dir: Path, name: str, figures: dict[str, Any], tables: list[Table]) -> Path:
    """Write ``<results_dir>/<name>.json`` (figures, tables, machine) and rebuild ``latest.md``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": figures,
        "tables": [t.to_dict() for t in tables],
    }
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(path)
    for table in tables:
        print_table(table)
    write_summary(results_dir)
    return path


#: The order of the benchmarks in latest.md.
ORDER = ("scoring", "bridge", "kafka_clients", "e2e", "memory", "outage", "storage", "backtest")


def write_summary(results_dir: Path) -> Path:
    """Rebuild ``latest.md`` from every ``*.json`` result in ``results_dir``."""
    results = []
    for path in sorted(results_dir.glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            results.append(json.loads(path.read_text()))
    results.sort(key=lambda r: (ORDER.index(r["benchmark"]) if r["benchmark"] in ORDER else len(ORDER), r["benchmark"]))
    parts = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/); each section comes from its JSON file here.",
        "",
    ]
    for result in results:
        info = result["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        parts += [
            f"## {result['benchmark']} ({result['finished_at']})",
            "",
            f"{info['cores']} cores ({info['cpu']}), {info['memory_gb']} GB, {info['os']}, "
            f"load average at start {info['load_average_at_start']}. {versions}.",
            "",
        ]
        for table in result["tables"]:
            parts += [markdown_table(table), ""]
    path = results_dir / "latest.md"
    path.write_text("\n".join(parts))
    return path


def wait_until(condition: Callable[[], Any], timeout_s: float, every_s: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout_s`` passes (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(every_s)
