"""bench.scale's pure pieces: the phases' sizes, the second Kafka cluster's ports, and the capacity arithmetic.

No servers: the benchmark itself runs in ``make bench``; its timings are never tested here.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.capacity import FLEETS, capacity_plan, cores_needed, cpu_ms_per_reading, instances_needed, ratio
from bench.scale import PLAN_SENSORS, _tables
from bench.scale_kafka import CLUSTER_BROKERS, CLUSTER_PORT_OFFSETS, cluster_ports, mean_rate, order, plan
from localstack.cluster import kafka_nodes
from localstack.testing import stack_ports

RATES = st.floats(min_value=0.5, max_value=1e7, allow_nan=False, allow_infinity=False)
LOADS = st.floats(min_value=0.0, max_value=1e8, allow_nan=False, allow_infinity=False)
UTILISATIONS = st.floats(min_value=0.05, max_value=1.0, allow_nan=False)


@given(base=st.integers(min_value=1024, max_value=64_000), offset=st.sampled_from(CLUSTER_PORT_OFFSETS))
def test_the_cluster_never_takes_a_port_of_the_stack_and_stays_in_its_thousand(base: int, offset: int) -> None:
    ports = cluster_ports(base, offset)
    nodes = kafka_nodes(CLUSTER_BROKERS, int(ports["KAFKA_PORT"]), int(ports["KAFKA_CONTROLLER_PORT"]))
    cluster = {port for node in nodes for port in (node.port, node.controller_port)}
    assert len(cluster) == 2 * CLUSTER_BROKERS
    assert not cluster & {int(p) for p in stack_ports(base).values()}
    assert all(base <= port < base + 1000 for port in cluster)


def test_the_cluster_offsets_never_overlap_one_another() -> None:
    spans = [set(range(offset, offset + 2 * CLUSTER_BROKERS)) for offset in CLUSTER_PORT_OFFSETS]
    assert all(not a & b for i, a in enumerate(spans) for b in spans[i + 1 :])


def test_a_quick_run_is_smaller_in_every_phase() -> None:
    full, quick = plan(False), plan(True)
    assert quick.readings < full.readings
    assert quick.steady_s < full.steady_s
    assert quick.steady_rate <= full.steady_rate
    # The bursts are split evenly over the sensors that send them (bench.bridge's 20, bench.e2e's 100).
    for sized in (full, quick):
        assert all(sized.readings % sensors == 0 for sensors in PLAN_SENSORS)


@given(load=LOADS, rate=RATES, utilisation=UTILISATIONS)
def test_instances_needed_is_the_fewest_that_carry_the_load(load: float, rate: float, utilisation: float) -> None:
    n = instances_needed(load, rate, utilisation)
    capacity = rate * utilisation
    assert n >= 1
    assert n * capacity >= load * (1 - 1e-9)
    if n > 1:
        assert (n - 1) * capacity < load


@pytest.mark.parametrize(
    ("load", "rate", "utilisation", "expected"),
    [
        (1000, 500, 0.5, 4),  # exactly four instances' worth: no fifth
        (1001, 500, 0.5, 5),
        (1.1, 1.0, 0.1, 11),  # 1.1 / 0.1 is 11.000000000000002 in floating point
        (0, 500, 0.5, 1),  # never none
        (10_000, 4_926, 1.0, 3),
    ],
)
def test_instances_needed_at_the_boundaries(load: float, rate: float, utilisation: float, expected: int) -> None:
    assert instances_needed(load, rate, utilisation) == expected


@pytest.mark.parametrize(("rate", "utilisation"), [(0, 0.5), (-1, 0.5), (100, 0), (100, 1.5)])
def test_instances_needed_refuses_what_means_nothing(rate: float, utilisation: float) -> None:
    with pytest.raises(ValueError, match="throughput"):
        instances_needed(100, rate, utilisation)


@given(cores=st.floats(min_value=0, max_value=64), wall=st.floats(min_value=0.1, max_value=3600), readings=RATES)
def test_cpu_per_reading_and_cores_needed_are_inverse(cores: float, wall: float, readings: float) -> None:
    ms = cpu_ms_per_reading(cores, wall, readings)
    # At the rate the phase ran, the part needs the cores it used.
    assert cores_needed(readings / wall, ms) == pytest.approx(cores, rel=1e-9, abs=1e-12)


def test_cpu_per_reading_of_nothing_is_unknown_not_infinite() -> None:
    assert math.isnan(cpu_ms_per_reading(0.5, 10, 0))
    assert math.isnan(ratio(10, 0))
    assert ratio(3, 2) == 1.5


def test_the_readme_figure_gives_the_readme_cores() -> None:
    # README, Performance: the bridge used 0.31 of a core at 1,000 readings/s, i.e. 0.31 ms a reading.
    assert cpu_ms_per_reading(0.31, 30, 30_000) == pytest.approx(0.31)
    assert cores_needed(100_000, 0.31) == pytest.approx(31)


def test_capacity_plan_covers_each_fleet_and_part() -> None:
    rows = capacity_plan(
        {"bridge": 0.25, "model service": 0.1, "Mosquitto": 0.05, "Kafka": 0.5},
        {"bridge": 2_000.0, "model service": 5_000.0},
    )
    assert [row["sensors"] for row in rows] == list(FLEETS)
    ten, hundred = rows
    assert ten["readings_per_s"] == 10_000
    # 0.25 ms a reading: 4,000 readings/s a core, 2,000 at half load; 10,000/s need five.
    assert ten["instances_by_cpu"] == {"bridge": 5, "model service": 2, "Mosquitto": 1}
    assert hundred["instances_by_cpu"] == {"bridge": 50, "model service": 20, "Mosquitto": 10}
    assert ten["instances_by_rate"] == {"bridge": 10, "model service": 4}
    # Kafka is no one-core part: cores only.
    assert hundred["cores"] == pytest.approx({"bridge": 25.0, "model service": 10.0, "Mosquitto": 5.0, "Kafka": 50.0})


def test_a_part_with_no_measured_cpu_gets_no_instance_count() -> None:
    (row,) = capacity_plan({"bridge": 0.0}, {}, fleets=(1_000,))
    assert row["instances_by_cpu"] == {}
    assert row["cores"] == {"bridge": 0.0}


def test_each_pair_runs_one_and_two_and_a_full_run_balances_them() -> None:
    assert order(True) == (1, 2)
    full = order(False)
    assert sorted(full) == [1, 1, 2, 2]
    # One, two, two, one: a steady drift in the machine's load shifts both means alike.
    positions = {n: [i for i, m in enumerate(full) if m == n] for n in (1, 2)}
    assert sum(positions[1]) == sum(positions[2])


def test_mean_rate_is_per_instance_count() -> None:
    runs = [{"replicas": 1, "readings_per_s": 100.0}, {"replicas": 2, "readings_per_s": 150.0}]
    runs += [{"replicas": 2, "readings_per_s": 170.0}, {"replicas": 1, "readings_per_s": 80.0}]
    assert mean_rate(runs, 1) == 90.0
    assert mean_rate(runs, 2) == 160.0
    assert math.isnan(mean_rate(runs, 3))


def _kafka_run(brokers: int, rate: float) -> dict[str, Any]:
    parts = ("Mosquitto", "bridge", "Kafka", "model service", "FerretDB")
    return {
        "brokers": brokers,
        "load_average": [1.0, 1.0, 1.0],
        "burst_load_average": [1.0, 1.0, 1.0],
        "steady": {
            "cpu_ms_per_reading": dict.fromkeys(parts, 0.2),
            "cpu_ms_per_reading_above_idle": dict.fromkeys(parts, 0.1),
            "idle_cores": dict.fromkeys(parts, 0.01),
            "cores": {"publishers (simulated sensors)": 0.2},
            "wall_s": 30.0,
            "readings_stored": 15_000,
        },
        "burst": {"ingest_readings_per_s": rate, "end_to_end_readings_per_s": rate * 0.9, "sent": 20_000},
        "check": {
            "exactly_once": True,
            "readings_in_mongodb": 35_000,
            "predictions_in_mongodb": 35_000,
            "published": 35_000,
        },
    }


def test_the_tables_hold_every_phase_and_compare_with_the_mean_of_the_one_instance_phases() -> None:
    bridges = [
        {"replicas": n, "readings_per_s": rate, "load_average": [1.0], "exactly_once": True, "in_mongodb": 1, "sent": 1}
        for n, rate in zip(order(False), (100.0, 150.0, 170.0, 80.0), strict=True)
    ]
    models = [
        {
            "replicas": n,
            "readings_per_s": rate,
            "load_average": [1.0],
            "exactly_once": True,
            "distinct_ids": 1,
            "readings": 1,
        }
        for n, rate in zip(order(False), (1000.0, 1500.0, 1500.0, 1000.0), strict=True)
    ]
    kafka = [_kafka_run(1, 2000.0), _kafka_run(3, 1500.0), _kafka_run(1, 1000.0)]
    capacity = capacity_plan({"bridge": 0.25}, {"bridge": 90.0})
    pairs, cpu, arithmetic = _tables(plan(False), bridges, models, kafka, capacity)
    assert [row[2] for row in pairs.rows[:4]] == pytest.approx([100 / 90, 150 / 90, 170 / 90, 80 / 90])
    # The three-broker burst against the mean of the two one-broker bursts (2,000 and 1,000).
    three = [row for row in pairs.rows if row[0].startswith("whole pipeline, Kafka 3")]
    assert three[0][2] == pytest.approx(1500 / 1500)
    assert len(cpu.headers) == 1 + 3 * len(kafka)
    assert len({*cpu.headers}) == len(cpu.headers)  # "1 broker(s) again" for the second one-broker run
    assert len(arithmetic.rows) == len(FLEETS)
