"""What every benchmark starts from: its options, a throwaway stack, and how a module runs on its own.

A benchmark gets a :class:`Bench` (the running stack plus its options), starts
the services it needs in a :class:`bench.namespace.Namespace` of its own (topics,
client ids, groups and sensor ids nobody else uses), reads them with
:mod:`bench.probes` and :mod:`bench.machine`, and hands its figures to
:func:`bench.report.write_result`, which writes ``bench/results/<name>.json`` and
rebuilds ``bench/results/latest.md`` from every result there.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.namespace import Namespace
from bench.report import RESULTS_DIR

#: Ports of the benchmarks' stack: away from the defaults and from the tests' (21000).
DEFAULT_PORT_BASE = 25000


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
    parser.add_argument(
        "--service-env",
        type=service_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service the benchmark starts, over the benchmark's own (repeatable; recorded "
        "with the results), e.g. --service-env SERVER_BATCH_WAIT_MS=20",
    )


def positive_int(text: str) -> int:
    """A count option (rounds, processes): a whole number of at least 1, else the option is refused."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def service_setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``--service-env``: NAME an environment variable's name, VALUE anything (even empty)."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier() or not name.isascii():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME a variable's name, got {text!r}")
    return name, value


@dataclass
class Bench:
    """A running throwaway stack and the options of this invocation."""

    env: dict[str, str]
    quick: bool
    results_dir: Path
    log_dir: Path
    state_dir: Path
    #: ``--service-env``: set for every service a namespace starts, over the benchmark's own settings.
    service_env: dict[str, str] = field(default_factory=dict)

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
        service_env = dict(getattr(args, "service_env", []))
        with report.recording_service_env(service_env):
            yield Bench(env, args.quick, args.results_dir, log_dir, state_dir, service_env)


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
