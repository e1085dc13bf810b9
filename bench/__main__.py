"""``python -m bench``: every benchmark on one throwaway local stack (what ``make bench`` runs).

Starts Mosquitto, Kafka, FerretDB and mongo-express on their own ports (port
base 25000) in a temporary state directory with random secrets, runs the
benchmarks one after the other, each in its own topics and ids, writes
``bench/results/<name>.json`` and ``bench/results/latest.md``, and stops
everything it started. ``--quick`` is a short run (about 3 minutes);
the default takes about 70 minutes on 2 quiet cores, the parts' own times added up (the memory
soak 20, the month of storage 16, the backtest 15, the scale-out pairs 10, the peer 4, the rest
about 5); it has not been timed as a whole since the peer and scale-out benchmarks joined it.
"""

from __future__ import annotations

import argparse
import time

from bench import backtest, bridge, e2e, kafka_clients, outage, peer, scale, scoring, storage
from bench.common import add_common_arguments, bench_stack, setup_logging

BENCHMARKS = {
    "scoring": scoring.run,
    "bridge": bridge.run,
    "peer": peer.run,
    "kafka_clients": kafka_clients.run,
    "outage": outage.run,
    "e2e": e2e.run,
    "storage": storage.run,
    "backtest": backtest.run,
    "scale": scale.run,
}


def main() -> int:
    """Parse the options, start the stack, run the chosen benchmarks, stop the stack."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run every benchmark on one throwaway local stack (what `make bench` runs)."
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run (default: all: {','.join(BENCHMARKS)}; e2e includes memory)",
    )
    bridge.add_arguments(parser)
    e2e.add_arguments(parser)
    outage.add_arguments(parser)
    kafka_clients.add_arguments(parser)
    storage.add_arguments(parser)
    backtest.add_arguments(parser)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    setup_logging()
    started = time.monotonic()
    with bench_stack(args) as bench:
        for name in chosen:
            BENCHMARKS[name](bench, args)
    print(f"\ndone in {(time.monotonic() - started) / 60:.1f} min; results in {args.results_dir}/ (latest.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
