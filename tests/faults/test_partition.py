"""A network partition: one bridge cut off from Kafka for 30 s, nothing killed, then healed.

One bridge runs in a network namespace of its own (tests/netns.py): it reaches
Mosquitto, FerretDB and Kafka at the same 127.0.0.1 addresses as outside,
through forwarders, and Kafka's path can be cut silently (every packet dropped
both ways: no reset, no closed socket, as when a cable is pulled or a switch
dies). A second bridge in the same shared subscription runs outside and keeps
its path. Sensors publish throughout; the cut starts once both bridges store
readings and lasts 30 s. Afterwards every reading and every prediction must be
in MongoDB exactly once, every sensor must have had every reading acknowledged,
every Kafka consumer group must have committed everything, and Kafka must hold
no copy of any reading id (the README allows copies only after a process is
killed, and nothing was).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack.namespace import free_port
from localstack.services import server_env
from tests import netns
from tests.conftest import Pipeline, wait_for
from tests.faults.test_faults import acknowledged_and_stored, assert_stored_once
from tests.helpers import ARTIFACTS, metric, uncommitted

# One pytest-xdist worker runs the whole module: its namespaces share one subnet.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("netns")]


@pytest.fixture(autouse=True)
def _namespaces_can_be_made() -> None:
    # Never skipped: CI runs as root with iproute2, and a partition test that does not run proves nothing.
    assert netns.available() is None, f"network namespaces: {netns.available()}"


SENSORS = 4
PER_SENSOR = 2_000
INTERVAL_S = "0.02"  # 4 sensors x ~50/s: about 40 s of readings, through the whole cut
CUT_S = 30.0


def kafka_ready(port: str) -> bool | None:
    """The bridge's /readyz Kafka check (None when /readyz does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(json.load(response)["checks"]["kafka"])
    except urllib.error.HTTPError as error:
        return bool(json.load(error)["checks"]["kafka"])
    except OSError:
        return None


@pytest.fixture
def cut_off(pipeline: Pipeline) -> Iterator[netns.Namespace]:
    """A namespace whose Kafka path can be cut; healed, its bridge stopped and everything removed after the test."""
    env = pipeline.stack.env
    namespace = netns.Namespace(
        ports=[int(env["MQTT_PORT"]), int(env["MONGO_PORT"])],
        cut_ports=[int(env["KAFKA_PORT"])],
        log_dir=ARTIFACTS / "logs" / "test_partition",
    )
    try:
        yield namespace
    finally:
        if namespace.is_cut:
            namespace.heal()
        for process in pipeline.processes:
            if isinstance(process, netns.NamespacedService):
                process.stop()
        namespace.close()


def _echo_server() -> int:
    """A TCP echo server on the host's 127.0.0.1 (a daemon thread); its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(4096):
                connection.sendall(data)

    def accept() -> None:
        while True:
            connection, _ = listener.accept()
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(listener.getsockname()[1])


#: Run inside the namespace: one line per probe, "<what> <answer>".
PROBE = """
import socket, sys
port, name = int(sys.argv[1]), sys.argv[2]
held = socket.create_connection(("127.0.0.1", port), timeout=3)
held.sendall(b"x"); print(name, "before", held.recv(10).decode(), flush=True)
sys.stdin.readline()  # the test cuts now
for what, conn in (("held", held), ("new", socket.create_connection(("127.0.0.1", port), timeout=3))):
    conn.settimeout(3)
    try:
        conn.sendall(b"y"); print(name, what, repr(conn.recv(10)), flush=True)
    except OSError as error:
        print(name, what, type(error).__name__, flush=True)
"""


def test_the_cut_drops_packets_silently_on_the_cut_path_only_and_heals(tmp_path: Path) -> None:
    """The fault itself: while cut, a connection on the cut path gets no answer and no reset, a new one
    no answer either, and the other path works; once healed, a new connection on the cut path works."""
    kept, cut = _echo_server(), _echo_server()
    namespace = netns.Namespace(ports=[kept], cut_ports=[cut], log_dir=tmp_path)
    try:
        namespace.open()
        probes = {
            port: subprocess.Popen(
                ["ip", "netns", "exec", namespace.name, sys.executable, "-c", PROBE, str(port), name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for port, name in ((kept, "kept"), (cut, "cut"))
        }
        for probe in probes.values():
            assert probe.stdout is not None
            assert probe.stdout.readline().split()[1:] == ["before", "x"]
        namespace.cut()
        answers = {}
        for probe in probes.values():
            out, _ = probe.communicate("\n", timeout=30)
            answers.update({" ".join(line.split()[:2]): line.split()[2] for line in out.splitlines()})
        assert answers == {
            "kept held": "b'y'",
            "kept new": "b'y'",
            "cut held": "TimeoutError",  # not b'' (closed) nor ConnectionResetError
            "cut new": "TimeoutError",
        }
        namespace.heal()
        heal = subprocess.run(
            ["ip", "netns", "exec", namespace.name, sys.executable, "-c", PROBE, str(cut), "cut"],
            input="\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert heal.stdout.split("\n")[0].split()[1:] == ["before", "x"], heal.stdout + heal.stderr
    finally:
        namespace.close()
    assert namespace.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def start_bridge_inside(pipeline: Pipeline, namespace: netns.Namespace) -> netns.NamespacedService:
    """Replica 1 of the bridge, as Pipeline.start_server makes it, run inside ``namespace``; ready."""
    health = free_port()
    namespace.reverse_ports.append(health)
    namespace.open()
    env = server_env(
        pipeline.stack.env,
        **pipeline.topics,
        MQTT_CLIENT_ID=f"{pipeline.name}-bridge-1",
        MQTT_SHARE_GROUP=f"{pipeline.name}-bridge",
        KAFKA_RESULTS_GROUP_ID=f"{pipeline.name}-results",
        LOG_LEVEL="DEBUG" if os.environ.get("PIPELINE_TEST_DEBUG") else "INFO",
        HEALTH_PORT=str(health),
    )
    bridge = netns.NamespacedService(
        "server-1", "Server", env, pipeline.log_dir / "server-1.log", namespace=namespace.name
    )
    bridge.start()
    pipeline.processes.append(bridge)
    pipeline.wait_ready(bridge)
    return bridge


def test_a_bridge_cut_off_from_kafka_for_30_s_loses_nothing_and_doubles_nothing(
    pipeline: Pipeline, cut_off: netns.Namespace
) -> None:
    inside = start_bridge_inside(pipeline, cut_off)
    outside = pipeline.start_server(replica=2)
    pipeline.start_model()
    sensors = [
        pipeline.start_sensor(n, SENSOR_MAX_READINGS=str(PER_SENSOR), SENSOR_INTERVAL_S=INTERVAL_S, SENSOR_LOOP="false")
        for n in range(1, SENSORS + 1)
    ]
    stored, forwarded = "pipeline_readings_stored_total", "pipeline_readings_forwarded_total"
    inside_port, outside_port = inside.env["HEALTH_PORT"], outside.env["HEALTH_PORT"]
    wait_for(
        lambda: metric(inside_port, forwarded) >= 100 and metric(outside_port, forwarded) >= 100,
        60,
        "both bridges to store and forward readings",
        pipeline.logs,
    )
    log_before = inside.log_path.stat().st_size
    assert all(s.alive for s in sensors), "the stream ended before the cut; raise PER_SENSOR"

    cut_off.cut()
    cut_at = time.monotonic()
    outside_at_cut = metric(outside_port, forwarded)
    inside_at_cut = metric(inside_port, "pipeline_readings_received_total")
    cut_clock = time.strftime("%H:%M:%S")
    timeline: list[tuple[float, bool | None]] = []
    forwarded_inside: list[float] = []
    while time.monotonic() - cut_at < CUT_S:  # the fault lasts CUT_S; meanwhile record what /readyz says
        timeline.append((round(time.monotonic() - cut_at, 1), kafka_ready(inside_port)))
        if time.monotonic() - cut_at > 5:  # what Kafka confirmed just before the cut has been counted
            forwarded_inside.append(metric(inside_port, forwarded))
        time.sleep(0.5)
    outside_during_cut = metric(outside_port, forwarded) - outside_at_cut
    inside_during_cut = metric(inside_port, "pipeline_readings_received_total") - inside_at_cut
    cut_off.heal()
    healed_at = time.monotonic()
    heal_clock = time.strftime("%H:%M:%S")
    assert forwarded_inside and min(forwarded_inside) == max(forwarded_inside), (
        f"the cut-off bridge kept getting Kafka's confirmations ({forwarded_inside}): the cut did not cut"
    )

    def kafka_back() -> bool:
        timeline.append((round(time.monotonic() - cut_at, 1), kafka_ready(inside_port)))
        return bool(timeline[-1][1])

    wait_for(kafka_back, 120, "the cut-off bridge to see Kafka again", pipeline.logs)
    ready_again_s = time.monotonic() - healed_at

    acknowledged_and_stored(pipeline, sensors, PER_SENSOR)
    ids = [pipeline.sensor_id(n) for n in range(1, SENSORS + 1)]
    caught_up_s = time.monotonic() - healed_at
    env = pipeline.stack.env
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]

    def nothing_pending() -> bool:
        groups = [
            (f"{pipeline.name}-models", pipeline.topics["KAFKA_TOPIC_READINGS"]),
            (f"{pipeline.name}-results", pipeline.topics["KAFKA_TOPIC_RESULTS"]),
        ]
        held = sum(metric(p, "pipeline_bridge_inbox") for p in (inside_port, outside_port))
        return held == 0 and all(uncommitted(bootstrap, group, topic) == 0 for group, topic in groups)

    wait_for(nothing_pending, 60, "every consumer group to commit and each bridge's inbox to empty", pipeline.logs)

    on_analytics, on_alerts = assert_stored_once(pipeline, ids, PER_SENSOR)
    for topic, seen in (("analytics", on_analytics), ("alerts", on_alerts)):
        doubled = {i: n for i, n in seen.items() if n > 1}
        assert not doubled, f"{len(doubled)} reading ids have copies on {topic} after a partition (nothing killed)"

    # The inside bridge stored its share before and after the cut, the outside one kept forwarding during it.
    assert outside_during_cut > 0, "the bridge outside the namespace stopped while the other was cut off"
    assert metric(inside_port, stored) > 0
    assert inside.alive and outside.alive
    during = inside.log_path.read_bytes()[log_before:].decode(errors="replace")
    report = Path(pipeline.log_dir / "partition-report.txt")
    report.write_text(
        f"cut {CUT_S:.0f}s from {cut_clock} to {heal_clock} (local time); "
        f"outside bridge forwarded {outside_during_cut:.0f} readings during the cut, "
        f"the cut-off one received {inside_during_cut:.0f}; its /readyz saw Kafka {ready_again_s:.1f}s after "
        f"the heal; every reading and prediction stored {caught_up_s:.1f}s after the heal\n"
        f"cut-off bridge's /readyz Kafka check (s after the cut: answer, None = no answer in 2 s): "
        f"{[point for i, point in enumerate(timeline) if i == 0 or point[1] != timeline[i - 1][1]]}\n"
        f"analytics copies: {Counter(on_analytics.values())}; alerts copies: {Counter(on_alerts.values())}\n"
        f"--- inside bridge's log from the cut on ---\n{during}"
    )
