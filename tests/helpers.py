"""Test clients for the real servers: publish over MQTT as a sensor, read a Kafka topic."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pymongo import monitoring

from localstack.services import server_env
from pipeline import contract
from pipeline.kafka import security_config
from pipeline.settings import KafkaSettings

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
#: Where the modules that start a further stack put it, above their worker's port base
#: (tests/integration/test_tls.py, tests/faults/test_cluster.py; kept apart by tests/unit/test_test_workers.py).
TLS_STACK_OFFSET, CLUSTER_STACK_OFFSET, TLS_CLUSTER_STACK_OFFSET = 500, 100, 300


def kafka_client(stack_env: Mapping[str, str]) -> dict[str, Any]:
    """How a test reaches a stack's Kafka: as the bridge does (its brokers, and with TLS its CA and login)."""
    env = server_env(stack_env)
    settings = KafkaSettings(**{k: v for k, v in env.items() if k in KafkaSettings.model_fields})  # type: ignore[arg-type]
    return security_config(settings)


def _client(kafka: str | Mapping[str, Any]) -> dict[str, Any]:
    """A client configuration from bootstrap servers, or from :func:`kafka_client`'s."""
    return {"bootstrap.servers": kafka} if isinstance(kafka, str) else dict(kafka)


def publish(
    env: Mapping[str, str],
    client_id: str,
    topic: str,
    payloads: Sequence[bytes],
    username_key: str = "MQTT_SENSOR_USERNAME",
    password_key: str = "MQTT_SENSOR_PASSWORD",
    login: tuple[str, str] | None = None,
) -> list[int]:
    """Publish ``payloads`` at QoS 1, in order; returns the broker's PUBACK reason codes.

    Logs in as ``login`` (user, password) if given, else with the users named by
    the two keys of ``env``. 0 is success; 16 ("no matching subscribers") means
    nobody got it; 135 is "not authorized".
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(*(login or (env[username_key], env[password_key])))
    client.max_inflight_messages_set(100)
    codes: dict[int, int] = {}
    client.on_publish = lambda _c, _u, mid, rc, _p: codes.__setitem__(mid, rc.value)
    client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]))
    client.loop_start()
    try:
        mids = [client.publish(topic, payload, qos=1).mid for payload in payloads]
        deadline = time.monotonic() + 30 + len(payloads) / 500  # at least 500/s on a busy machine
        while len(codes) < len(mids) and time.monotonic() < deadline:
            time.sleep(0.02)
        return [codes.get(mid, -1) for mid in mids]
    finally:
        client.disconnect()
        client.loop_stop()


def reading(sensor: str, value: float, **extra: Any) -> contract.Reading:
    """A fresh valid reading for ``sensor`` at the current time."""
    from datetime import UTC, datetime

    return contract.Reading(id=uuid.uuid4().hex, sensor=sensor, ts=datetime.now(UTC), v=value, **extra)


def payload(item: contract.Reading) -> bytes:
    """The bytes a sensor publishes for a reading."""
    return contract.dumps(item.to_message())


def consume(
    kafka: str | Mapping[str, Any], topic: str, quiet_s: float = 3.0, timeout_s: float = 60.0, want: int = 0
) -> list[Any]:
    """Every record on ``topic`` from the start: returns when ``want`` are read and the topic stays quiet.

    ``kafka``: bootstrap servers, or a client configuration (:func:`kafka_client`).
    """
    consumer = Consumer(
        {
            **_client(kafka),
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    records.append(message)
                    last_new = time.monotonic()
            if len(records) >= want and time.monotonic() - last_new > quiet_s:
                break
    finally:
        consumer.close()
    return records


def uncommitted(kafka: str | Mapping[str, Any], group: str, topic: str) -> int:
    """Records on ``topic`` past the offsets ``group`` has committed (all of them if it committed none)."""
    consumer = Consumer({**_client(kafka), "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [
            TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        behind = 0
        for committed in consumer.committed(partitions, timeout=10):
            low, high = consumer.get_watermark_offsets(committed, timeout=10)
            behind += high - (committed.offset if committed.offset >= 0 else low)
        return behind
    finally:
        consumer.close()


def chromium(url: str, *args: str) -> str:
    """Run headless Chromium on ``url`` (loopback only) for 10 s of page time; returns its stdout."""
    # One profile per pytest-xdist worker: Chromium locks a profile to one process.
    profile = ARTIFACTS / f"chromium-profile-{os.environ.get('PYTEST_XDIST_WORKER', 'gw0')}"
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            # Page time runs ahead while no request is pending: a few polls of the API.
            "--virtual-time-budget=10000",
            *args,
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result.stdout


def connack(
    env: dict[str, str],
    client_id: str,
    login: tuple[str, str] | None,
    *,
    clean_start: bool = True,
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
    auth_method: str | None = None,
    websockets: bool = False,
) -> int:
    """Connect once (session expiry 0: nothing stays behind) and leave; the CONNACK reason code, -1 if none."""
    transport: Literal["tcp", "websockets"] = "websockets" if websockets else "tcp"
    port = int(env["MQTT_WS_PORT"] if websockets else env["MQTT_PORT"])
    if protocol == mqtt.MQTTv5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, transport=transport)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        if auth_method:
            properties.AuthenticationMethod = auth_method
        connect_args: dict[str, Any] = {"clean_start": clean_start, "properties": properties}
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=clean_start,
            transport=transport,
        )
        connect_args = {}
    if login is not None:
        client.username_pw_set(*login)
    codes: list[int] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
    client.connect(env["MQTT_HOST"], port, **connect_args)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not codes and time.monotonic() < deadline:
            time.sleep(0.01)
        return codes[0] if codes else -1
    finally:
        client.disconnect()
        client.loop_stop()


# --- Prometheus (Debian's package, from localstack/install.sh) ------------------------------


def get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET; HTTP errors are answers too (503 is one)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def prometheus(
    targets: Mapping[str, str],
    workdir: Path,
    log: Path,
    *,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
) -> Iterator[str]:
    """Debian's Prometheus scraping ``{job: "host:port"}`` every second; yields its base URL, stopped after.

    ``rule_files`` are evaluated every second and their alerts sent to ``alertmanagers``
    (``"host:port"``). tests/e2e/test_alerting.py uses it; test_monitoring.py has the
    same helper without these two arguments, and can import this one instead.
    """
    from localstack.namespace import free_port
    from tests.conftest import wait_for  # conftest imports this module

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus binary: run `bash localstack/install.sh` (Debian's prometheus package)")
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                return get(f"{base}/-/ready", 2)[0] == 200
            except OSError:
                return False

        wait_for(ready, 60, "prometheus to be ready")
        yield base
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def api(base: str, path: str, **params: str) -> Any:
    """The ``data`` of a Prometheus HTTP API answer; fails on an error status."""
    status, body = get(f"{base}{path}?{urllib.parse.urlencode(params)}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", f"{path} {params}: {status} {answer}"
    return answer["data"]


class CommandLog(monitoring.CommandListener):
    """Every command a MongoDB client sends (those named in ``names``, or all), as sent.

    Pass it to ``MongoClient(event_listeners=[...])``, or ``monitoring.register`` it
    before the client is made.
    """

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.names or event.command_name in self.names:
            self.commands.append({k: v for k, v in event.command.items() if k not in ("lsid", "$db", "$clusterTime")})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def on(self, collection: str) -> list[str]:
        """The names of the commands sent to ``collection``, in order."""
        return [name for c in self.commands for name, target in list(c.items())[:1] if target == collection]


def mosquitto_directives(text: str) -> list[tuple[str, str]]:
    """(setting, value) of every line of a mosquitto.conf that is not blank or a comment, in order."""
    result = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            result.append((key, value.strip()))
    return result


def asgi(app: Any, path: str, login: tuple[str, str] | None = ("u", "p")) -> tuple[int, dict[str, str], bytes]:
    """One GET through the ASGI app (no server, no HTTP client): status, headers, body."""
    headers = [(b"host", b"dashboard")]
    if login is not None:
        headers.append((b"authorization", b"Basic " + base64.b64encode(":".join(login).encode())))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("dashboard", 80),
    }
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    asyncio.run(app(scope, receive, send))
    found = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], found, b"".join(chunks)


def plan_scans(plan: dict[str, Any]) -> list[str]:
    """The full scans in an ``explain`` answer: FerretDB's SQLite plan lines (``SCAN <table>``), or every
    ``COLLSCAN`` stage anywhere in MongoDB's plan tree.

    MongoDB's classic engine nests stages in ``inputStage``/``inputStages``; the slot-based engine (the
    default from 8.0, which Compose runs) wraps the same tree in ``winningPlan.queryPlan``; a sharded
    collection lists a plan per shard. So the whole answer is walked, not one chain.
    """
    sqlite = [
        line
        for line in plan.get("queryPlanner", {}).get("Plan", [])
        if isinstance(line, str) and line.partition("detail=")[2].startswith("SCAN ")
    ]
    mongo: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("stage") == "COLLSCAN":
                mongo.append(f"COLLSCAN {node.get('filter', {})}")
            for key, value in node.items():
                if key != "rejectedPlans":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(plan.get("queryPlanner", {}))
    return sqlite + mongo


def metric_once_serving(port: str | int, name: str) -> float:
    """:func:`metric`, or 0 while the service does not answer yet (just started)."""
    try:
        return metric(port, name)
    except OSError:
        return 0.0


def metric(port: str | int, name: str, labels: dict[str, str] | None = None) -> float:
    """The sample ``name`` with (at least) ``labels`` on a service's /metrics, 0 when it is absent.

    Parsed by prometheus_client's own text parser, so a label value with a comma or a quote reads right.
    """
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = labels or {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                return float(sample.value)
    return 0.0
