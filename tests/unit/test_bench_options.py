"""The benchmarks' ``--service-env`` (every service gets it, and the result records it) and bench.bridge's CPU table."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import bridge, common, probes, report
from bench.common import Bench
from bench.namespace import Namespace
from localstack import namespace as localstack_namespace

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    common.add_common_arguments(parser)
    return parser


@given(st.lists(st.tuples(NAMES, st.text(max_size=40)), max_size=5))
def test_each_service_env_option_is_a_name_and_its_value_whatever_the_value_holds(
    settings: list[tuple[str, str]],
) -> None:
    args = _parser().parse_args([f"--service-env={name}={value}" for name, value in settings])
    assert args.service_env == settings


@pytest.mark.parametrize("text", ["", "=1", "NOVALUE", "1ABC=2", "A-B=3", "É=1", " A=1"])
def test_a_service_env_option_without_a_variables_name_stops_the_benchmark_and_says_so(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args([f"--service-env={text}"])
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_every_service_a_benchmark_starts_gets_the_service_env_over_the_benchmarks_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[dict[str, str]] = []

    def start(_self: object, _name: str, _module: str, env: dict[str, str]) -> None:
        started.append(env)

    monkeypatch.setattr(localstack_namespace.Namespace, "start", start)
    bench = Bench({}, False, tmp_path, tmp_path, tmp_path, {"SERVER_BATCH_WAIT_MS": "20", "EXTRA": "x"})
    namespace = Namespace(bench, "n")
    namespace.start("server-1", "Server", {"SERVER_BATCH_WAIT_MS": "100", "KEEP": "k"})
    assert started == [{"SERVER_BATCH_WAIT_MS": "20", "EXTRA": "x", "KEEP": "k"}]


def test_a_result_records_the_service_env_it_ran_with_and_the_summary_says_so(tmp_path: Path) -> None:
    table = report.Table("t", ["a"], [[1.0]])
    with report.recording_service_env({"SERVER_BATCH_WAIT_MS": "20"}):
        report.write_result(tmp_path, "bridge", {"x": 1}, [table])
    report.write_result(tmp_path, "peer", {"x": 2}, [table])
    assert json.loads((tmp_path / "bridge.json").read_text())["service_env"] == {"SERVER_BATCH_WAIT_MS": "20"}
    assert json.loads((tmp_path / "peer.json").read_text())["service_env"] == {}, "recorded only inside the block"
    summary = (tmp_path / "latest.md").read_text()
    assert summary.count("`SERVER_BATCH_WAIT_MS=20`") == 1


MS = st.floats(1e-4, 0.2)


def _run(parts: dict[str, float]) -> dict[str, Any]:
    return {"cpu_ms_per_reading": {**parts, "all": sum(parts.values())}}


@given(
    cores=st.dictionaries(st.sampled_from([bridge.CHILDREN, "Mosquitto", "bridge", "Kafka", "FerretDB"]), MS),
    wall_s=st.floats(0.5, 100),
    sent=st.integers(1, 10**6),
)
def test_the_cpu_per_reading_of_the_parts_adds_up_to_all_of_them(
    cores: dict[str, float], wall_s: float, sent: int
) -> None:
    spent = bridge.cpu_ms_per_reading({**cores, "machine: busy": 1.5}, wall_s, sent, "bridge")
    assert math.isclose(spent["all"], sum(spent[part] for part in bridge.CPU_PARTS))
    assert math.isclose(spent["all"], 1000 * sum(cores.values()) * wall_s / sent)
    assert spent["machine busy cores"] == 1.5


@given(base=st.tuples(MS, MS, MS), subscriber=MS, own=MS, servers=st.tuples(MS, MS))
def test_the_ratio_bound_is_one_when_the_bridge_adds_nothing_and_falls_as_kafka_and_ferretdb_cost_more(
    base: tuple[float, float, float], subscriber: float, own: float, servers: tuple[float, float]
) -> None:
    publishers, mosquitto, _ = base
    bare = _run({"publishers": publishers, "Mosquitto": mosquitto, "subscriber or bridge": subscriber})
    nothing_more = _run({"publishers": publishers, "Mosquitto": mosquitto, "subscriber or bridge": own})
    assert math.isclose(bridge.ratio_bound(bare, nothing_more), 1.0), "its own cost is left out"
    kafka, ferretdb = servers
    with_servers = _run(
        {
            "publishers": publishers,
            "Mosquitto": mosquitto,
            "subscriber or bridge": own,
            "Kafka": kafka,
            "FerretDB": ferretdb,
        }
    )
    bound = bridge.ratio_bound(bare, with_servers)
    total = publishers + mosquitto + subscriber
    assert math.isclose(bound, total / (total + kafka + ferretdb))


SENSOR_IDS = st.lists(st.from_regex(r"s[0-9]{1,3}", fullmatch=True), unique=True, max_size=6)


@given(mine=SENSOR_IDS, others=SENSOR_IDS, times=st.lists(st.floats(1e9, 2e9), min_size=12, max_size=12))
def test_a_runs_end_is_the_latest_stored_time_of_its_own_sensors_and_no_one_elses(
    mine: list[str], others: list[str], times: list[float]
) -> None:
    others = [s for s in others if s not in mine]
    at = dict(zip(mine + others, times, strict=False))
    samples: dict[str, list[tuple[dict[str, str], float]]] = {
        "pipeline_sensor_last_stored_timestamp_seconds": [({"sensor": s}, t) for s, t in at.items()],
        "pipeline_readings_stored_total": [({}, 3e9)],
    }
    expected = max((at[s] for s in mine), default=0.0)
    assert probes.last_stored_at(samples, mine) == expected
    assert probes.last_stored_at({}, mine) == 0.0, "no series: no time (the benchmark then stops and says so)"


def test_the_cpu_table_takes_each_parts_mean_over_the_rounds() -> None:
    runs = [_run({"publishers": 0.05 + i / 100, "subscriber or bridge": 0.04}) for i in range(3)]
    for rate, run in zip((10_000, 12_000, 20_000), runs, strict=True):
        run["readings_per_s"] = rate
    mean = bridge._mean_run(runs)
    assert mean["readings_per_s"] == 14_000
    assert math.isclose(mean["cpu_ms_per_reading"]["publishers"], 0.06)
    assert math.isclose(mean["cpu_ms_per_reading"]["all"], 0.10)


@given(st.integers(-1000, 1000) | st.text(max_size=8))
def test_a_count_option_is_a_whole_number_of_at_least_one_or_it_is_refused(text: int | str) -> None:
    parser = argparse.ArgumentParser()
    bridge.add_arguments(parser)
    try:
        expected = int(str(text))
    except ValueError:
        expected = 0
    if expected >= 1:
        assert parser.parse_args(["--bridge-rounds", str(text)]).bridge_rounds == expected
        return
    with pytest.raises(SystemExit):
        parser.parse_args(["--bridge-rounds", str(text)])
