"""Who may do what, on the real servers: no anonymous clients, a sensor speaks only for itself,
MongoDB and mongo-express refuse strangers, TLS works, and no secret reaches a log."""

from __future__ import annotations

import base64
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from localstack.namespace import Namespace, free_port
from localstack.services import sensor_env
from localstack.stack import sensor_accounts
from pipeline import contract
from tests.conftest import ARTIFACTS, Pipeline, RunningStack, holds_for, wait_for
from tests.helpers import connack, payload, publish, reading

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 135
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"


def connect_code(env: dict[str, str], username: str | None, password: str | None, client_id: str = "probe") -> int:
    """The CONNACK reason code the broker gives these credentials (and client id)."""
    return connack(env, client_id, (username, password or "") if username is not None else None)


def test_mqtt_refuses_anonymous_clients_and_wrong_passwords(stack: RunningStack) -> None:
    env = stack.env
    assert connect_code(env, None, None) in (134, 135), "anonymous clients must be refused"
    assert connect_code(env, env["MQTT_SENSOR_USERNAME"], "wrong") in (134, 135)
    assert connect_code(env, env["MQTT_SENSOR_USERNAME"], env["MQTT_SENSOR_PASSWORD"]) == 0


def test_a_sensor_cannot_publish_as_another_sensor(pipeline: Pipeline) -> None:
    pipeline.start_server()
    me, other = pipeline.sensor_id(1), pipeline.sensor_id(2)
    forged = reading(other, 1.0)
    honest = reading(me, 2.0)
    codes = publish(pipeline.stack.env, me, contract.readings_topic(other), [payload(forged)])
    assert codes == [NOT_AUTHORIZED], "publishing under another sensor's topic must be refused"
    assert publish(pipeline.stack.env, me, contract.readings_topic(me), [payload(honest)]) == [0]
    readings = pipeline.db[contract.COLLECTION_READINGS]
    wait_for(lambda: readings.find_one({"_id": honest.id}), 30, "the honest reading", pipeline.logs)
    assert readings.find_one({"_id": forged.id}) is None


def test_a_sensor_with_its_own_user_publishes_only_as_itself(pipeline: Pipeline) -> None:
    """MQTT_SENSOR_ACCOUNTS: user own-1 connects only as client own-1 and writes only sensors/own-1/;
    neither it nor the shared fleet account can connect or write as own-2
    (tests/integration/test_hostile_clients.py tries every other way in)."""
    pipeline.start_server()
    env = pipeline.stack.env
    accounts = sensor_accounts(env["MQTT_SENSOR_ACCOUNTS"])
    own, other = ("own-1", accounts["own-1"]), ("own-2", accounts["own-2"])
    fleet = (env["MQTT_SENSOR_USERNAME"], env["MQTT_SENSOR_PASSWORD"])
    assert connect_code(env, own[0], other[1]) in (134, 135), "another sensor's password must be refused"

    honest = reading("own-1", 1.0)
    assert publish(env, "own-1", contract.readings_topic("own-1"), [payload(honest)], login=own) == [0]
    forged = [reading("own-2", 2.0)]
    assert publish(env, "own-1", contract.readings_topic("own-2"), [payload(forged[0])], login=own) == [NOT_AUTHORIZED]
    # Client id own-2 belongs to user own-2: neither own-1 nor the fleet may even connect with it
    # (the fleet's pattern grants by client id).
    assert connect_code(env, *own, client_id="own-2") == NOT_AUTHORIZED
    assert connect_code(env, *fleet, client_id="own-2") == NOT_AUTHORIZED
    assert connect_code(env, *own, client_id="own-1-elsewhere") == NOT_AUTHORIZED, "own-1 uses only its own id"
    honest_too = reading("own-2", 5.0)
    assert publish(env, "own-2", contract.readings_topic("own-2"), [payload(honest_too)], login=other) == [0]

    readings = pipeline.db[contract.COLLECTION_READINGS]
    wait_for(lambda: readings.find_one({"_id": honest_too.id}), 30, "own-2's own reading", pipeline.logs)
    assert readings.find_one({"_id": honest.id}), "own-1's own reading"
    assert readings.count_documents({"_id": {"$in": [f.id for f in forged]}}) == 0


def test_a_sensor_with_its_own_user_runs_with_it(pipeline: Pipeline) -> None:
    """The local stack's sensor-i gets its own user when MQTT_SENSOR_ACCOUNTS has one (as `make run`)."""
    env = sensor_env(pipeline.stack.env, "own-1")
    assert env["MQTT_USERNAME"] == "own-1" and env["MQTT_USERNAME"] != pipeline.stack.env["MQTT_SENSOR_USERNAME"]
    assert sensor_env(pipeline.stack.env, "sensor-9")["MQTT_USERNAME"] == pipeline.stack.env["MQTT_SENSOR_USERNAME"]
    pipeline.start_server()
    readings = pipeline.db[contract.COLLECTION_READINGS]
    before = readings.count_documents({"sensor": "own-1"})
    own = {key: env[key] for key in ("SENSOR_ID", "MQTT_USERNAME", "MQTT_PASSWORD")}
    sensor = pipeline.start_sensor("x", SENSOR_MAX_READINGS="3", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false", **own)
    assert sensor.wait(60) == 0, sensor.log_tail()
    wait_for(lambda: readings.count_documents({"sensor": "own-1"}) == before + 3, 60, "own-1's readings", pipeline.logs)


def test_the_sensor_user_cannot_read_other_sensors(stack: RunningStack) -> None:
    """Mosquitto grants a wildcard SUBACK and checks the ACL per message: nothing may arrive."""
    env = stack.env
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="nosy", protocol=mqtt.MQTTv5)
    client.username_pw_set(env["MQTT_SENSOR_USERNAME"], env["MQTT_SENSOR_PASSWORD"])
    subscribed: list[int] = []
    received: list[str] = []
    client.on_subscribe = lambda _c, _u, _m, codes, _p: subscribed.extend(c.value for c in codes)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe("sensors/#", qos=1)
    client.on_message = lambda _c, _u, message: received.append(message.topic)
    client.connect(env["MQTT_HOST"], int(env["MQTT_PORT"]))
    client.loop_start()
    try:
        wait_for(lambda: subscribed, 10, "the SUBACK")
        victim = "victim-sensor"
        assert publish(env, victim, contract.readings_topic(victim), [payload(reading(victim, 1.0))]) in ([0], [16])
        holds_for(lambda: received == [], 2, "no sensor reading another sensor's readings")
    finally:
        client.disconnect()
        client.loop_stop()


def test_mongodb_refuses_unauthenticated_clients(stack: RunningStack) -> None:
    port = stack.env["MONGO_PORT"]
    database = stack.env["MONGO_DATABASE"]
    anonymous: MongoClient[dict[str, Any]] = MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=5000)
    with anonymous:
        with pytest.raises(OperationFailure):
            anonymous[database][contract.COLLECTION_READINGS].find_one()
    user = stack.env["MONGO_APP_USERNAME"]
    wrong = f"mongodb://{user}:wrong@127.0.0.1:{port}/{database}?authSource={database}"
    impostor: MongoClient[dict[str, Any]] = MongoClient(wrong, serverSelectionTimeoutMS=5000)
    with impostor:
        with pytest.raises(OperationFailure):
            impostor[database][contract.COLLECTION_READINGS].find_one()
    with stack.mongo() as client:
        client[database][contract.COLLECTION_READINGS].find_one()


def test_mongo_express_refuses_requests_without_the_right_credentials(stack: RunningStack) -> None:
    url = f"http://127.0.0.1:{stack.env['MONGO_EXPRESS_PORT']}/"
    for header in (None, "admin:wrong"):
        request = urllib.request.Request(url)
        if header:
            request.add_header("Authorization", "Basic " + base64.b64encode(header.encode()).decode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
        "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


def test_sensors_and_bridge_work_over_tls(pipeline: Pipeline, tmp_path: Path) -> None:
    """A TLS listener with the stack's users, ACL and client-id owners; the real services connect over it."""
    ca, cert, key = make_certificates(tmp_path)
    conf_dir = pipeline.stack.stack.config.conf_dir("mosquitto")
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                "allow_anonymous false",
                f"password_file {conf_dir / 'passwd'}",
                f"acl_file {conf_dir / 'acl'}",
                f"plugin {pipeline.stack.stack.servers['mosquitto'].plugin}",
                f"plugin_opt_owners_file {conf_dir / 'owners'}",
                "user root",
                "log_dest stderr",
                f"listener {port} 127.0.0.1",
                f"cafile {ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                "",
            ]
        )
    )
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.PIPE
    )
    try:
        tls = {"MQTT_PORT": str(port), "MQTT_TLS_CA_FILE": str(ca)}
        pipeline.start_server(MQTT_PORT=str(port), MQTT_TLS_CA_FILE=str(ca))
        sensor = pipeline.start_sensor(1, SENSOR_MAX_READINGS="3", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false", **tls)
        assert sensor.wait(60) == 0, sensor.log_tail()
        readings = pipeline.db[contract.COLLECTION_READINGS]
        wait_for(
            lambda: readings.count_documents({"sensor": pipeline.sensor_id(1)}) == 3,
            60,
            "3 readings over TLS",
            pipeline.logs,
        )
        # Trusting other CAs (the system's), the client must refuse this broker: the certificate is checked.
        untrusting = pipeline.start_sensor(
            2, SENSOR_MAX_READINGS="1", SENSOR_LOOP="false", MQTT_PORT=str(port), MQTT_TLS_CA_FILE=SYSTEM_CAS
        )
        wait_for(
            lambda: (
                "certificate verify failed" in (tail := untrusting.log_tail(200)) or "CERTIFICATE_VERIFY_FAILED" in tail
            ),
            30,
            "the sensor refusing the broker's certificate",
            pipeline.logs,
        )
        holds_for(lambda: readings.count_documents({"sensor": pipeline.sensor_id(2)}) == 0, 2, "nothing stored from it")
        untrusting.stop(15)
        pipeline.processes.remove(untrusting)
    finally:
        pipeline.stop_all()
        broker.terminate()
        broker.wait(10)


def test_no_secret_reaches_a_log_of_this_run(pipeline: Pipeline) -> None:
    """Every service and server log of this run is free of every secret, each own-user sensor's password included.

    The test makes the logs it reads: a bridge, a model service, the dashboard, a fleet sensor and a sensor
    with a user of its own, each started, used and stopped here; then it reads them, the servers' logs of the
    run's stack, and every other service log this test run wrote (modified since the stack started).
    """
    env = pipeline.stack.env
    secrets = {k: v for k, v in env.items() if "PASSWORD" in k or "SECRET" in k}
    secrets |= {
        f"MQTT_SENSOR_ACCOUNTS ({sensor})": word
        for sensor, word in sensor_accounts(env["MQTT_SENSOR_ACCOUNTS"]).items()
    }
    assert len(secrets) >= 6 and all(len(secret) >= 8 for secret in secrets.values()), sorted(secrets)
    started = min(p.stat().st_mtime for p in (pipeline.stack.state_dir / "logs").glob("*.log"))
    pipeline.start_server()
    pipeline.start_model()
    pipeline.start_dashboard()
    fleet = pipeline.start_sensor(1, SENSOR_MAX_READINGS="3", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false")
    own = Namespace.start_sensor(
        pipeline, "own-1", "sensor-own-1", SENSOR_MAX_READINGS="3", SENSOR_INTERVAL_S="0", SENSOR_LOOP="false"
    )
    assert fleet.wait(60) == 0 and own.wait(60) == 0, pipeline.logs()
    assert pipeline.stop_all() and all(not p.alive for p in pipeline.processes)
    mine = list(pipeline.log_dir.rglob("*.log"))
    assert {p.stem for p in mine} >= {"server-1", "model-1", "dashboard", "sensor-1", "sensor-own-1"}
    servers = list((pipeline.stack.state_dir / "logs").glob("*.log"))
    others = [p for p in (ARTIFACTS / "logs").rglob("*.log") if p.stat().st_mtime >= started]
    for log in {*mine, *servers, *others}:
        text = log.read_text(errors="replace")
        for name, secret in secrets.items():
            assert secret not in text, f"{log} contains {name}"
