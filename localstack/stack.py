"""The local stack: start, stop and inspect its servers (Mosquitto, Kafka, FerretDB, mongo-express).

Read the package top-down: :mod:`localstack.config` (environment variables ->
:class:`StackConfig`), :mod:`localstack.process` (launching, recording and
signalling a server's process group), :mod:`localstack.servers` (one module per
server: its configuration, command line and readiness probe), and this module's
:class:`Stack`, which starts them in order and stops them again.

The servers run natively, without Docker; ``localstack/install.sh`` installs them.
Layout of the state directory::

    <state_dir>/conf/<server>/   rendered configuration (rewritten at each start)
    <state_dir>/data/<server>/   persistent data (survives stop, kill and restart)
    <state_dir>/logs/<server>.log  the server's stdout and stderr
    <state_dir>/run/<server>.json  pid, process group and start time of the running server

Typical use::

    stack = Stack(StackConfig.from_env())
    stack.start()
    env = stack.service_env()
    ...
    stack.stop()
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from localstack import process
from localstack.config import (
    REQUIRED_SECRETS,
    ConfigError,
    StackConfig,
    StackError,
    StackSettings,
    component_versions,
    sensor_accounts,
)
from localstack.servers import SERVER_CLASSES, SERVER_NAMES, Server
from localstack.servers.kafka import Kafka
from localstack.servers.mosquitto import (
    MOSQUITTO_CONF,
    MOSQUITTO_LISTENERS,
    MOSQUITTO_PATH_SETTINGS,
    mosquitto_plugin_stamp,
    render_mosquitto_conf,
)
from localstack.service_env import service_env

# What other modules, tests and benchmarks import from here.
__all__ = [
    "LOG_TAIL_LINES",
    "MOSQUITTO_CONF",
    "MOSQUITTO_LISTENERS",
    "MOSQUITTO_PATH_SETTINGS",
    "REQUIRED_SECRETS",
    "SERVER_NAMES",
    "ConfigError",
    "Stack",
    "StackConfig",
    "StackError",
    "StackSettings",
    "component_versions",
    "mosquitto_plugin_stamp",
    "render_mosquitto_conf",
    "sensor_accounts",
]

logger = logging.getLogger(__name__)

#: How many log lines a start failure shows.
LOG_TAIL_LINES = 30


class Stack:
    """Starts, stops and inspects the local stack's servers for one :class:`StackConfig`.

    Every method can be called from another process than the one that started the
    servers: the state (pids, process groups, start times) lives in ``state_dir/run``.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        names = [n for n in SERVER_NAMES if n != "ferretdb" or config.uses_ferretdb]
        self.servers: dict[str, Server] = {}
        for name in names:
            if name != "kafka":
                self.servers[name] = SERVER_CLASSES[name](config)
                continue
            # Every Kafka node (KAFKA_BROKERS), and any other one an earlier stack left running, so stop stops it.
            records = (config.state_dir / "run").glob("kafka-*.json")
            running = {int(p.stem[6:]) for p in records if p.stem[6:].isdigit() and process.read_record(p)}
            for node_id in sorted({n.node_id for n in config.kafka_nodes()} | running):
                node = Kafka(config, node_id)
                self.servers[node.name] = node
        # Popen objects of the servers this instance launched, so their exits get reaped.
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    # Public API --------------------------------------------------------------

    def start(self, names: Sequence[str] | None = None) -> list[str]:
        """Start every server (or those of ``names``) not yet running and wait until each answers;
        returns those it launched.

        Servers that already run are reused. If one fails, the servers this call
        launched are stopped again and :class:`StackError` names the failing server
        and shows the end of its log. Named servers are launched together: the
        nodes of a Kafka cluster answer only once a majority of them runs.
        """
        self.config.validate()
        for name in names or ():
            self._check_name(name)
        with self._locked():
            launched: list[str] = []
            try:
                pending = [n for n in self.servers if names is None or n in names]
                self._check_external_mongo()
                self._check_ports_free(pending)
                ready: set[str] = {n for n in SERVER_NAMES if n not in self.servers}
                ready |= {n for n in self.servers if n not in pending and self._running_record(n) is not None}
                for name in pending:
                    for dependency in self.servers[name].after:
                        if dependency not in ready and dependency not in pending:
                            raise StackError(f"{name} needs {dependency} running: start {dependency} first")
                deadlines: dict[str, float] = {}
                # Launch what can start now, then wait for each in order, launching
                # the servers that depend on it as soon as it answers.
                while pending:
                    for name in list(pending):
                        if name not in deadlines and all(dep in ready for dep in self.servers[name].after):
                            if self._ensure_launched(name):
                                launched.append(name)
                            deadlines[name] = time.monotonic() + self.servers[name].ready_timeout
                    waiting = next(n for n in pending if n in deadlines)
                    self._wait_ready(waiting, deadlines[waiting], fresh=waiting in launched)
                    ready.add(waiting)
                    pending.remove(waiting)
            except BaseException:
                for name in reversed(launched):
                    with contextlib.suppress(Exception):
                        self._terminate(name, timeout_s=15.0)
                raise
            return launched

    def stop(self, names: Iterable[str] | None = None, timeout_s: float = 30.0) -> None:
        """Stop ``names`` (every server by default): SIGTERM to each process group, SIGKILL after ``timeout_s``.

        They are all signalled before any is waited for, so their shutdowns overlap: a Kafka node
        stopped only once the others of its cluster were gone would wait for a quorum that no longer
        exists (its broker's controlled shutdown) until SIGKILL. Idempotent.
        """
        chosen = set(self.servers) if names is None else set(names)
        for name in chosen:
            self._check_name(name)
        with self._locked():
            order = [n for n in reversed(self.servers) if n in chosen]
            signalled = [n for n in order if self._signal(n, signal.SIGTERM)]
            deadline = time.monotonic() + timeout_s
            for name in signalled:
                self._wait_gone(name, deadline, escalate=True)
            for name in order:
                self._pid_file(name).unlink(missing_ok=True)

    def start_one(self, name: str) -> bool:
        """Start one server (if not running) and wait until it answers; True if it was launched.

        Its dependencies must already be running (mongo-express needs FerretDB).
        """
        self._check_name(name)
        self.config.validate()
        with self._locked():
            for dependency in self.servers[name].after:
                if dependency in self.servers and self._running_record(dependency) is None:
                    raise StackError(f"{name} needs {dependency} running: start {dependency} first")
            launched = self._ensure_launched(name)
            try:
                self._wait_ready(name, time.monotonic() + self.servers[name].ready_timeout, fresh=launched)
            except BaseException:
                if launched:
                    with contextlib.suppress(Exception):
                        self._terminate(name, timeout_s=15.0)
                raise
            return launched

    def stop_one(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop one server (SIGTERM, SIGKILL after ``timeout_s``). Idempotent."""
        self._check_name(name)
        with self._locked():
            self._terminate(name, timeout_s=timeout_s)

    def kill(self, name: str) -> None:
        """SIGKILL one server's process group, as a crash would, and wait until it is gone."""
        self._check_name(name)
        with self._locked():
            if self._signal(name, signal.SIGKILL):
                self._wait_gone(name, time.monotonic() + 30.0, escalate=False)
            self._pid_file(name).unlink(missing_ok=True)

    def status(self) -> dict[str, dict[str, Any]]:
        """For each server: ``{"running": bool, "pid": int | None, "port": int}``."""
        result: dict[str, dict[str, Any]] = {}
        for name, server in self.servers.items():
            record = self._running_record(name)
            result[name] = {
                "running": record is not None,
                "pid": record["pid"] if record else None,
                "port": server.port,
            }
        return result

    def service_env(self) -> dict[str, str]:
        """What the pipeline's services need to connect (includes credentials: do not log it).

        MQTT_*, KAFKA_BOOTSTRAP_SERVERS (every Kafka node), MONGO_URI, ... (:func:`localstack.service_env.service_env`).
        """
        return service_env(self.config)

    def log_path(self, name: str) -> Path:
        """The log file of one server (its stdout and stderr)."""
        return self.config.logs_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of a server's log, secrets scrubbed."""
        return self._redact(process.tail(self.log_path(name), lines))

    # Internals ---------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if name not in self.servers:
            raise StackError(f"unknown server {name!r}; this stack has: {', '.join(self.servers)}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop between processes sharing a state directory."""
        with process.locked(self.config.state_dir):
            yield

    def _pid_file(self, name: str) -> Path:
        return self.config.state_dir / "run" / f"{name}.json"

    def _running_record(self, name: str) -> dict[str, Any] | None:
        """The pid record of a running server, or None (a stale record is removed)."""
        record = process.read_record(self._pid_file(name))
        if record is None:
            self._reap(name)
        return record

    def _reap(self, name: str) -> int | None:
        """Collect the exit status of a server this instance launched; its exit code if it has ended."""
        launched = self._processes.get(name)
        return None if launched is None else launched.poll()

    def _redact(self, text: str) -> str:
        for value in self.config.secret_values():
            text = text.replace(value, "***")
        return text

    def _failure(self, name: str, what: str) -> StackError:
        log = self.log_path(name)
        tail = self.log_tail(name) or "(empty)"
        return StackError(f"{name} {what}. Last {LOG_TAIL_LINES} lines of {log}:\n{tail}")

    def _check_external_mongo(self) -> None:
        if self.config.uses_ferretdb:
            return
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient[dict[str, Any]] = MongoClient(self.config.mongo_uri, serverSelectionTimeoutMS=10_000)
        # (An external MongoDB's TLS options are in its MONGO_URI.)
        try:
            client.get_database(self.config.mongo_database).command("ping")
        except PyMongoError as exc:
            raise StackError(
                f"MONGO_URI is set, but that MongoDB refused the connection or did not answer: {self._redact(str(exc))}"
            ) from None
        finally:
            client.close()

    def _check_ports_free(self, names: list[str]) -> None:
        """Fail before launching anything if a server of ``names`` that is not running would find its port taken."""
        for name, server in ((n, self.servers[n]) for n in names):
            if self._running_record(name) is None:
                for variable, port in server.ports.items():
                    if process.port_open(port):
                        raise StackError(f"{name}: port {port} ({variable}) is already in use by another process")

    def _ensure_launched(self, name: str) -> bool:
        """Launch ``name`` unless it already runs; True if it was launched."""
        server = self.servers[name]
        record = self._running_record(name)
        if record is not None:
            if record.get("ports") != server.ports:
                raise StackError(
                    f"{name} already runs (pid {record['pid']}) with ports {record.get('ports')}, "
                    f"not {server.ports}; stop it first (`python -m localstack stop`)"
                )
            logger.info("%s already running (pid %d), reusing it", name, record["pid"])
            return False
        for variable, port in server.ports.items():
            if process.port_open(port):
                raise StackError(f"{name}: port {port} ({variable}) is already in use by another process")
        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        self.config.data_dir(name).mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"\n===== localstack: starting {name} at {stamp} =====\n".encode())
            log.flush()
            offset = log.tell()
            try:
                server.prepare(log)
            except StackError as exc:
                raise self._failure(name, f"could not be prepared: {self._redact(str(exc))}") from None
            except subprocess.TimeoutExpired:
                raise self._failure(name, "could not be prepared in time") from None
            launched = process.launch(server.command(), cwd=server.cwd, env=server.env(), log=log)
        self._processes[name] = launched
        process.write_record(self._pid_file(name), launched, ports=server.ports, log_offset=offset)
        logger.info("launched %s (pid %d), log %s", name, launched.pid, log_path)
        return True

    def _wait_ready(self, name: str, deadline: float, *, fresh: bool) -> None:
        """Poll the server's readiness until ``deadline``; StackError with its log if it fails."""
        server = self.servers[name]
        started = time.monotonic()
        record = self._running_record(name)
        marker_seen = not (fresh and server.started_marker)
        delay = 0.2
        while True:
            if record is None or not process.proc_alive(record["pid"], record.get("start_time")):
                code = self._reap(name)
                self._pid_file(name).unlink(missing_ok=True)
                raise self._failure(name, "exited during startup" + (f" with code {code}" if code is not None else ""))
            if not marker_seen:
                marker_seen = process.log_contains(
                    self.log_path(name), record.get("log_offset", 0), server.started_marker or ""
                )
            if marker_seen:
                try:
                    if server.probe():
                        logger.info("%s ready after %.1fs", name, time.monotonic() - started)
                        return
                except StackError as exc:
                    raise self._failure(name, f"is not usable: {self._redact(str(exc))}") from None
            if time.monotonic() > deadline:
                raise self._failure(name, f"did not answer within {server.ready_timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _signal(self, name: str, sig: signal.Signals) -> bool:
        """Send ``sig`` to the server's process group; False if it was not running."""
        record = self._running_record(name)
        if record is None:
            return False
        if not process.signal_group(record, sig):
            return False
        logger.info("sent %s to %s (pid %d)", sig.name, name, record["pid"])
        return True

    def _wait_gone(self, name: str, deadline: float, *, escalate: bool) -> None:
        """Wait until the server's process group is empty; SIGKILL it at ``deadline`` if ``escalate``."""
        path = self._pid_file(name)
        try:
            pgid = json.loads(path.read_text())["pgid"]
        except (FileNotFoundError, ValueError, KeyError):
            return
        process.wait_group_gone(pgid, deadline, escalate=escalate, name=name, poll=lambda: self._reap(name))
        self._processes.pop(name, None)
        path.unlink(missing_ok=True)

    def _terminate(self, name: str, timeout_s: float) -> None:
        if self._signal(name, signal.SIGTERM):
            self._wait_gone(name, time.monotonic() + timeout_s, escalate=True)
        self._pid_file(name).unlink(missing_ok=True)
