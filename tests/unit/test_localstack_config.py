"""The local stack's configuration, without starting a server.

The environment variables (localstack/config.py) keep the names and defaults
localstack/README.md promises and reject a bad value by name; each server's
configuration is rendered from the file Compose uses (mosquitto/mosquitto.conf,
the kafka service of docker-compose.yml), so the two cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from localstack.__main__ import main
from localstack.config import REPO_ROOT, REQUIRED_SECRETS, ConfigError, StackConfig, StackSettings
from localstack.servers.ferretdb import FerretDB
from localstack.servers.kafka import (
    LOCAL_PROPERTIES,
    MACHINE_SETTINGS,
    Kafka,
    compose_kafka_settings,
    kafka_property,
    parse_properties,
    render_kafka_properties,
)
from localstack.servers.mosquitto import MOSQUITTO_CONF, MOSQUITTO_PATH_SETTINGS, Mosquitto, render_mosquitto_conf
from localstack.stack import Stack, StackError
from tests.helpers import mosquitto_directives

README = REPO_ROOT / "localstack" / "README.md"
COMPOSE = REPO_ROOT / "docker-compose.yml"
PORTS = {
    "MQTT_PORT": "22883",
    "MQTT_WS_PORT": "22884",
    "KAFKA_PORT": "22092",
    "KAFKA_CONTROLLER_PORT": "22093",
    "MONGO_PORT": "22017",
    "MONGO_EXPRESS_PORT": "22081",
}
SECRETS = {name: f"secret-{n}" for n, name in enumerate(REQUIRED_SECRETS)}
INT_VARIABLES = [*PORTS, "KAFKA_NUM_PARTITIONS"]


def config(tmp_path: Path, **extra: str) -> StackConfig:
    return StackConfig.from_env({"STACK_DIR": str(tmp_path / "stack"), **PORTS, **SECRETS, **extra})


# --------------------------------------------------------------------------- environment variables


def readme_defaults() -> dict[str, str]:
    """{variable: default} from the Environment table of localstack/README.md."""
    section = README.read_text().split("## Environment", 1)[1].split("\n## ", 1)[0]
    defaults: dict[str, str] = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]) if len(cells) >= 2 else []
        values = [v.strip().strip("`") for v in cells[1].split(",")] if names else []
        if len(values) == 1:
            values *= len(names)
        assert len(values) == len(names), f"README row {row!r}: one default per variable"
        defaults.update(zip(names, values, strict=True))
    return defaults


def test_the_readme_lists_every_variable_with_its_default() -> None:
    documented = readme_defaults()
    assert set(documented) == set(StackSettings.model_fields), "README's Environment table and StackSettings differ"
    for name, promised in documented.items():
        field = StackSettings.model_fields[name]
        if promised == "required":
            assert name in REQUIRED_SECRETS and field.default == "", name
        elif promised == "random":
            assert field.default_factory is not None, name
        elif promised == "unset":
            assert field.default is None, name
        elif promised == "empty":
            assert field.default == "", name
        else:
            assert str(field.default) == promised.replace("<repo>", str(REPO_ROOT)), name


def test_defaults(tmp_path: Path) -> None:
    defaults = StackConfig.from_env({**SECRETS}, require_secrets=True)
    assert (defaults.mqtt_port, defaults.mqtt_ws_port, defaults.kafka_port) == (1883, 9001, 9092)
    assert (defaults.kafka_controller_port, defaults.mongo_port, defaults.mongo_express_port) == (9093, 27017, 8081)
    assert defaults.state_dir == REPO_ROOT / ".stack"
    assert defaults.uses_ferretdb and defaults.mongo_express_cookie_secret
    assert StackConfig(state_dir=tmp_path, cache_dir=tmp_path).mqtt_server_client_ids == "bridge-*"


@pytest.mark.parametrize("variable", INT_VARIABLES)
@pytest.mark.parametrize("bad", ["abc", "0", "70000", "1.0", "1_000", "-5"])
def test_a_bad_number_stops_the_stack_naming_the_variable(tmp_path: Path, variable: str, bad: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(tmp_path, **{variable: bad})
    assert re.search(rf"^{variable}: ", str(error.value), re.MULTILINE), str(error.value)


@pytest.mark.parametrize(
    ("variable", "bad"),
    [
        ("MONGO_DATABASE", "my.db"),
        ("MQTT_SERVER_USERNAME", "a:b"),
        ("MQTT_SENSOR_USERNAME", "two words"),
    ],
)
def test_a_bad_name_stops_the_stack_naming_the_variable(tmp_path: Path, variable: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=rf"(?m)^{variable}: "):
        config(tmp_path, **{variable: bad})


def test_the_process_environment_is_read_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**PORTS, **SECRETS, "STACK_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MONGO_URI", raising=False)
    monkeypatch.setenv("MQTT_SENSOR_ACCOUNTS", " own-1:pw ")
    monkeypatch.setenv("MONGO_EXPRESS_USERNAME", "")  # empty: the default
    loaded = StackConfig.from_env()
    assert (loaded.mqtt_port, loaded.mongo_port, loaded.state_dir) == (22883, 22017, tmp_path.resolve())
    assert loaded.mqtt_sensor_accounts == "own-1:pw" and loaded.mongo_express_username == "admin"
    monkeypatch.setenv("KAFKA_PORT", "nine")
    with pytest.raises(ConfigError, match="(?m)^KAFKA_PORT: "):
        StackConfig.from_env()


def test_blank_means_default_and_numbers_may_be_padded(tmp_path: Path) -> None:
    loaded = config(tmp_path, MQTT_PORT="  ", KAFKA_NUM_PARTITIONS=" 6 ", MONGO_DATABASE=" db ")
    assert (loaded.mqtt_port, loaded.kafka_num_partitions, loaded.mongo_database) == (1883, 6, "db")


def test_passwords_are_taken_as_given_and_kept_out_of_repr(tmp_path: Path) -> None:
    loaded = config(tmp_path, MQTT_SERVER_PASSWORD=" spaced ")
    assert loaded.mqtt_server_password == " spaced "
    assert "secret-" not in repr(loaded) and "spaced" not in repr(loaded)


def test_missing_passwords_are_named_unless_not_needed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        StackConfig.from_env({"STACK_DIR": str(tmp_path)})
    assert all(name in str(error.value) for name in REQUIRED_SECRETS)
    assert StackConfig.from_env({"STACK_DIR": str(tmp_path)}, require_secrets=False).mqtt_server_password == ""
    external = {**SECRETS, "MONGO_APP_PASSWORD": "", "MONGO_URI": "mongodb://u:p@db:27017/x"}
    assert not StackConfig.from_env(external).uses_ferretdb, "an external MongoDB brings its own password"


def test_two_servers_on_one_port_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KAFKA_PORT and MQTT_PORT are both 22883"):
        config(tmp_path, KAFKA_PORT="22883")
    with pytest.raises(ConfigError, match="MQTT_SERVER_USERNAME and MQTT_SENSOR_USERNAME must differ"):
        config(tmp_path, MQTT_SENSOR_USERNAME="bridge")


def test_start_on_the_command_line_names_a_bad_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in {**PORTS, **SECRETS, "STACK_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MQTT_WS_PORT", "99999")
    assert main(["start"]) == 1
    err = capsys.readouterr().err
    assert "MQTT_WS_PORT: " in err and "99999" not in err, err
    assert not (tmp_path / "run").exists(), "nothing was started"


# --------------------------------------------------------------------------- mosquitto


@pytest.mark.parametrize("run_as_root", [False, True])
def test_the_rendered_mosquitto_conf_has_every_directive_of_composes(run_as_root: bool) -> None:
    paths = {key: f"/local/{key}" for key in MOSQUITTO_PATH_SETTINGS}
    ports = {"MQTT_PORT": 22883, "MQTT_WS_PORT": 22884}
    compose = mosquitto_directives(MOSQUITTO_CONF.read_text())
    local = mosquitto_directives(
        render_mosquitto_conf(MOSQUITTO_CONF.read_text(), paths, ports, run_as_root=run_as_root)
    )
    assert (("user", "root") in local) == run_as_root
    local = [d for d in local if d != ("user", "root")]
    assert len(local) == len(compose)
    listeners = iter(["22883 127.0.0.1", "22884 127.0.0.1"])
    for (key, value), (local_key, local_value) in zip(compose, local, strict=True):
        assert local_key == key
        if key in MOSQUITTO_PATH_SETTINGS:
            assert local_value == f"/local/{key}"
        elif key == "listener":
            assert local_value == next(listeners), "the local broker listens on loopback, on its own ports"
        else:
            assert local_value == value, f"{key}: Compose has {value!r}, the local stack {local_value!r}"
    assert next(listeners, None) is None


def test_the_stack_renders_mosquitto_conf_with_its_own_paths(tmp_path: Path) -> None:
    stack = Stack(config(tmp_path))
    server = stack.servers["mosquitto"]
    assert isinstance(server, Mosquitto)
    rendered = dict(d for d in mosquitto_directives(server.render()) if d[0] != "listener")
    conf, data = stack.config.conf_dir("mosquitto"), stack.config.data_dir("mosquitto")
    assert rendered["password_file"] == str(conf / "passwd")
    assert rendered["plugin_opt_owners_file"] == str(conf / "owners")
    assert rendered["persistence_location"] == f"{data}/"
    assert rendered["max_packet_size"] == dict(mosquitto_directives(MOSQUITTO_CONF.read_text()))["max_packet_size"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s + "\nlistener 8883\n", "listener on '8883'"),
        (lambda s: s + "\nuser mosquitto\n", "sets `user`"),
        (lambda s: s + "\nacl_file /elsewhere\n", "sets acl_file twice"),
        (lambda s: s.replace("password_file", "#password_file"), "lacks ['password_file']"),
    ],
)
def test_a_mosquitto_conf_the_local_stack_cannot_follow_is_refused(change: object, message: str) -> None:
    assert callable(change)
    paths = {key: "/x" for key in MOSQUITTO_PATH_SETTINGS}
    with pytest.raises(StackError) as error:
        render_mosquitto_conf(change(MOSQUITTO_CONF.read_text()), paths, {"MQTT_PORT": 1, "MQTT_WS_PORT": 2})
    assert message in str(error.value)


# --------------------------------------------------------------------------- kafka


def test_kafka_variables_map_to_properties_as_the_image_maps_them() -> None:
    assert kafka_property("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "offsets.topic.replication.factor"
    assert kafka_property("KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___512_SASL_JAAS_CONFIG") == (
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"
    )


def kafka_render(tmp_path: Path, **extra: str) -> dict[str, str]:
    server = Stack(config(tmp_path, **extra)).servers["kafka"]
    assert isinstance(server, Kafka)
    return parse_properties(server.render())


def test_the_rendered_server_properties_have_every_setting_of_composes_kafka(tmp_path: Path) -> None:
    service = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["environment"]
    compose = {kafka_property(k): str(v) for k, v in service.items() if k.startswith("KAFKA_")}
    assert compose == compose_kafka_settings(COMPOSE.read_text())
    local = kafka_render(tmp_path)
    for key, value in compose.items():
        if key not in MACHINE_SETTINGS:
            assert local.get(key) == value, f"{key}: Compose has {value!r}, the local stack {local.get(key)!r}"
    assert local["listeners"] == "PLAINTEXT://127.0.0.1:22092,CONTROLLER://127.0.0.1:22093"
    assert local["advertised.listeners"] == "PLAINTEXT://127.0.0.1:22092"
    assert local["controller.quorum.bootstrap.servers"] == "127.0.0.1:22093"
    assert "controller.quorum.voters" not in local
    assert local["log.dirs"] == str(tmp_path.resolve() / "stack" / "data" / "kafka" / "kraft-logs")
    assert (
        local["num.partitions"]
        == compose["num.partitions"]
        == str(StackSettings.model_fields["KAFKA_NUM_PARTITIONS"].default)
    )
    assert kafka_render(tmp_path, KAFKA_NUM_PARTITIONS="7")["num.partitions"] == "7"
    only_local = set(local) - set(compose) - {"controller.quorum.bootstrap.servers", "log.dirs"}
    assert only_local == set(parse_properties(LOCAL_PROPERTIES.read_text()))


def test_local_properties_may_not_change_a_compose_setting() -> None:
    compose = compose_kafka_settings(COMPOSE.read_text())
    ports = {"KAFKA_PORT": 1, "KAFKA_CONTROLLER_PORT": 2}
    with pytest.raises(StackError, match=r"sets \['num.partitions'\], which docker-compose.yml sets"):
        render_kafka_properties(compose, "num.partitions=9\n", ports, num_partitions=3, log_dirs=Path("/x"))
    with pytest.raises(StackError, match="kafka listens on 9094"):
        listeners = {**compose, "listeners": "PLAINTEXT://:9092,OTHER://:9094"}
        render_kafka_properties(listeners, "", ports, num_partitions=3, log_dirs=Path("/x"))


def test_ferretdb_keeps_sqlites_statement_journals_in_memory_in_a_folder_url_it_accepts(tmp_path: Path) -> None:
    """The --sqlite-url FerretDB is given: its folder (ending '/', as FerretDB demands) and temp_store(memory)."""
    built = config(tmp_path, STACK_DIR=str(tmp_path / "a folder with spaces"))
    server = FerretDB(built)
    [url] = [arg.removeprefix("--sqlite-url=") for arg in server.command() if arg.startswith("--sqlite-url=")]
    parts = urlsplit(url)
    assert parts.scheme == "file" and unquote(parts.path).endswith("/")
    assert Path(unquote(parts.path)) == built.data_dir("ferretdb") / "sqlite"
    assert parse_qs(parts.query)["_pragma"] == ["temp_store(memory)"]
