"""Kafka clients: kafka-python (the design's choice) against confluent-kafka (the services') on one workload.

Both clients, in this one process, one after the other, against the stack's
real Kafka: produce N records the size and shape of a reading on ``analytics``
(``bench.load.payload`` plus the bridge's ``received_at``, keyed by sensor id,
100 sensors, 3 partitions like the pipeline's topics) with ``acks=all`` and
idempotence on, then consume them all from the beginning. Both producers
linger 5 ms (the services' setting), fill batches of up to 1 MB and compress
nothing (the services use lz4; kafka-python would need the lz4 package). Both
consumers take their partitions by ``assign`` from the beginning (no group
join, no committed offsets looked up) and read raw bytes; each is connected,
with the topic's metadata, before its clock starts.

Each phase is timed from its first call (``send``/``produce``; ``assign``) to
the last delivery confirmed (after ``flush``) or the last record read; CPU is
``getrusage(RUSAGE_SELF)`` of this process across the same span (every thread:
kafka-python's sender and fetcher, librdkafka's threads) and the broker's own
CPU from /proc. Every client runs ``--rounds`` times (default 3), interleaved,
each round on fresh topics; the table shows the median of the rounds.

Run alone: ``python -m bench.kafka_clients [--quick] [--records N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import statistics
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import Bench, positive_int, run_standalone
from bench.kafka_phases import BATCH_BYTES, IMPLEMENTATIONS, LINGER_MS, PARTITIONS, Meter, Phase, create_topic
from bench.load import payload
from bench.machine import stack_pid
from bench.report import Table, write_result
from pipeline import contract

logger = logging.getLogger(__name__)

SENSORS = 100
CLIENTS = ("kafka-python", "confluent-kafka")


# --------------------------------------------------------------------------- the workload


def workload(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) records as the bridge writes them to ``analytics``: a reading plus ``received_at``."""
    sensors = [f"{prefix}-s{i}" for i in range(SENSORS)]
    start = datetime.now(UTC)
    records = []
    for n in range(count):
        sensor = sensors[n % SENSORS]
        moment = start + timedelta(milliseconds=n)
        received = contract.iso(moment + timedelta(milliseconds=40)).encode()
        value = payload(sensor, n, moment)[:-1] + b',"received_at":"%s"}' % received
        records.append((sensor.encode(), value))
    return records


# --------------------------------------------------------------------------- the run


def one_round(
    bench: Bench, client: str, records: list[tuple[bytes, bytes]], expected: list[bytes], broker: int | None
) -> dict[str, Phase]:
    """Produce then consume ``records`` on a fresh topic with ``client``; checks every record came back once."""
    bootstrap = bench.env["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"bench-clients-{client}-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    produce, consume = IMPLEMENTATIONS[client]
    produced = produce(bootstrap, topic, records, Meter(broker))
    consumed, values = consume(bootstrap, topic, len(records), Meter(broker))
    warm_up = values.count(b"{}")
    values = [value for value in values if value != b"{}"]
    if warm_up != 1 or sorted(values) != expected:
        raise RuntimeError(
            f"{client}: read {len(values)} records and {warm_up} warm-up record(s) back from {topic}, "
            f"not the {len(records)} produced and 1"
        )
    consumed.records = len(values)
    return {"produce": produced, "consume": consumed}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Both clients, ``rounds`` times each, interleaved; print and write the table; returns the figures."""
    count = getattr(args, "records", 0) or (20_000 if bench.quick else 100_000)
    rounds = getattr(args, "rounds", 0) or 3
    if _version("kafka-python") == "not installed":
        raise RuntimeError("kafka-python is not installed: pip install -r requirements-dev.txt")
    # kafka-python 3.0 warns whenever one step of its I/O loop runs over 100 ms, which its pure-Python record
    # encoding does under this load: the throughput below says the same, once.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    records = workload(bench.namespace("kc").name, count)
    expected = sorted(value for _key, value in records)
    size = statistics.fmean(len(value) for _key, value in records)
    broker = stack_pid(bench.state_dir, b"kafka.Kafka")
    print(
        f"\n[kafka_clients] {count:,} records of {size:.0f} bytes, acks=all, idempotent, "
        f"{rounds} round(s) per client ...",
        flush=True,
    )
    measured: dict[str, list[dict[str, Phase]]] = {client: [] for client in CLIENTS}
    for index in range(rounds):
        order = CLIENTS if index % 2 == 0 else tuple(reversed(CLIENTS))
        for client in order:
            result = one_round(bench, client, records, expected, broker)
            measured[client].append(result)
            print(
                f"[kafka_clients] round {index + 1}, {client}: produce {result['produce'].per_s:,.0f}/s, "
                f"consume {result['consume'].per_s:,.0f}/s",
                flush=True,
            )

    def median(client: str, phase: str, value: Callable[[Phase], float]) -> float:
        return statistics.median(value(r[phase]) for r in measured[client])

    summary: dict[str, dict[str, float]] = {}
    for client in CLIENTS:
        summary[client] = {
            "produce_per_s": median(client, "produce", lambda p: p.per_s),
            "consume_per_s": median(client, "consume", lambda p: p.per_s),
            "produce_cpu_us_per_record": median(client, "produce", lambda p: p.cpu_us),
            "consume_cpu_us_per_record": median(client, "consume", lambda p: p.cpu_us),
            "produce_broker_cpu_us_per_record": median(client, "produce", lambda p: p.broker_cpu_s / p.records * 1e6),
            "consume_broker_cpu_us_per_record": median(client, "consume", lambda p: p.broker_cpu_s / p.records * 1e6),
        }
        # A reading crosses Kafka four times: the bridge produces it and the model service consumes it, the
        # model service produces its prediction and the bridge consumes that (alerts come on top).
        summary[client]["pipeline_cpu_us_per_reading"] = 2 * (
            summary[client]["produce_cpu_us_per_record"] + summary[client]["consume_cpu_us_per_record"]
        )
    slow, fast = summary["kafka-python"], summary["confluent-kafka"]
    ratio = {
        "produce_per_s": fast["produce_per_s"] / slow["produce_per_s"],
        "consume_per_s": fast["consume_per_s"] / slow["consume_per_s"],
        "produce_cpu": slow["produce_cpu_us_per_record"] / fast["produce_cpu_us_per_record"],
        "consume_cpu": slow["consume_cpu_us_per_record"] / fast["consume_cpu_us_per_record"],
    }
    versions = {
        "kafka-python": _version("kafka-python"),
        "confluent-kafka": _version("confluent-kafka"),
    }
    from confluent_kafka import libversion

    versions["librdkafka"] = libversion()[0]
    figures: dict[str, Any] = {
        "records": count,
        "mean_record_bytes": size,
        "partitions": PARTITIONS,
        "linger_ms": LINGER_MS,
        "rounds": rounds,
        "clients": versions,
        "median": summary,
        "confluent_over_kafka_python": ratio,
        "every_round": {
            client: [{k: asdict(v) for k, v in r.items()} for r in runs] for client, runs in measured.items()
        },
        "quick": bench.quick,
    }
    names = {
        "kafka-python": f"kafka-python {versions['kafka-python']}",
        "confluent-kafka": f"confluent-kafka {versions['confluent-kafka']} (librdkafka {versions['librdkafka']})",
    }
    rows: list[list[Any]] = [
        [
            names[client],
            summary[client]["produce_per_s"],
            summary[client]["consume_per_s"],
            summary[client]["produce_cpu_us_per_record"],
            summary[client]["consume_cpu_us_per_record"],
            summary[client]["pipeline_cpu_us_per_reading"],
        ]
        for client in CLIENTS
    ]
    rows.append(
        [
            "confluent-kafka over kafka-python (CPU: kafka-python over confluent-kafka)",
            f"{ratio['produce_per_s']:.1f}x",
            f"{ratio['consume_per_s']:.1f}x",
            f"{ratio['produce_cpu']:.1f}x",
            f"{ratio['consume_cpu']:.1f}x",
            f"{slow['pipeline_cpu_us_per_reading'] / fast['pipeline_cpu_us_per_reading']:.1f}x",
        ]
    )
    table = Table(
        f"Kafka clients: {count:,} records of {size:.0f} bytes (an analytics record), acks=all, idempotent, "
        f"{PARTITIONS} partitions, one broker on loopback; median of {rounds} round(s)",
        [
            "client",
            "produce records/s",
            "consume records/s",
            "produce CPU µs/record",
            "consume CPU µs/record",
            "CPU µs per reading, 4 hops",
        ],
        rows,
        [
            f"both producers linger {LINGER_MS} ms, batch up to {BATCH_BYTES:,} bytes and compress nothing; both "
            "consumers assign the partitions from the beginning (no group join) and read raw bytes",
            "CPU: getrusage of the benchmark's process (all its threads) over each phase; the 4 hops are the "
            "bridge producing a reading, the model service consuming it, producing its prediction and the "
            "bridge consuming that",
            "broker CPU per record (µs), produce / consume: "
            + "; ".join(
                f"{client} {summary[client]['produce_broker_cpu_us_per_record']:.1f} / "
                f"{summary[client]['consume_broker_cpu_us_per_record']:.1f}"
                for client in CLIENTS
            ),
        ],
    )
    round_rows: list[list[Any]] = [
        [client, index + 1, r["produce"].per_s, r["consume"].per_s, r["produce"].cpu_us, r["consume"].cpu_us]
        for client in CLIENTS
        for index, r in enumerate(measured[client])
    ]
    every = Table(
        "Kafka clients: every round (rounds interleaved, each on fresh topics)",
        ["client", "round", "produce records/s", "consume records/s", "produce CPU µs/record", "consume CPU µs/record"],
        round_rows,
    )
    write_result(bench.results_dir, "kafka_clients", figures, [table, every])
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark."""
    parser.add_argument(
        "--records", type=int, default=0, help="records per client and round (default 100,000; --quick 20,000)"
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds per client, interleaved (default 3)")


def main() -> int:
    """``python -m bench.kafka_clients``."""
    return run_standalone("bench.kafka_clients", __doc__.splitlines()[0], run, add_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
