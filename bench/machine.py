"""The machine a benchmark runs on, read from /proc: memory and CPU of its processes, and what it is.

:func:`machine` describes the machine and the versions of everything measured (every
result records it); :func:`memory_mb` and :class:`CpuMeter` measure the stack's
processes while a benchmark runs.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

#: The Python packages whose versions a result records.
PACKAGES = ("prophet", "pandas", "numpy", "paho-mqtt", "confluent-kafka", "pymongo", "pydantic", "orjson")


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
#: The stack's own parts in pipeline order (CPU_GROUPS labels): what "CPU per reading of the stack" adds up. The
#: real sensor and the benchmark's publishers are load (on a site the sensors are elsewhere); mongo-express idles.
PARTS = ("Mosquitto", "bridge", "Kafka", "model service", "FerretDB")
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from the text of a /proc/<pid>/stat."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used; NaN when there is no such process."""
    if pid is None:
        return float("nan")
    try:
        return _stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return float("nan")


def rusage_cpu_seconds(who: int) -> float:
    """CPU seconds (user + system) of this process (``resource.RUSAGE_SELF``) or its reaped children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def stack_pid(state_dir: Path, marker: bytes) -> int | None:
    """The pid of the stack's process whose command line holds ``marker`` and the stack's directory, if any."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and str(state_dir).encode() in cmdline:
            return int(proc.name)
    return None


def _cpu_seconds_by_group(root: int | None = None) -> dict[str, float]:
    """CPU seconds (user + system) of the processes descended from ``root`` (this one), per CPU_GROUPS label.

    Only this benchmark's own stack and services count: on a machine shared with
    other stacks, a process of theirs has the same command line.
    """
    root = os.getpid() if root is None else root
    found: dict[int, tuple[int, str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), command, stat)
    used: dict[str, float] = {}
    for pid, (_, command, stat) in found.items():
        label = next((name for name, marker in CPU_GROUPS if marker in command), None)
        if label is not None and _descends_from(pid, root, found):
            used[label] = used.get(label, 0.0) + _stat_cpu_seconds(stat)
    return used


def _descends_from(pid: int, root: int, found: dict[int, tuple[int, str, str]]) -> bool:
    """Whether ``root`` is among ``pid``'s ancestors (``found``: pid -> (parent pid, ...))."""
    seen = set()
    while pid in found and pid not in seen:
        seen.add(pid)
        pid = found[pid][0]
        if pid == root:
            return True
    return False


def _machine_ticks() -> list[int]:
    """The machine's CPU counters from /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


class CpuMeter:
    """Cores each part of the stack used between :meth:`start` and :meth:`stop`.

    Processes are this one's descendants, told apart by their command line (CPU_GROUPS); the
    benchmark's own publisher processes are counted from ``RUSAGE_CHILDREN``
    (they are the only children that end, and are reaped, in between).
    """

    #: Seconds between :meth:`start` and the last :meth:`stop`.
    wall_s = 0.0

    def start(self) -> CpuMeter:
        self._started = time.monotonic()
        self._groups = _cpu_seconds_by_group()
        self._machine = _machine_ticks()
        self._children = rusage_cpu_seconds(resource.RUSAGE_CHILDREN)
        return self

    def stop(self) -> dict[str, float]:
        """{label: cores} for the stack's processes, the publishers, and the machine's busy, idle and steal."""
        wall = self.wall_s = time.monotonic() - self._started
        after = _cpu_seconds_by_group()
        cores = {k: max(0.0, v - self._groups.get(k, 0.0)) / wall for k, v in after.items()}
        cores["publishers (simulated sensors)"] = (rusage_cpu_seconds(resource.RUSAGE_CHILDREN) - self._children) / wall
        ticks = [b - a for a, b in zip(self._machine, _machine_ticks(), strict=True)]
        cores["machine: busy"] = (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / _TICK / wall
        cores["machine: idle"] = (ticks[3] + ticks[4]) / _TICK / wall
        cores["machine: stolen by the host"] = ticks[7] / _TICK / wall
        return cores


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
