"""The TLS settings at their boundaries: which combinations start a service, and what each turns on.

No pipeline server here: the start-up certificate check meets small TLS and
plain-text listeners of the test's own (tests/integration/test_tls.py runs the
real servers with TLS).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from localstack.config import REQUIRED_SECRETS, SCRAM_FORBIDDEN, ConfigError, StackConfig, StackError
from localstack.servers.kafka import Kafka
from localstack.services import dashboard_env, model_env, sensor_env, server_env
from localstack.stack import Stack
from localstack.tls import make_certificates
from pipeline import tls
from pipeline.kafka import security_config
from pipeline.mongo import tls_options
from pipeline.settings import HttpsSettings, KafkaSettings, MongoSettings, describe_errors, tls_problems

URI = "mongodb://user:password@127.0.0.1:1/db"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    other_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    ours, other = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("other")
    make_certificates(ours)
    make_certificates(other)
    return Certificates(
        ours / "ca.crt", ours / "server.crt", ours / "server.key", other / "ca.crt", other / "server.key"
    )


# --- Kafka: TLS and the SCRAM login ---------------------------------------------------


@given(ca=st.booleans(), username=st.booleans(), password=st.booleans())
def test_kafka_settings_start_only_with_a_whole_login_and_say_what_they_turn_on(
    certificates: Certificates, ca: bool, username: bool, password: bool
) -> None:
    values: dict[str, object] = {}
    if ca:
        values["KAFKA_TLS_CA_FILE"] = certificates.ca
    if username:
        values["KAFKA_SASL_USERNAME"] = "bridge"
    if password:
        values["KAFKA_SASL_PASSWORD"] = "secret"
    if username != password:
        with pytest.raises(ValidationError) as refused:
            KafkaSettings(**values)  # type: ignore[arg-type]
        message = describe_errors(refused.value)
        assert "KAFKA_SASL_USERNAME" in message and "KAFKA_SASL_PASSWORD" in message
        assert "secret" not in message
        return
    settings = KafkaSettings(**values)  # type: ignore[arg-type]
    config = security_config(settings)
    expected = ("SASL_" if username else "") + ("SSL" if ca else "PLAINTEXT")
    assert config["security.protocol"] == expected
    assert ("ssl.ca.location" in config) == ca
    assert config.get("ssl.endpoint.identification.algorithm") == ("https" if ca else None)
    assert (config.get("sasl.mechanism"), config.get("sasl.username")) == (
        ("SCRAM-SHA-512", "bridge") if username else (None, None)
    )


@given(content=st.binary(max_size=2048))
def test_a_ca_file_without_a_certificate_is_refused_naming_the_variable(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_bytes(content)
    with pytest.raises(ValidationError) as refused:
        KafkaSettings(KAFKA_TLS_CA_FILE=path)
    assert describe_errors(refused.value).startswith("KAFKA_TLS_CA_FILE: ")
    with pytest.raises(ValidationError) as refused:
        MongoSettings(MONGO_URI=URI, MONGO_TLS_CA_FILE=path)
    assert describe_errors(refused.value).startswith("MONGO_TLS_CA_FILE: ")


def test_a_missing_ca_file_is_refused_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        MongoSettings(MONGO_URI=URI, MONGO_TLS_CA_FILE=tmp_path / "nowhere.crt")
    assert describe_errors(refused.value).startswith("MONGO_TLS_CA_FILE: ")


def test_mongo_tls_ca_file_turns_tls_on(certificates: Certificates) -> None:
    assert tls_options(MongoSettings(MONGO_URI=URI)) == {}
    settings = MongoSettings(MONGO_URI=URI, MONGO_TLS_CA_FILE=certificates.ca)
    assert tls_options(settings) == {"tls": True, "tlsCAFile": str(certificates.ca)}


# --- the page's certificate and key ----------------------------------------------------


@given(cert=st.booleans(), key=st.sampled_from(["none", "its own", "another"]))
def test_the_page_serves_https_only_with_a_certificate_and_its_own_key(
    certificates: Certificates, cert: bool, key: str
) -> None:
    values: dict[str, object] = {}
    if cert:
        values["DASHBOARD_TLS_CERT_FILE"] = certificates.cert
    if key != "none":
        values["DASHBOARD_TLS_KEY_FILE"] = certificates.key if key == "its own" else certificates.other_key
    valid = (not cert and key == "none") or (cert and key == "its own")
    if not valid:
        with pytest.raises(ValidationError) as refused:
            HttpsSettings(**values)  # type: ignore[arg-type]
        message = describe_errors(refused.value)
        assert "DASHBOARD_TLS_CERT_FILE" in message and "DASHBOARD_TLS_KEY_FILE" in message
        return
    settings = HttpsSettings(**values)  # type: ignore[arg-type]
    assert settings.https == cert
    assert settings.tls_files() == ((str(certificates.cert), str(certificates.key)) if cert else (None, None))


# --- addresses ------------------------------------------------------------------------

HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
)


@given(host=HOSTS, port=st.integers(1, 65535), with_port=st.booleans())
def test_host_and_port_are_read_back(host: str, port: int, with_port: bool) -> None:
    assert tls.split_host_port(f"{host}:{port}" if with_port else host, 9092) == (host, port if with_port else 9092)


@given(hosts=st.lists(st.tuples(HOSTS, st.integers(1, 65535)), min_size=1, max_size=3), login=st.booleans())
def test_the_hosts_of_a_mongodb_uri_are_the_ones_checked(hosts: list[tuple[str, int]], login: bool) -> None:
    listed = ",".join(f"{h}:{p}" for h, p in hosts)
    uri = f"mongodb://{'u:p@' if login else ''}{listed}/db?authSource=db"
    assert tls.mongo_hosts(uri) == hosts
    assert tls.mongo_hosts("mongodb+srv://cluster.example.com/db") == []


# --- the start-up check against a server ------------------------------------------------


@dataclass
class Listener:
    port: int
    thread: threading.Thread


@pytest.fixture
def tls_listener(certificates: Certificates) -> Iterator[Listener]:
    """A TLS server on 127.0.0.1 with the test CA's certificate: it completes handshakes, then closes."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    yield from _listen(lambda conn: context.wrap_socket(conn, server_side=True).close())


@pytest.fixture
def plain_listener() -> Iterator[Listener]:
    """A plain-text server that answers whatever comes in its own protocol (HTTP here)."""
    yield from _listen(lambda conn: (conn.recv(1024), conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"), conn.close()))


def _listen(handle: object) -> Iterator[Listener]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                handle(conn)  # type: ignore[operator]
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield Listener(server.getsockname()[1], thread)
    server.close()


def test_a_server_whose_certificate_verifies_passes(certificates: Certificates, tls_listener: Listener) -> None:
    assert tls.verify_problem("KAFKA_TLS_CA_FILE", certificates.ca, "127.0.0.1", tls_listener.port) is None
    # The certificate names localhost too; not another host name.
    assert tls.verify_problem("KAFKA_TLS_CA_FILE", certificates.ca, "localhost", tls_listener.port) is None


def test_a_certificate_another_ca_signed_is_named_with_the_variable(
    certificates: Certificates, tls_listener: Listener
) -> None:
    problem = tls.verify_problem("MONGO_TLS_CA_FILE", certificates.other_ca, "127.0.0.1", tls_listener.port)
    assert problem is not None and problem.startswith("MONGO_TLS_CA_FILE: ")
    assert "certificate verify failed" in problem


def test_a_server_in_plain_text_is_named_with_the_variable(
    certificates: Certificates, plain_listener: Listener
) -> None:
    problem = tls.verify_problem("MQTT_TLS_CA_FILE", certificates.ca, "127.0.0.1", plain_listener.port)
    assert problem is not None and problem.startswith("MQTT_TLS_CA_FILE: ") and "does it speak TLS?" in problem


def test_a_server_that_is_not_there_yet_is_no_verdict(certificates: Certificates) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert tls.verify_problem("KAFKA_TLS_CA_FILE", certificates.ca, "127.0.0.1", port) is None


def test_settings_are_checked_against_every_server_they_name(
    certificates: Certificates, tls_listener: Listener
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        absent = probe.getsockname()[1]
    servers = f"127.0.0.1:{absent},127.0.0.1:{tls_listener.port}"
    good = KafkaSettings(KAFKA_BOOTSTRAP_SERVERS=servers, KAFKA_TLS_CA_FILE=certificates.ca)
    assert tls_problems(good) == []
    bad = KafkaSettings(KAFKA_BOOTSTRAP_SERVERS=servers, KAFKA_TLS_CA_FILE=certificates.other_ca)
    problems = tls_problems(bad)
    assert (
        len(problems) == 1 and problems[0].startswith("KAFKA_TLS_CA_FILE: ") and str(tls_listener.port) in problems[0]
    )
    plain = KafkaSettings(KAFKA_BOOTSTRAP_SERVERS=servers)
    assert tls_problems(plain) == [], "without TLS nothing is checked"


# --- the local stack's TLS switch ---------------------------------------------------------

STACK_SECRETS = {name: f"secret-{n}" for n, name in enumerate(REQUIRED_SECRETS)}
KAFKA_PASSWORDS = {"KAFKA_SERVER_PASSWORD": "s1", "KAFKA_MODEL_PASSWORD": "m1", "KAFKA_BROKER_PASSWORD": "b1"}


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stack-tls")
    make_certificates(folder)
    return folder


def stack_config(tmp_path: Path, **extra: str) -> StackConfig:
    return StackConfig.from_env({"STACK_DIR": str(tmp_path / "stack"), **STACK_SECRETS, **extra})


def test_without_stack_tls_dir_the_stack_is_plain_and_needs_no_kafka_password(tmp_path: Path) -> None:
    config = stack_config(tmp_path)
    assert not config.tls
    assert not any("TLS" in name or name.startswith("KAFKA_S") for name in Stack(config).service_env())


@pytest.mark.parametrize("missing", sorted(KAFKA_PASSWORDS))
def test_with_tls_every_kafka_password_is_required_by_name(tmp_path: Path, tls_dir: Path, missing: str) -> None:
    passwords = {k: v for k, v in KAFKA_PASSWORDS.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        stack_config(tmp_path, STACK_TLS_DIR=str(tls_dir), **passwords)
    # Commands that only look at or stop a stack need none of it.
    StackConfig.from_env({"STACK_TLS_DIR": str(tls_dir / "nowhere")}, require_secrets=False)


def test_a_tls_dir_without_the_files_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"STACK_TLS_DIR .* lacks ca\.crt.*python -m localstack certs"):
        stack_config(tmp_path, STACK_TLS_DIR=str(tmp_path), **KAFKA_PASSWORDS)


@given(password=st.text(min_size=1, max_size=12))
def test_a_kafka_password_the_formatter_cannot_read_is_refused(
    tmp_path_factory: pytest.TempPathFactory, tls_dir: Path, password: str
) -> None:
    values = {**KAFKA_PASSWORDS, "KAFKA_MODEL_PASSWORD": password}
    tmp_path = tmp_path_factory.mktemp("stack")
    if password.strip() != password or not password.strip():
        return  # blank or padded values are read as unset or stripped: another test's business
    if set(password) & SCRAM_FORBIDDEN:
        with pytest.raises(ConfigError, match="KAFKA_MODEL_PASSWORD must not contain"):
            stack_config(tmp_path, STACK_TLS_DIR=str(tls_dir), **values)
    else:
        assert stack_config(tmp_path, STACK_TLS_DIR=str(tls_dir), **values).kafka_model_password == password


def test_kafka_users_must_be_three(tmp_path: Path, tls_dir: Path) -> None:
    for names in ({"KAFKA_MODEL_USERNAME": "bridge"}, {"KAFKA_SERVER_USERNAME": "broker"}):
        with pytest.raises(ConfigError, match="KAFKA_SERVER_USERNAME and KAFKA_MODEL_USERNAME"):
            stack_config(tmp_path, STACK_TLS_DIR=str(tls_dir), **KAFKA_PASSWORDS, **names)


def test_with_tls_each_service_gets_the_ca_and_its_own_kafka_login(tmp_path: Path, tls_dir: Path) -> None:
    config = stack_config(tmp_path, STACK_TLS_DIR=str(tls_dir), **KAFKA_PASSWORDS)
    stack_env = {**STACK_SECRETS, "MONGO_EXPRESS_USERNAME": "admin", **Stack(config).service_env()}
    ca = str(tls_dir / "ca.crt")
    server = server_env(stack_env)
    assert (server["MQTT_TLS_CA_FILE"], server["KAFKA_TLS_CA_FILE"], server["MONGO_TLS_CA_FILE"]) == (ca, ca, ca)
    assert (server["KAFKA_SASL_USERNAME"], server["KAFKA_SASL_PASSWORD"]) == ("bridge", "s1")
    model = model_env(stack_env)
    assert (model["KAFKA_TLS_CA_FILE"], model["KAFKA_SASL_USERNAME"], model["KAFKA_SASL_PASSWORD"]) == (
        ca,
        "model",
        "m1",
    )
    assert "MONGO_TLS_CA_FILE" not in model and "MQTT_TLS_CA_FILE" not in model
    sensor = sensor_env(stack_env, "s-1")
    assert sensor["MQTT_TLS_CA_FILE"] == ca and not any(k.startswith(("KAFKA_", "MONGO_")) for k in sensor)
    page = dashboard_env(stack_env)
    assert page["MONGO_TLS_CA_FILE"] == ca
    assert (page["DASHBOARD_TLS_CERT_FILE"], page["DASHBOARD_TLS_KEY_FILE"]) == (
        str(tls_dir / "server.crt"),
        str(tls_dir / "server.key"),
    )
    assert "KAFKA_BROKER_PASSWORD" not in {**server, **model, **sensor, **page}, "the broker's login stays with it"


def test_kafka_data_formatted_without_tls_is_refused_with_what_to_do(tmp_path: Path, tls_dir: Path) -> None:
    """Its SCRAM users exist only if the storage was formatted with TLS: say so rather than time out."""
    cache = tmp_path / "cache"
    config = StackConfig.from_env(
        {
            "STACK_DIR": str(tmp_path / "stack"),
            "LOCALSTACK_CACHE": str(cache),
            "STACK_TLS_DIR": str(tls_dir),
            **STACK_SECRETS,
            **KAFKA_PASSWORDS,
        }
    )
    kafka = Kafka(config)
    kafka.lib_dir.mkdir(parents=True)
    (kafka.lib_dir / "kafka_2.13-0.jar").touch()
    kafka.log_dirs.mkdir(parents=True)
    (kafka.log_dirs / "meta.properties").touch()
    with (tmp_path / "kafka.log").open("wb") as log:
        with pytest.raises(StackError, match="formatted without TLS.*Delete that directory"):
            kafka.prepare(log)
        kafka.scram_stamp.touch()
        kafka.prepare(log)  # formatted with TLS: nothing to do
    rendered = kafka.properties.read_text()
    assert "listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL" in rendered
    assert kafka.properties.stat().st_mode & 0o077 == 0, "it holds passwords"
