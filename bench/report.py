"""A benchmark's results: tables printed to the terminal, ``bench/results/<name>.json`` and ``latest.md``.

:func:`write_result` writes one benchmark's figures and tables with the machine they
were measured on, then rebuilds ``latest.md`` from every result in the folder.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import machine
from localstack.services import ROOT

RESULTS_DIR = ROOT / "bench" / "results"


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


#: The ``--service-env`` settings of the running benchmark, recorded with each result it writes.
_service_env: dict[str, str] = {}


@contextlib.contextmanager
def recording_service_env(settings: dict[str, str]) -> Iterator[None]:
    """Record ``settings`` with every result written inside the block."""
    global _service_env  # noqa: PLW0603 - one benchmark run at a time in a process
    before, _service_env = _service_env, dict(settings)
    try:
        yield
    finally:
        _service_env = before


def write_result(results_dir: Path, name: str, figures: dict[str, Any], tables: list[Table]) -> Path:
    """Write ``<results_dir>/<name>.json`` (figures, tables, machine) and rebuild ``latest.md``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "service_env": dict(_service_env),
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
ORDER = ("scoring", "bridge", "peer", "kafka_clients", "e2e", "memory", "outage", "storage", "scale", "backtest")


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
        if result.get("service_env"):
            changed = ", ".join(f"`{name}={value}`" for name, value in result["service_env"].items())
            parts += [f"Service settings changed for this run (`--service-env`): {changed}.", ""]
        for table in result["tables"]:
            parts += [markdown_table(table), ""]
    path = results_dir / "latest.md"
    path.write_text("\n".join(parts))
    return path
