"""Command line of the local stack, run from the repo root.

    python -m localstack start [SERVER ...]   start all servers (or the named ones) and wait until they answer
    python -m localstack stop [SERVER ...]    stop all servers (or the named ones)
    python -m localstack status               show which servers run, their pids and ports
    python -m localstack logs [SERVER] [-n N] show the end of the servers' logs
    python -m localstack run [--sensors N] [--bridges N] [--models N]
                                              start the servers, then run the pipeline's services until Ctrl+C
                                              (KAFKA_BROKERS=3 in the environment: three Kafka nodes)
    python -m localstack certs DIR            write a test CA and a certificate for every server into DIR
                                              (then STACK_TLS_DIR=DIR switches TLS on; Compose reads ./tls)

Configuration comes from the environment (see localstack/config.py and .env.example);
`make run`, `make stop` and `make status` load .env first.
"""

from __future__ import annotations

import argparse
import logging
import sys

from localstack.stack import SERVER_NAMES, ConfigError, Stack, StackConfig, StackError


def _print_status(stack: Stack) -> bool:
    """Print one line per server; True if all run."""
    status = stack.status()
    for name, info in status.items():
        state = f"running  pid {info['pid']}" if info["running"] else "stopped"
        print(f"{name:<14} {state:<20} port {info['port']}")
    if not stack.config.uses_ferretdb:
        print(f"{'ferretdb':<14} {'not used':<20} MONGO_URI points at an external MongoDB")
    return all(info["running"] for info in status.values())


def _cmd_start(stack: Stack, names: list[str]) -> int:
    stack.start(names or None)
    _print_status(stack)
    config = stack.config
    print(f"\nmongo-express: http://127.0.0.1:{config.mongo_express_port}/ (user {config.mongo_express_username})")
    print(f"logs: {config.logs_dir}")
    return 0


def _cmd_stop(stack: Stack, names: list[str]) -> int:
    stack.stop(names or None)
    _print_status(stack)
    return 0


def _replicas(text: str) -> int:
    """A replica count: 1 to 9 (each replica takes health ports of its own)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of replicas from 1 to 9")
    return int(text)


def _cmd_logs(stack: Stack, name: str | None, lines: int) -> int:
    if name is not None and name not in stack.servers:
        raise StackError(f"unknown server {name!r}; this stack has: {', '.join(stack.servers)}")
    names = [name] if name else list(stack.servers)
    for each in names:
        path = stack.log_path(each)
        if len(names) > 1:
            print(f"===== {each} ({path}) =====")
        print(stack.log_tail(each, lines) if path.exists() else f"(no log yet at {path})")
    return 0


def _cmd_run(stack: Stack, sensors: int, bridges: int = 1, models: int = 1) -> int:
    from localstack.services import run_pipeline

    launched = stack.start()
    _print_status(stack)
    log_dir = stack.config.logs_dir / "services"
    print(
        f"\nrunning the pipeline with {sensors} sensor(s), {bridges} bridge(s), {models} model service(s) and "
        f"{stack.config.kafka_brokers} Kafka broker(s); logs in {log_dir}; Ctrl+C stops it"
    )
    try:
        code = run_pipeline(stack.service_env(), log_dir, sensors, bridges=bridges, models=models)
    finally:
        # Leave servers that were already running (another user of this stack) alone.
        stack.stop(launched)
    if not launched:
        print("the servers were already running and are left running (`make stop` stops them)")
    return code


def _cmd_certs(directory: str) -> int:
    from pathlib import Path

    from localstack.tls import make_certificates

    ca = make_certificates(Path(directory))
    print(f"wrote a test CA and a server certificate into {ca.parent}; clients trust {ca}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m localstack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start the servers and wait until they answer")
    start.add_argument("servers", nargs="*", metavar="SERVER", help=f"one of {', '.join(SERVER_NAMES)}")
    stop = commands.add_parser("stop", help="stop the servers")
    stop.add_argument("servers", nargs="*", metavar="SERVER", help=f"one of {', '.join(SERVER_NAMES)}")
    commands.add_parser("status", help="show which servers run")
    logs = commands.add_parser("logs", help="show the end of the servers' logs")
    logs.add_argument("server", nargs="?", metavar="SERVER", help=f"one of {', '.join(SERVER_NAMES)}, kafka-2 ...")
    logs.add_argument("-n", "--lines", type=int, default=40, help="lines per server (default 40)")
    run = commands.add_parser("run", help="start the servers and run the pipeline's services until Ctrl+C")
    run.add_argument("--sensors", type=int, default=3, help="how many sensors to run (default 3)")
    run.add_argument(
        "--bridges", type=_replicas, default=1, help="bridge replicas: one shared subscription (default 1)"
    )
    run.add_argument("--models", type=_replicas, default=1, help="model-service replicas: one group (default 1)")
    certs = commands.add_parser("certs", help="write a test CA and a server certificate (for STACK_TLS_DIR)")
    certs.add_argument("directory", help="the folder to write them to (Compose: tls)")
    args = parser.parse_args(argv)
    if args.command == "certs":
        try:
            return _cmd_certs(args.directory)
        except StackError as exc:
            print(f"localstack: {exc}", file=sys.stderr)
            return 1

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # Only start and run need the passwords; stop, status and logs work without .env.
    needs_secrets = args.command in ("start", "run")
    try:
        stack = Stack(StackConfig.from_env(require_secrets=needs_secrets))
        if args.command == "start":
            return _cmd_start(stack, args.servers)
        if args.command == "stop":
            return _cmd_stop(stack, args.servers)
        if args.command == "status":
            _print_status(stack)
            return 0
        if args.command == "logs":
            return _cmd_logs(stack, args.server, args.lines)
        return _cmd_run(stack, args.sensors, args.bridges, args.models)
    except (ConfigError, StackError) as exc:
        print(f"localstack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("localstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
