"""TLS on every hop, on the real servers: the local stack with STACK_TLS_DIR and certificates made here.

Every port of the stack is probed: a TLS handshake checked against the test CA
succeeds, and the plain-text opening of its protocol (an MQTT CONNECT, a Kafka
ApiVersions request, a MongoDB hello, an HTTP GET) gets no answer in that
protocol. Kafka refuses clients without a SCRAM login, its controller clients
without a certificate. The pipeline runs end to end over it, and a service
given a CA that did not sign a server's certificate stops at start, naming
the variable.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import struct
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from localstack.namespace import free_port
from localstack.services import ServiceProcess, dashboard_env, model_env, server_env, trainer_env
from localstack.testing import throwaway_stack
from localstack.tls import make_certificates
from pipeline import contract
from tests.conftest import ARTIFACTS, Pipeline, RunningStack, wait_for
from tests.helpers import TLS_STACK_OFFSET

# One pytest-xdist worker runs the whole module: its TLS stack is started once for the module.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tls")]

#: This module's stack runs beside the session's plain one, TLS_STACK_OFFSET ports above.
PORT_BASE = int(os.environ.get("PIPELINE_TEST_PORT_BASE", "21000")) + TLS_STACK_OFFSET


class TlsStack(RunningStack):
    """The running TLS stack; its MongoDB client checks the server's certificate."""

    @property
    def ca(self) -> Path:
        return Path(self.env["MONGO_TLS_CA_FILE"])

    def mongo(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(
            self.env["MONGO_URI"], tz_aware=True, serverSelectionTimeoutMS=10_000, tls=True, tlsCAFile=str(self.ca)
        )

    def port(self, name: str) -> int:
        return int(self.env[name])


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    make_certificates(folder)
    return folder


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed none of the stack's certificates."""
    return make_certificates(tmp_path_factory.mktemp("other-tls"))


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, certificates: Path) -> Iterator[TlsStack]:
    state_dir = tmp_path_factory.mktemp("tls-stack")
    try:
        with throwaway_stack(state_dir, PORT_BASE, certificates) as (handle, env):
            yield TlsStack(handle, env, state_dir)
    finally:
        logs = ARTIFACTS / "logs" / "tls-stack"
        shutil.rmtree(logs, ignore_errors=True)
        if (state_dir / "logs").exists():
            shutil.copytree(state_dir / "logs", logs)


@pytest.fixture
def tls_pipeline(tls_stack: TlsStack, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """An isolated pipeline namespace on the TLS stack; its processes are stopped after the test."""
    log_dir = ARTIFACTS / "logs" / request.node.name
    shutil.rmtree(log_dir, ignore_errors=True)
    pipeline = Pipeline(tls_stack, f"t{uuid.uuid4().hex[:8]}", log_dir)
    yield pipeline
    codes = pipeline.stop_all()
    crashed = {n: c for n, c in codes.items() if c not in (0, None)}
    assert not crashed, f"services did not stop cleanly: {crashed}\n{pipeline.logs()}"


# --- what a plain-text client gets ----------------------------------------------------------


def exchange(port: int, request: bytes, timeout_s: float = 3.0) -> bytes:
    """Send ``request`` in the clear and return whatever comes back before the server closes or goes quiet."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        try:
            while len(received) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def mqtt_connect() -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no login."""
    client_id = b"plain-probe"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def kafka_api_versions(correlation_id: int = 7) -> bytes:
    """A Kafka ApiVersions v0 request (api key 18)."""
    client = b"plain-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client)) + client
    return struct.pack(">i", len(body)) + body


def mongo_hello(request_id: int = 7) -> bytes:
    """A MongoDB OP_MSG carrying {hello: 1}."""
    document = bson.encode({"hello": 1, "$db": "admin"})
    body = struct.pack("<I", 0) + b"\x00" + document
    return struct.pack("<iiii", 16 + len(body), request_id, 0, 2013) + body


HTTP_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
WEBSOCKET_UPGRADE = (
    b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
)


def is_connack(answer: bytes) -> bool:
    return len(answer) >= 4 and answer[0] == 0x20


def is_kafka_response(answer: bytes, correlation_id: int = 7) -> bool:
    return len(answer) >= 8 and struct.unpack(">i", answer[4:8])[0] == correlation_id


def is_mongo_reply(answer: bytes, request_id: int = 7) -> bool:
    return len(answer) >= 16 and struct.unpack("<i", answer[8:12])[0] == request_id


def is_http_answer(answer: bytes) -> bool:
    return answer.startswith(b"HTTP/")


#: Every port of the stack -> the opening of its protocol in the clear, and how an answer in it looks.
PLAIN_PROBES = {
    "MQTT_PORT": (mqtt_connect(), is_connack),
    "MQTT_WS_PORT": (WEBSOCKET_UPGRADE, is_http_answer),
    "KAFKA_PORT": (kafka_api_versions(), is_kafka_response),
    "KAFKA_CONTROLLER_PORT": (kafka_api_versions(), is_kafka_response),
    "MONGO_PORT": (mongo_hello(), is_mongo_reply),
    "MONGO_EXPRESS_PORT": (HTTP_GET, is_http_answer),
}


@pytest.mark.parametrize("variable", list(PLAIN_PROBES))
def test_on_the_plain_stack_every_probe_gets_its_protocols_answer(stack: RunningStack, variable: str) -> None:
    """The probes are real protocol: without TLS, each port answers its probe (so silence below means TLS)."""
    request, answered = PLAIN_PROBES[variable]
    answer = exchange(int(stack.env[variable]), request)
    assert answered(answer), f"{variable} without TLS: {answer[:60]!r}"


@pytest.mark.parametrize("variable", list(PLAIN_PROBES))
def test_every_port_speaks_only_tls(tls_stack: TlsStack, variable: str) -> None:
    port = tls_stack.port(variable)
    request, answered = PLAIN_PROBES[variable]
    answer = exchange(port, request)
    assert not answered(answer), f"{variable} ({port}) answered a plain-text client: {answer[:60]!r}"
    # TLS record types (0x14-0x17) or nothing at all: an alert or a hang-up, never the protocol itself.
    assert answer == b"" or answer[0] in (0x14, 0x15, 0x16, 0x17), f"{variable}: {answer[:60]!r}"

    context = ssl.create_default_context(cafile=str(tls_stack.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
            assert wrapped.version() in ("TLSv1.2", "TLSv1.3")
            peer = wrapped.getpeercert()
    assert peer is not None and ("IP Address", "127.0.0.1") in peer["subjectAltName"]


@pytest.mark.parametrize("variable", list(PLAIN_PROBES))
def test_a_client_that_trusts_another_ca_is_refused_the_handshake(
    tls_stack: TlsStack, other_ca: Path, variable: str
) -> None:
    context = ssl.create_default_context(cafile=str(other_ca))
    with socket.create_connection(("127.0.0.1", tls_stack.port(variable)), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_kafka_speaks_protocol_only_after_tls_and_a_scram_login(tls_stack: TlsStack) -> None:
    env = tls_stack.env
    base: dict[str, Any] = {
        "bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
        "ssl.ca.location": str(tls_stack.ca),
        "socket.timeout.ms": 3000,
    }

    def metadata(**config: Any) -> bool:
        merged: dict[str, Any] = {**base, **config}
        admin = AdminClient(merged)
        try:
            return bool(admin.list_topics(timeout=5).brokers)
        except KafkaException:
            return False

    login = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    assert metadata(
        **login, **{"sasl.username": env["KAFKA_SERVER_USERNAME"], "sasl.password": env["KAFKA_SERVER_PASSWORD"]}
    )
    assert metadata(
        **login, **{"sasl.username": env["KAFKA_MODEL_USERNAME"], "sasl.password": env["KAFKA_MODEL_PASSWORD"]}
    )
    assert not metadata(**login, **{"sasl.username": env["KAFKA_SERVER_USERNAME"], "sasl.password": "wrong"})
    assert not metadata(**login, **{"sasl.username": "nobody", "sasl.password": env["KAFKA_SERVER_PASSWORD"]})
    assert not metadata(**{"security.protocol": "SSL"}), "TLS without a login must not be enough"

    # The stack set the two services' passwords again once the broker answered (see Kafka._set_passwords).
    broker = AdminClient({**base, **login, "sasl.username": "broker", "sasl.password": env["KAFKA_BROKER_PASSWORD"]})
    users = [env["KAFKA_SERVER_USERNAME"], env["KAFKA_MODEL_USERNAME"]]
    described = broker.describe_user_scram_credentials(users)
    assert isinstance(described, dict)
    for user, future in described.items():
        infos = future.result(timeout=10).scram_credential_infos
        assert [(i.mechanism.name, i.iterations) for i in infos] == [("SCRAM_SHA_512", 8192)], user

    # The controller listener wants a certificate the CA signed: a client without one learns nothing.
    context = ssl.create_default_context(cafile=str(tls_stack.ca))
    with socket.create_connection(("127.0.0.1", tls_stack.port("KAFKA_CONTROLLER_PORT")), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
            wrapped.settimeout(5)
            wrapped.sendall(kafka_api_versions())
            try:
                answer = wrapped.recv(4096)
            except (ssl.SSLError, OSError):
                answer = b""
    assert not is_kafka_response(answer), "the controller answered a client without a certificate"


def test_mongodb_refuses_plain_text_clients_and_unverified_servers_are_refused(
    tls_stack: TlsStack, other_ca: Path
) -> None:
    with tls_stack.mongo() as client:
        assert client[tls_stack.env["MONGO_DATABASE"]].command("ping")["ok"] == 1
    plain: MongoClient[dict[str, Any]] = MongoClient(tls_stack.env["MONGO_URI"], serverSelectionTimeoutMS=3000)
    with plain, pytest.raises(Exception, match="(?i)timed out|closed|reset|eof"):
        plain[tls_stack.env["MONGO_DATABASE"]].command("ping")
    other: MongoClient[dict[str, Any]] = MongoClient(
        tls_stack.env["MONGO_URI"], serverSelectionTimeoutMS=3000, tls=True, tlsCAFile=str(other_ca)
    )
    with other, pytest.raises(Exception, match="certificate verify failed"):
        other[tls_stack.env["MONGO_DATABASE"]].command("ping")


# --- the pipeline over TLS ------------------------------------------------------------------


def https_get(url: str, ca: Path, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_the_pipeline_runs_end_to_end_over_tls(tls_pipeline: Pipeline, tls_stack: TlsStack) -> None:
    """Sensor -> Mosquitto -> bridge -> MongoDB and Kafka -> model -> Kafka -> bridge -> MongoDB, all over TLS."""
    env = tls_stack.env
    server = tls_pipeline.start_server()
    assert server.env["KAFKA_SASL_USERNAME"] == env["KAFKA_SERVER_USERNAME"]
    assert server.env["MQTT_TLS_CA_FILE"] == server.env["KAFKA_TLS_CA_FILE"] == server.env["MONGO_TLS_CA_FILE"]
    model = tls_pipeline.start_model()
    assert model.env["KAFKA_SASL_USERNAME"] == env["KAFKA_MODEL_USERNAME"]
    sensor = tls_pipeline.start_sensor(1, SENSOR_MAX_READINGS="5", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    assert sensor.env["MQTT_TLS_CA_FILE"] == str(tls_stack.ca)
    assert sensor.wait(60) == 0, sensor.log_tail()
    sensor_id = tls_pipeline.sensor_id(1)
    db = tls_pipeline.db
    wait_for(
        lambda: db[contract.COLLECTION_READINGS].count_documents({"sensor": sensor_id}) == 5,
        60,
        "5 readings in MongoDB",
        tls_pipeline.logs,
    )
    wait_for(
        lambda: db[contract.COLLECTION_PREDICTIONS].count_documents({"sensor": sensor_id}) == 5,
        120,
        "5 predictions in MongoDB",
        tls_pipeline.logs,
    )

    # The live page over HTTPS, reading MongoDB over TLS; not over plain HTTP.
    port = free_port()
    dashboard = tls_pipeline.start("dashboard", "Dashboard", dashboard_env(env, DASHBOARD_PORT=str(port)))
    login = (env["MONGO_EXPRESS_USERNAME"], env["MONGO_EXPRESS_PASSWORD"])

    def page_ready() -> bool:
        if not dashboard.alive:
            pytest.fail(f"the dashboard exited with {dashboard.returncode}:\n{dashboard.log_tail()}")
        try:
            return https_get(f"https://127.0.0.1:{port}/readyz", tls_stack.ca) == 200
        except OSError:
            return False

    wait_for(page_ready, 60, "the page over HTTPS", tls_pipeline.logs)
    assert https_get(f"https://127.0.0.1:{port}/", tls_stack.ca, login) == 200
    assert https_get(f"https://127.0.0.1:{port}/", tls_stack.ca) == 401
    assert not is_http_answer(exchange(port, HTTP_GET)), "the page answered plain HTTP"
    # mongo-express over HTTPS, reading FerretDB over TLS.
    express = f"https://127.0.0.1:{env['MONGO_EXPRESS_PORT']}/db/{env['MONGO_DATABASE']}/"
    assert https_get(express, tls_stack.ca, login) == 200


def test_the_trainer_reads_mongodb_over_tls(tls_pipeline: Pipeline, tmp_path: Path) -> None:
    env = trainer_env(tls_pipeline.stack.env, MODEL_TRAINED_PATH=str(tmp_path), HEALTH_PORT=str(free_port()))
    # TLS from MONGO_TLS_CA_FILE, as every service: nothing about it in the URI.
    assert "tls=" not in env["MONGO_URI"] and env["MONGO_TLS_CA_FILE"] == str(
        tls_pipeline.stack.env["MONGO_TLS_CA_FILE"]
    )
    trainer = tls_pipeline.start("trainer", "Models_analysis.trainer", env)
    tls_pipeline.wait_ready(trainer, 90)


def start_alone(pipeline: Pipeline, name: str, module: str, env: dict[str, str]) -> ServiceProcess:
    """A service that is expected to stop by itself (not stopped and checked by the fixture)."""
    process = ServiceProcess(name, module, env, pipeline.log_dir / f"{name}.log")
    process.start()
    return process


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("server", "MQTT_TLS_CA_FILE"),
        ("server", "KAFKA_TLS_CA_FILE"),
        ("server", "MONGO_TLS_CA_FILE"),
        ("model", "KAFKA_TLS_CA_FILE"),
        ("dashboard", "MONGO_TLS_CA_FILE"),
    ],
)
def test_a_service_that_cannot_verify_a_certificate_stops_at_start_naming_the_variable(
    tls_pipeline: Pipeline, other_ca: Path, service: str, variable: str
) -> None:
    env = tls_pipeline.stack.env
    wrong = {variable: str(other_ca), "HEALTH_PORT": "0"}
    process = {
        "server": lambda: start_alone(
            tls_pipeline, "server", "Server", server_env(env, **tls_pipeline.topics, **wrong)
        ),
        "model": lambda: start_alone(
            tls_pipeline, "model", "Models_analysis", model_env(env, **tls_pipeline.topics, **wrong)
        ),
        "dashboard": lambda: start_alone(
            tls_pipeline, "dashboard", "Dashboard", dashboard_env(env, DASHBOARD_PORT=str(free_port()), **wrong)
        ),
    }[service]()
    try:
        code = process.wait(60)
    finally:
        process.kill()
    log = process.log_tail(20)
    assert code == 2, f"{service} with a CA that signed nothing it talks to: exit {code}\n{log}"
    assert f"{variable}: the certificate of 127.0.0.1:" in log and "certificate verify failed" in log, log
    for secret in (v for k, v in env.items() if "PASSWORD" in k):
        assert secret not in log


def test_a_missing_ca_file_stops_a_service_naming_the_variable(tls_pipeline: Pipeline, tmp_path: Path) -> None:
    env = server_env(tls_pipeline.stack.env, KAFKA_TLS_CA_FILE=str(tmp_path / "nowhere.crt"), HEALTH_PORT="0")
    process = start_alone(tls_pipeline, "server", "Server", env)
    try:
        code = process.wait(60)
    finally:
        process.kill()
    assert code == 2 and "KAFKA_TLS_CA_FILE" in process.log_tail(20), process.log_tail(20)


def test_no_secret_of_the_tls_stack_reaches_a_log(tls_stack: TlsStack) -> None:
    """The servers' logs (Kafka's rendered settings hold passwords) and this module's service logs stay clean."""
    secrets = [v for k, v in tls_stack.env.items() if "PASSWORD" in k]
    secrets.append((Path(tls_stack.env["STACK_TLS_DIR"]) / "kafka.password").read_text().strip())
    logs = [*(tls_stack.state_dir / "logs").rglob("*.log"), *(ARTIFACTS / "logs").rglob("*.log")]
    assert any(log.name == "kafka.log" for log in logs)
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{log} contains a secret"
