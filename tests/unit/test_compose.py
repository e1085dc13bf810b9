"""docker-compose.yml and the Dockerfiles, checked without Docker.

No Docker engine runs where the tests run, so `docker compose config` cannot
vouch for the file. These tests do what they can instead: validate it against
the Compose Specification's JSON schema (tests/schemas/), hold it to the
project's habits (pinned images, healthchecks that dependents wait on, secrets
only from .env, non-root images), and check it against the code: every
variable given to a Python service is a field of that service's settings, and
every required field is given.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from localstack.testing import compose_cli
from tests.helpers import mosquitto_directives

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "schemas" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"

#: Compose service -> the settings class of the Python package it runs ("module:Class").
PYTHON_SERVICES = {
    "sensor": "Data_collection.settings:Settings",
    "server": "Server.settings:Settings",
    "model_analysis": "Models_analysis.settings:Settings",
    "trainer": "Models_analysis.settings:TrainerSettings",
    "dashboard": "Dashboard.settings:Settings",
}
#: Services that are tools, started only by `docker compose run <tool>` (a profile of their own).
TOOLS = {"train"}
#: A variable whose name contains one of these is a credential.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|USERNAME|TOKEN|KEY")

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, ${NAME:+alt}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def strings(node: Any) -> Iterator[str]:
    """Every string value in the file (keys are never interpolated)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def references(text: str) -> list[re.Match[str]]:
    """The ${...} interpolations in one value; `$$` is an escaped, literal `$`."""
    return list(INTERPOLATION.finditer(text.replace("$$", "")))


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either of Compose's two forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A service's dependencies as {name: options}; the list form means no options."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {} for name in deps}
    return deps


def env_example_keys() -> set[str]:
    keys = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, _ = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            keys.add(key.strip())
    return keys


def dockerfiles() -> list[str]:
    return sorted({s["build"]["dockerfile"] for s in SERVICES.values() if isinstance(s.get("build"), dict)})


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


# --- the file as Compose reads it ----------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    errors = sorted(Draft7Validator(schema).iter_errors(COMPOSE), key=lambda e: list(e.absolute_path))
    messages = ["/".join(str(p) for p in e.absolute_path) + f": {e.message}" for e in errors]
    assert not messages, "docker-compose.yml does not match the Compose Specification:\n" + "\n".join(messages)


def test_no_version_key() -> None:
    assert "version" not in COMPOSE, "docker-compose.yml: drop the obsolete top-level `version:` key"


def test_only_braced_interpolation() -> None:
    # A bare $NAME is interpolated too, but escapes the checks below; a literal $ is written $$.
    bare = [text for text in strings(COMPOSE) if "$" in re.sub(r"\$\$|\$\{[^}]*\}", "", text)]
    assert not bare, f"write ${{NAME}} (or $$ for a literal $) in: {bare}"


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "image" in s))
def test_images_are_pinned(name: str) -> None:
    image = SERVICES[name]["image"]
    if "@sha256:" in image:
        return
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag, f"service {name}: image {image!r} has no tag; pin a release"
    assert tag != "latest", f"service {name}: image {image!r} uses `latest`; pin a release"


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "build" in s))
def test_builds_use_the_repository_root_and_an_existing_dockerfile(name: str) -> None:
    build = SERVICES[name]["build"]
    assert isinstance(build, dict), f"service {name}: give build a context and a dockerfile"
    assert build.get("context") == ".", f"service {name}: build context must be the repo root (.), for pipeline/"
    dockerfile = build.get("dockerfile")
    assert dockerfile and (ROOT / dockerfile).is_file(), f"service {name}: dockerfile {dockerfile!r} does not exist"


@pytest.mark.parametrize("path", dockerfiles())
def test_dockerfiles_run_as_non_root_with_exec_form_cmd(path: str) -> None:
    steps = instructions(ROOT / path)
    froms = [args for word, args in steps if word == "FROM"]
    for base in froms:
        image = base.split()[0]
        assert ":" in image and not image.endswith(":latest"), f"{path}: base image {image!r} is not pinned"
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path}: the final stage needs a non-root USER"
    cmds = [args for word, args in steps if word == "CMD"]
    assert cmds, f"{path}: no CMD"
    assert cmds[-1].startswith("["), f"{path}: CMD must be exec form (python is PID 1 and gets SIGTERM)"
    copies = [args for word, args in steps if word == "COPY"]
    python_dockerfiles = {SERVICES[name]["build"]["dockerfile"] for name in PYTHON_SERVICES}
    if path in python_dockerfiles:
        assert any(re.match(r"(--\S+\s+)*pipeline/\s+pipeline/?$", c) for c in copies), (
            f"{path}: must COPY pipeline/ pipeline/ (the shared package)"
        )


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".git", ".env", ".venv", "tests"):
        assert entry in ignored, f".dockerignore: add {entry}"


# --- startup order ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependents_wait_for_a_healthy_dependency(name: str) -> None:
    for dependency, options in depends_on(SERVICES[name]).items():
        assert dependency in SERVICES, f"service {name} depends on unknown service {dependency}"
        condition = options.get("condition")
        healthcheck = SERVICES[dependency].get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), (
            f"service {dependency} has dependents ({name}) but no healthcheck"
        )
        assert condition == "service_healthy", (
            f"service {name}: wait for {dependency} with condition: service_healthy (got {condition!r})"
        )


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if s.get("healthcheck")))
def test_healthchecks_get_the_variables_they_use(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    used = set(re.findall(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)", command)) - {"SYS"}
    assigned = set(re.findall(r"(?<![\w$])([A-Za-z_][A-Za-z0-9_]*)=", command))  # the check's own shell variables
    missing = used - assigned - set(environment(SERVICES[name]))
    assert not missing, f"service {name}: its healthcheck reads {sorted(missing)}, not in its environment"


# --- scaling ---------------------------------------------------------------------


def test_sensor_can_be_scaled() -> None:
    sensor = SERVICES["sensor"]
    assert "container_name" not in sensor, "service sensor: container_name prevents --scale sensor=N"
    assert "ports" not in sensor, "service sensor: host ports clash between replicas of --scale sensor=N"
    assert "hostname" not in sensor, "service sensor: a fixed hostname gives every replica the same SENSOR_ID"
    assert "SENSOR_ID" not in environment(sensor), (
        "service sensor: leave SENSOR_ID unset (it defaults to the host name)"
    )


# --- secrets and variables -------------------------------------------------------


def test_credentials_come_only_from_env_and_fail_loudly() -> None:
    for text in strings(COMPOSE):
        for ref in references(text):
            name, op, arg = ref["name"], ref["op"], ref["arg"]
            if SECRET_NAME.search(name):
                assert op == ":?" and arg.strip(), f"${{{name}}} is a credential: write ${{{name}:?set it in .env}}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_credential_is_written_in_the_file(name: str) -> None:
    for key, value in environment(SERVICES[name]).items():
        if SECRET_NAME.search(key) or key.endswith("_URI") or key.endswith("_URL"):
            if "@" in value or SECRET_NAME.search(key):
                assert references(value), f"service {name}: {key} holds a literal credential; take it from .env"


def test_required_variables_are_in_env_example() -> None:
    # Variables with a default (${NAME:-x}) are optional knobs; the rest must be in .env.
    documented = env_example_keys()
    required = {r["name"] for text in strings(COMPOSE) for r in references(text) if r["op"] in (None, ":?", "?")}
    missing = sorted(required - documented)
    assert not missing, f"docker-compose.yml needs {missing}, which .env.example (and so `make env`) does not set"


# --- agreement with the code -----------------------------------------------------


def settings_fields(service: str) -> dict[str, Any]:
    return settings_class(service).model_fields


def settings_class(service: str) -> Any:
    module, name = PYTHON_SERVICES[service].split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("service", sorted(PYTHON_SERVICES))
def test_python_services_get_their_required_settings(service: str) -> None:
    assert service in SERVICES, f"docker-compose.yml has no service {service}"
    given = set(environment(SERVICES[service]))
    required = {name for name, field in settings_fields(service).items() if field.is_required()}
    missing = sorted(required - given)
    assert not missing, f"service {service}: required settings {missing} are not in its environment"


@pytest.mark.parametrize("service", sorted(PYTHON_SERVICES))
def test_python_services_get_only_known_settings(service: str) -> None:
    # The settings ignore unknown variables, so a misspelt name would silently do nothing.
    unknown = sorted(set(environment(SERVICES[service])) - set(settings_fields(service)))
    assert not unknown, f"service {service}: {unknown} are not fields of {PYTHON_SERVICES[service]}"


@pytest.mark.parametrize("service", sorted(PYTHON_SERVICES))
def test_python_service_environment_is_valid(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The values themselves pass validation, with each ${VAR} replaced by its default or a stand-in."""

    def interpolate(value: str) -> str:
        def one(ref: re.Match[str]) -> str:
            return ref["arg"] if ref["op"] in (":-", "-") else f"{ref['name'].lower()}-value"

        return INTERPOLATION.sub(one, value.replace("$$", "$"))

    cls = settings_class(service)
    for name in cls.model_fields:
        monkeypatch.delenv(name, raising=False)
    env = {key: interpolate(value) for key, value in environment(SERVICES[service]).items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if service == "model_analysis":
        # The image's model path does not exist here; only its type is checked.
        assert env["MODEL_PATH"].startswith("/app/"), "service model_analysis: MODEL_PATH must be a path in the image"
    cls()


# --- the scripts mounted into the images ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "script", "pattern"),
    [
        ("mosquitto", "mosquitto/docker-entrypoint.sh", r':\s+"\$\{([A-Z_]+):\?'),
        ("mongo", "mongo/10-create-app-user.js", r'required\("([A-Z_]+)"\)'),
    ],
)
def test_mounted_scripts_get_the_variables_they_require(name: str, script: str, pattern: str) -> None:
    needed = set(re.findall(pattern, (ROOT / script).read_text()))
    assert needed, f"{script}: found no required variables; has the script changed?"
    mounts = " ".join(str(v) for v in SERVICES[name].get("volumes", []))
    build = SERVICES[name].get("build")
    if isinstance(build, dict):
        copied = [args for word, args in instructions(ROOT / build["dockerfile"]) if word == "COPY"]
        assert any(args.split()[0] == script for args in copied), f"service {name}: its image does not COPY {script}"
    else:
        assert "./" + script.split("/")[0] in mounts, f"service {name} does not mount {script}"
    missing = sorted(needed - set(environment(SERVICES[name])))
    assert not missing, f"service {name}: {script} requires {missing}, not in its environment"


def test_mosquitto_entrypoint_is_posix_sh() -> None:
    sh = shutil.which("sh")
    assert sh is not None, "no sh on this machine"
    result = subprocess.run([sh, "-n", str(ROOT / "mosquitto/docker-entrypoint.sh")], capture_output=True, text=True)
    assert result.returncode == 0, f"mosquitto/docker-entrypoint.sh: {result.stderr}"


@pytest.mark.parametrize(
    ("accounts", "says"),
    [
        ("s1", "entry 1 is not id:password"),
        ("s1:secret-1,s2:", "entry 2 (s2) has an empty password"),
        ("s1:secret-1,s1:secret-2", "s1 is listed twice"),
        ("s/1:secret-1", "entry 1: the sensor id must be"),
        ("-s1:secret-1", "entry 1: the sensor id must be"),
        ("sensor:secret-1", "entry 1: sensor is already"),
    ],
)
def test_mosquitto_entrypoint_refuses_bad_sensor_accounts(tmp_path: Path, accounts: str, says: str) -> None:
    result = run_entrypoint(tmp_path, MQTT_SENSOR_ACCOUNTS=accounts)
    assert result.returncode == 2
    assert result.stderr.startswith("MQTT_SENSOR_ACCOUNTS: ") and says in result.stderr
    assert "secret" not in result.stderr, "a password reached the message"
    assert not (tmp_path / "auth").exists(), "nothing is written before every entry is checked"


def test_mosquitto_config_uses_the_files_the_entrypoint_writes() -> None:
    conf = (ROOT / "mosquitto/mosquitto.conf").read_text()
    entrypoint = (ROOT / "mosquitto/docker-entrypoint.sh").read_text()
    auth_dir = re.search(r'auth_dir="\$\{MOSQUITTO_AUTH_DIR:-([^}]+)\}"', entrypoint)
    assert auth_dir, "mosquitto/docker-entrypoint.sh: no default auth_dir"
    for setting, file in (("password_file", "passwd"), ("acl_file", "acl")):
        assert re.search(rf"^{setting} {re.escape(auth_dir[1])}/{file}$", conf, re.M), (
            f"mosquitto/mosquitto.conf: {setting} must be {auth_dir[1]}/{file}, where the entrypoint writes it"
        )


# --- one broker configuration for Compose and the local stack -------------------------

#: Settings that must be in mosquitto/mosquitto.conf: the limits and the security that both stacks share.
MOSQUITTO_REQUIRED = (
    "per_listener_settings",
    "allow_anonymous",
    "plugin",
    "plugin_opt_owners_file",
    "persistence",
    "autosave_interval",
    "max_queued_messages",
    "max_queued_bytes",
    "max_inflight_messages",
    "max_packet_size",
    "set_tcp_nodelay",
)


def local_mosquitto_conf(run_as_root: bool = False) -> str:
    from localstack.stack import MOSQUITTO_CONF, MOSQUITTO_PATH_SETTINGS, render_mosquitto_conf

    paths = {key: f"/local/{key}" for key in MOSQUITTO_PATH_SETTINGS}
    return render_mosquitto_conf(
        MOSQUITTO_CONF.read_text(), paths, {"MQTT_PORT": 21883, "MQTT_WS_PORT": 21884}, run_as_root=run_as_root
    )


@pytest.mark.parametrize("run_as_root", [False, True])
def test_the_local_stack_runs_composes_mosquitto_settings(run_as_root: bool) -> None:
    """Only paths, listeners and `user` may differ between the two brokers; every limit is the same."""
    from localstack.stack import MOSQUITTO_PATH_SETTINGS

    local_only = {*MOSQUITTO_PATH_SETTINGS, "listener", "user"}
    compose = mosquitto_directives((ROOT / "mosquitto/mosquitto.conf").read_text())
    local = mosquitto_directives(local_mosquitto_conf(run_as_root))
    assert [s for s in compose if s[0] not in local_only] == [s for s in local if s[0] not in local_only]
    assert [k for k, _ in compose if k in local_only] == [k for k, _ in local if k in local_only and k != "user"]
    assert (("user", "root") in local) == run_as_root
    listeners = [v for k, v in local if k == "listener"]
    assert listeners == ["21883 127.0.0.1", "21884 127.0.0.1"], "the local stack listens on loopback only"


def test_mosquitto_conf_states_the_limits() -> None:
    settings = dict(mosquitto_directives((ROOT / "mosquitto/mosquitto.conf").read_text()))
    missing = [key for key in MOSQUITTO_REQUIRED if key not in settings]
    assert not missing, f"mosquitto/mosquitto.conf: set {missing}"
    assert settings["allow_anonymous"] == "false" and settings["per_listener_settings"] == "false"
    for key in ("max_queued_messages", "max_queued_bytes", "max_packet_size"):
        assert int(settings[key]) > 0, f"mosquitto/mosquitto.conf: {key} 0 means no limit"
    # Mosquitto 2.0 answers a payload over message_size_limit with PUBACK reason 149, which MQTT 5
    # does not allow in a PUBACK: paho-mqtt drops the connection and resends the message forever.
    assert "message_size_limit" not in settings, "limit sizes with max_packet_size (see mosquitto.conf)"
    assert settings["plugin"] == "/usr/lib/mosquitto_client_owners.so"
    dockerfile = [args for word, args in instructions(ROOT / "mosquitto/Dockerfile") if word == "COPY"]
    assert any(args.endswith(" " + settings["plugin"]) for args in dockerfile), "mosquitto/Dockerfile: COPY the plugin"
    assert any(args == "mosquitto/mosquitto.conf /mosquitto/config/mosquitto.conf" for args in dockerfile)


def compose_default(service: str, variable: str) -> str:
    value = environment(SERVICES[service])[variable]
    ref = INTERPOLATION.fullmatch(value)
    assert ref and ref["op"] == ":-", f"service {service}: give {variable} a default, ${{{variable}:-...}}"
    return ref["arg"]


def client_ids_match(patterns: str, client_id: str) -> bool:
    """The client_owners plugin's rule: '*' matches any run of characters, nothing else is special."""
    return any(
        re.fullmatch(".*".join(map(re.escape, p.split("*"))), client_id) for p in patterns.replace(",", " ").split()
    )


def test_the_bridge_and_the_healthcheck_use_client_ids_mosquitto_gives_the_bridges_user() -> None:
    """Mosquitto refuses the bridge's user any client id outside MQTT_SERVER_CLIENT_IDS."""
    from localstack.stack import StackConfig

    patterns = compose_default("mosquitto", "MQTT_SERVER_CLIENT_IDS")
    entrypoint = (ROOT / "mosquitto/docker-entrypoint.sh").read_text()
    assert f"${{MQTT_SERVER_CLIENT_IDS:-{patterns}}}" in entrypoint, "the entrypoint's default differs from Compose's"
    assert StackConfig.__dataclass_fields__["mqtt_server_client_ids"].default == patterns
    bridge = environment(SERVICES["server"])["MQTT_CLIENT_ID"]
    assert client_ids_match(patterns, bridge), f"server's MQTT_CLIENT_ID {bridge} is not in {patterns}"
    test = " ".join(SERVICES["mosquitto"]["healthcheck"]["test"])
    probe = re.search(r"-i (\S+)", test)
    assert probe and "MQTT_SERVER_USERNAME" in test, "the healthcheck logs in as the bridge's user with -i <id>"
    assert client_ids_match(patterns, probe[1]) and probe[1] != bridge, (
        f"the healthcheck's client id {probe[1]} must be one of the bridge's ({patterns}) that no bridge uses"
    )


def run_entrypoint(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "MOSQUITTO_AUTH_DIR": str(tmp_path / "auth"),
        "MOSQUITTO_DATA_DIR": str(tmp_path / "data"),
        "MOSQUITTO_OWNER": "",
        "MQTT_SERVER_USERNAME": "bridge",
        "MQTT_SERVER_PASSWORD": "secret-b",
        "MQTT_SENSOR_USERNAME": "sensor",
        "MQTT_SENSOR_PASSWORD": "secret-s",
        **variables,
    }
    script = str(ROOT / "mosquitto/docker-entrypoint.sh")
    return subprocess.run(["sh", script, "true"], env=env, capture_output=True, text=True, check=False)


def test_mosquitto_entrypoint_writes_the_client_id_owners(tmp_path: Path) -> None:
    assert shutil.which("mosquitto_passwd"), "mosquitto_passwd is missing: run `bash localstack/install.sh`"
    result = run_entrypoint(tmp_path, MQTT_SERVER_CLIENT_IDS="bridge-*,edge-1", MQTT_SENSOR_ACCOUNTS="s1:p1,s2:p2")
    assert result.returncode == 0, result.stderr
    lines = [line for line in (tmp_path / "auth/owners").read_text().splitlines() if not line.startswith("#")]
    assert lines == [
        "owner bridge bridge-*",
        "owner bridge edge-1",
        "readonly bridge",
        "owner s1 s1",
        "owner s2 s2",
    ]
    assert (tmp_path / "auth/owners").stat().st_mode & 0o077 == 0, "the owners file is private"
    default = run_entrypoint(tmp_path / "default")
    assert default.returncode == 0, default.stderr
    assert "owner bridge bridge-*" in (tmp_path / "default/auth/owners").read_text().splitlines()


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"MQTT_SERVER_CLIENT_IDS": "bridge-*,*"}, "'*' would give the bridge every client id"),
        ({"MQTT_SERVER_CLIENT_IDS": "**"}, "'**' would give the bridge every client id"),
        ({"MQTT_SERVER_CLIENT_IDS": "bridge/1"}, "'bridge/1' may hold only"),
        ({"MQTT_SERVER_CLIENT_IDS": ","}, "MQTT_SERVER_CLIENT_IDS names no client id"),
        (
            {"MQTT_SERVER_CLIENT_IDS": "bridge-*", "MQTT_SENSOR_ACCOUNTS": "s1:secret-1,bridge-7:secret-2"},
            "MQTT_SENSOR_ACCOUNTS: entry 2: bridge-7 is one of the bridge's client ids",
        ),
        ({"MQTT_SERVER_USERNAME": "the bridge"}, "must not contain ':' or white space"),
    ],
)
def test_mosquitto_entrypoint_refuses_client_ids_it_cannot_give_one_owner(
    tmp_path: Path, variables: dict[str, str], says: str
) -> None:
    result = run_entrypoint(tmp_path, **variables)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "secret" not in result.stderr, "a password reached the message"
    assert not (tmp_path / "auth").exists(), "nothing is written before every setting is checked"


def env_example_values() -> dict[str, str]:
    """.env.example's keys and values, as `make env` writes them (a stand-in for each random secret)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip() if value.strip() and not value.strip().endswith(":") else "x"
    return values


def compose_config(
    tmp_path: Path,
    *files: Path,
    args: tuple[str, ...] = ("--quiet",),
    options: tuple[str, ...] = (),
    dotenv: dict[str, str | None] | None = None,
    environ: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`docker compose [options] config [args]` with the real Compose CLI that localstack/install.sh builds.

    The project's .env is what `make env` writes, changed by `dotenv` (None drops
    a key); `environ` is the shell's environment, which Compose prefers to .env.
    The caller's own environment never leaks a project variable in.
    """
    cli = compose_cli()
    assert cli.exists(), f"no Compose CLI at {cli}: run `bash localstack/install.sh` (make install)"
    values: dict[str, str | None] = {**env_example_values(), "LINE_1_PASSWORD": "x", **(dotenv or {})}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in sorted(values.items()) if value is not None))
    env = {k: v for k, v in os.environ.items() if k not in values and not k.startswith("COMPOSE_")}
    env.update(environ or {})
    command = [str(cli), "--env-file", str(env_file), *options]
    for file in files:
        command += ["-f", str(file)]
    return subprocess.run([*command, "config", *args], capture_output=True, text=True, cwd=ROOT, env=env, check=False)


def resolved(tmp_path: Path, *args: str, **kwargs: Any) -> dict[str, Any]:
    """The project as Compose resolves it (`config --format json`), for the services named in args (or all)."""
    result = compose_config(tmp_path, COMPOSE_FILE, args=("--format", "json", *args), **kwargs)
    assert result.returncode == 0, result.stderr
    project: dict[str, Any] = json.loads(result.stdout)
    return project


def test_compose_file_resolves_with_the_compose_cli(tmp_path: Path) -> None:
    result = compose_config(tmp_path, COMPOSE_FILE)
    assert result.returncode == 0, result.stderr


def test_the_readmes_override_for_a_sensor_with_its_own_user_resolves(tmp_path: Path) -> None:
    """The docker-compose.override.yml the README's Security section shows, merged as Compose merges it."""
    readme = (ROOT / "README.md").read_text()
    security = readme.split("\n## Security", 1)[1]
    block = security.split("docker-compose.override.yml", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    override = ROOT / f".test-override-{uuid.uuid4().hex[:8]}.yml"  # beside docker-compose.yml: `file:` is relative
    override.write_text(block)
    try:
        result = compose_config(tmp_path, COMPOSE_FILE, override, args=("--format", "json"))
    finally:
        override.unlink()
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["sensor-line-1"]
    assert service["environment"]["SENSOR_ID"] == "line-1" and service["environment"]["MQTT_USERNAME"] == "line-1"
    assert (
        service["build"]
        == json.loads(compose_config(tmp_path, COMPOSE_FILE, args=("--format", "json")).stdout)["services"]["sensor"][
            "build"
        ]
    ), "the override must build the same sensor image"


def test_the_readmes_override_for_settings_reaches_the_services_and_keeps_theirs(tmp_path: Path) -> None:
    """The Settings section's docker-compose.override.yml: its variables reach the services, the file's stay."""
    readme = (ROOT / "README.md").read_text()
    settings = readme.split("## Settings", 1)[1]
    block = settings.split("```yaml", 1)[1].split("```", 1)[0]
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(block)
    result = compose_config(tmp_path, COMPOSE_FILE, override, args=("--format", "json"))
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["model_analysis"]["environment"]["MODEL_ADAPTIVE_GAMMA"] == "0.01"
    assert services["model_analysis"]["environment"]["MODEL_PATH"] == "/app/default-models/default.joblib"
    assert services["trainer"]["environment"]["TRAINER_EVERY_S"] == "43200"
    assert "MONGO_URI" in services["trainer"]["environment"], "merged into the service's own, not replacing it"
    for name in yaml.safe_load(block)["services"]:
        for variable in yaml.safe_load(block)["services"][name]["environment"]:
            assert f"| `{variable}`" in readme, f"{variable} is a setting of the README's table"


# --- Docker as the README documents it ------------------------------------------------

README = ROOT / "README.md"
#: Compose's global options that take a value (`docker compose [OPTIONS] COMMAND`).
COMPOSE_OPTIONS_WITH_VALUE = {"-f", "--file", "-p", "--project-name", "--profile", "--env-file", "--project-directory"}


def code_in(markdown: str) -> list[str]:
    """The code a Markdown text shows: each line of its fenced blocks, and each `inline` span."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    return [line for block in blocks for line in block.splitlines()] + re.findall(r"`([^`\n]+)`", prose)


def documented_compose_commands(command: str) -> list[tuple[list[str], list[str]]]:
    """(global options, arguments) of every `docker compose [options] <command> ...` that the README's code
    and docker-compose.yml's comments show a user."""
    comments = [line.split("#", 1)[1] for line in COMPOSE_FILE.read_text().splitlines() if "#" in line]
    found = []
    for code in code_in(README.read_text()) + comments:
        for match in re.finditer(r"docker compose\b([^#`;&|)]*)", code):
            words = shlex.split(match[1].rstrip(" \\"))  # a continued line ends in a backslash
            options = []
            while words and words[0].startswith("-"):
                options.append(words.pop(0))
                if options[-1] in COMPOSE_OPTIONS_WITH_VALUE and words:
                    options.append(words.pop(0))
            if words and words[0] == command:
                found.append((options, words[1:]))
    return found


def readme_section(title: str) -> str:
    """A README section's text, from its heading (any level) to the next heading of the same or a higher level
    (a `#` line inside a fenced code block is a comment, not a heading)."""
    lines, level, fenced = [], 0, False
    for line in README.read_text().splitlines():
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"(#+) (.*?)\s*$", line)
        if heading and level and len(heading[1]) <= level:
            break
        if level:
            lines.append(line)
        elif heading and heading[2] == title:
            level = len(heading[1])
    assert level, f"README.md has no section {title!r}"
    return "\n".join(lines)


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile's last stage (the image that runs)."""
    steps = instructions(dockerfile)
    start = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[start + 1 :]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV values a stage sets (KEY=value form)."""
    return dict(word.split("=", 1) for w, args in stage if w == "ENV" for word in shlex.split(args) if "=" in word)


def test_every_documented_up_keeps_the_sensors_the_user_asked_for(tmp_path: Path) -> None:
    """`up` without --scale sets every service back to its scale in the file: for the sensors, SENSORS (.env).

    So each documented `up` (make up's, a plain one, the monitoring profile's) must leave the count
    to the file, and the file must take it from SENSORS, the shell's value first.
    """
    ups = documented_compose_commands("up")
    assert any("monitoring" in options for options, _ in ups), f"found no documented monitoring `up`: {ups}"
    assert len(ups) >= 3, f"found too few documented `docker compose up` commands: {ups}"
    for options, args in ups:
        line = " ".join(["docker compose", *options, "up", *args])
        assert not any(arg.startswith("--scale") for arg in args), (
            f"README: `{line}`: --scale lasts only until the next `up` without it; the count is SENSORS in .env"
        )
        for sensors, expected in ((None, 3), ("7", 7), ("0", 0)):
            project = resolved(tmp_path, options=tuple(options), dotenv={"SENSORS": sensors})
            scale = project["services"]["sensor"].get("scale")
            assert scale == expected, f"`{line}` with SENSORS={sensors} in .env runs {scale} sensors, not {expected}"
    assert env_example_values().get("SENSORS") == "3", ".env.example: SENSORS=3 (what `make env` writes)"
    shell = resolved(tmp_path, dotenv={"SENSORS": "7"}, environ={"SENSORS": "10"})
    assert shell["services"]["sensor"]["scale"] == 10, "the shell's SENSORS (`make up SENSORS=10`) must win over .env's"


def test_start_interval_has_its_start_period_and_the_readme_states_docker_engine_25(tmp_path: Path) -> None:
    """start_interval came with Docker Engine 25; Compose refuses it at `up` without start_period."""
    project = resolved(tmp_path, options=("--profile", "*"))
    with_interval = [name for name, s in project["services"].items() if s.get("healthcheck", {}).get("start_interval")]
    for name in with_interval:
        assert project["services"][name]["healthcheck"].get("start_period"), (
            f"service {name}: start_interval without start_period (`up` fails: 'healthcheck.start_interval "
            "requires healthcheck.start_period to be set')"
        )
    if with_interval:
        docker = readme_section("Docker")
        assert re.search(r"Docker Engine 25(\.0)? or newer", docker), (
            "README, Docker: healthcheck.start_interval needs Docker Engine 25; state it as the minimum"
        )
        assert re.search(r"Compose v2\.\d+(\.\d+)? or newer", docker), "README, Docker: state the minimum Compose"


def test_train_is_a_tool_only_docker_compose_run_starts(tmp_path: Path) -> None:
    """`docker compose run --rm train ...` trains a model into ./models with the model service's own image."""
    for options in ((), ("--profile", "monitoring")):
        assert "train" not in resolved(tmp_path, options=options)["services"], "`up` must not start the train tool"
    project = resolved(tmp_path, "train", "model_analysis")  # naming a service enables its profile, as `run` does
    train, model = project["services"]["train"], project["services"]["model_analysis"]
    assert train["build"] == model["build"], "train must build the model service's image"
    assert train.get("pull_policy") == "build", "train: pull_policy: build (the code as it is now, as `up --build`)"
    writable = [v for v in train.get("volumes", []) if v["target"] == "/app/models"]
    assert writable and writable[0]["source"] == str(ROOT / "models") and not writable[0].get("read_only"), (
        "train must mount ./models at /app/models, writable"
    )
    served = [v for v in model.get("volumes", []) if v["target"] == "/app/models"]
    assert served and served[0]["source"] == str(ROOT / "models") and served[0].get("read_only"), (
        "model_analysis reads ./models at /app/models, read-only"
    )
    workdir = [args for word, args in final_stage(ROOT / "Models_analysis/Dockerfile") if word == "WORKDIR"][-1]
    assert workdir.rstrip("/") + "/models" == "/app/models", "the README's models/... paths are relative to WORKDIR"


def test_train_runs_as_the_owner_of_the_models_folder(tmp_path: Path) -> None:
    """The tool drops from root to the uid and gid that own ./models, so the model it writes is the user's."""
    train = resolved(tmp_path, "train")["services"]["train"]
    assert train.get("user") in ("root", "0"), "train starts as root, only to take the owner of models/"
    entrypoint = [part.replace("$$", "$") for part in train["entrypoint"]]  # Compose's escaped $
    (tmp_path / "models").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "setpriv").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (bin_dir / "setpriv").chmod(0o755)
    args = ["--csv", "models/my data.csv", "--out", "models/mine.joblib"]
    result = subprocess.run(
        [*entrypoint, *args], cwd=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    owner = (tmp_path / "models").stat()
    assert result.stdout.splitlines() == [
        f"--reuid={owner.st_uid}",
        f"--regid={owner.st_gid}",
        "--clear-groups",
        "python",
        "-m",
        "Models_analysis.train",
        *args,
    ]
    assert train["environment"].get("MPLCONFIGDIR", "").startswith("/tmp/"), (
        "train: the host's uid has no home in the image; give matplotlib a folder any user can create"
    )


def test_the_readmes_train_commands_write_into_the_models_mount() -> None:
    runs = [args for _, args in documented_compose_commands("run") if "train" in args]
    assert runs, "README: show how to train with `docker compose run --rm train ...`"
    for args in runs:
        line = " ".join(["docker compose run", *args])
        assert "--rm" in args[: args.index("train")], f"README: `{line}`: add --rm (a tool leaves no container)"
        rest = args[args.index("train") + 1 :]
        if rest == ["..."]:
            continue  # a mention, not a command to copy
        assert "--out" in rest and rest[rest.index("--out") + 1].startswith("models/"), (
            f"README: `{line}`: write the model under models/ (./models), or it is lost with the container"
        )
        if "--csv" in rest:
            assert rest[rest.index("--csv") + 1].startswith(("models/", "Data_collection/")), (
                f"README: `{line}`: the tool sees ./models (models/...) and the demo data, nothing else of the host"
            )


def test_the_settings_table_gives_the_model_path_compose_uses() -> None:
    default = compose_default("model_analysis", "MODEL_PATH")
    assert env_of(final_stage(ROOT / "Models_analysis/Dockerfile")).get("MODEL_PATH") == default, (
        "Models_analysis/Dockerfile trains its model where Compose's MODEL_PATH default points"
    )
    row = next((line for line in README.read_text().splitlines() if line.startswith("| `MODEL_PATH`")), "")
    assert f"`{default}`" in row, f"README, Settings: MODEL_PATH's default under Compose is {default}"


def test_the_readme_recreates_the_model_service_to_change_its_settings() -> None:
    """`docker compose restart` keeps a container's environment: a changed .env needs `up` (a new container)."""
    swap = readme_section("Models")
    assert not re.search(r"elsewhere\s+and\s+restart", swap), "README, Models: `restart` does not read .env again"
    code = [line.split("#", 1)[0].strip() for line in code_in(swap)]
    assert "docker compose up -d model_analysis" in code, (
        "README, Models: show `docker compose up -d model_analysis` after MODEL_PATH changed in .env"
    )


@pytest.mark.parametrize(
    ("mongosh", "status", "says"),
    [
        ("exit 0", 0, ""),
        ('echo "MongoServerError: Authentication failed." >&2; exit 1', 1, "docker compose down -v"),
        ('echo "MongoNetworkError: connect ECONNREFUSED 172.18.0.2:27017" >&2; exit 1', 1, "ECONNREFUSED"),
    ],
)
def test_the_mongo_healthcheck_says_when_the_volume_holds_other_credentials(
    tmp_path: Path, mongosh: str, status: int, says: str
) -> None:
    """A .env made anew beside an old mongo-data volume: the check fails for good, and says why and what to do."""
    test = resolved(tmp_path, "mongo")["services"]["mongo"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mongosh").write_text(f"#!/bin/sh\n{mongosh}\n")
    (bin_dir / "mongosh").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "MONGO_APP_USERNAME": "pipeline",
        "MONGO_APP_PASSWORD": "secret-p",
        "MONGO_DATABASE": "sensor_pipeline",
    }
    result = subprocess.run(["/bin/sh", "-c", test[1].replace("$$", "$")], env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert says in output
    assert ("down -v" in output) == ("Authentication failed" in mongosh), output
    assert "secret-p" not in output, "a password reached the health log"
    if "down -v" in output:
        assert "Troubleshooting" in output and readme_section("Troubleshooting"), "the hint points at the README"
        assert "docker compose down -v" in readme_section("Troubleshooting")


@pytest.mark.parametrize("path", sorted({SERVICES[name]["build"]["dockerfile"] for name in PYTHON_SERVICES}))
def test_python_runs_at_build_time_as_the_runtime_user(path: str) -> None:
    """Code run at build time as root leaves root-owned caches (matplotlib's font cache, for one) that the
    runtime user cannot write: it warns and builds them again at every start."""
    stage = final_stage(ROOT / path)
    runtime_user = [args for word, args in stage if word == "USER"][-1]
    user = "root"
    for word, args in stage:
        if word == "USER":
            user = args
        elif word == "RUN" and re.search(r"\bpython\b", args):
            assert user == runtime_user, f"{path}: `RUN {args[:50]}...` runs as {user}; run it as {runtime_user}"


def test_the_model_image_builds_matplotlibs_cache_for_its_runtime_user() -> None:
    stage = final_stage(ROOT / "Models_analysis/Dockerfile")
    runtime_user = [args for word, args in stage if word == "USER"][-1]
    config_dir = env_of(stage).get("MPLCONFIGDIR", "")
    assert config_dir, "Models_analysis/Dockerfile: set MPLCONFIGDIR (Prophet imports matplotlib)"
    home = next((args for word, args in stage if word == "RUN" and "useradd" in args and "--create-home" in args), "")
    assert home.split()[-1] == runtime_user, "the runtime user needs a home"
    assert config_dir.startswith(f"/home/{runtime_user}/"), (
        f"MPLCONFIGDIR={config_dir}: keep it in {runtime_user}'s home, which only that user writes"
    )
    trains = [i for i, (word, args) in enumerate(stage) if word == "RUN" and "Models_analysis.train" in args]
    assert trains, "the image trains its default model (and so builds matplotlib's cache) at build time"


def test_the_readme_says_what_becomes_of_a_scaled_sensors_id() -> None:
    """Compose gives replicas no settings of their own: their ids are host names, new on every recreate."""
    docker = readme_section("Docker")
    assert re.search(r"recreat", docker) and "SENSOR_ID" in docker, (
        "README, Docker: say that a replica's id changes when Compose recreates it, and how to give a sensor a "
        "stable one (a service of its own with SENSOR_ID)"
    )
    assert "SENSOR_ID" not in environment(SERVICES["sensor"]), "the replicas share one environment"


# --- monitoring: Prometheus and Grafana (the `monitoring` profile) ------------------------

MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
GRAFANA_PROVISIONING = MONITORING / "grafana" / "provisioning"
GRAFANA_DASHBOARDS = MONITORING / "grafana" / "dashboards"
#: Modules that define the services' Prometheus metrics.
METRICS_MODULES = sorted([*ROOT.glob("*/metrics.py")])
#: Series Prometheus makes itself, not the code.
PROMETHEUS_SERIES = {"up"}
#: PromQL words that are not metric names (functions, aggregations, keywords).
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta",
    "deriv", "histogram_quantile", "clamp_min", "clamp_max", "abs", "time", "vector", "scalar", "label_replace",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "changes", "resets", "absent",
}  # fmt: skip


def mounts(service: str) -> dict[str, str]:
    """A service's bind mounts as {target in the container: source on the host} (short syntax)."""
    result = {}
    for volume in SERVICES[service].get("volumes", []):
        source, _, rest = str(volume).partition(":")
        result[rest.split(":")[0]] = source
    return result


def code_metric_names() -> dict[str, str]:
    """Every series name the code exposes -> the metric's type (Counter, Gauge or Histogram)."""
    found: dict[str, str] = {}
    for module in METRICS_MODULES:
        for kind, name in re.findall(
            r'\b(Counter|Gauge|Histogram)\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', module.read_text()
        ):
            if kind == "Counter":
                found[name.removesuffix("_total") + "_total"] = kind
            elif kind == "Histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    found[name + suffix] = kind
            else:
                found[name] = kind
    return found


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: label matchers, ranges, strings and by (...) dropped."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return words - PROMQL_WORDS


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of a Grafana dashboard, rows' nested panels included."""

    def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for panel in node.get("panels", []):
            yield panel
            yield from panels(panel)

    dashboard = json.loads(path.read_text())
    return [(p.get("title", "?"), t["expr"]) for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def scrape_targets() -> dict[str, set[str]]:
    """Prometheus's targets: {"static": {"host:port", ...}, "dns_a": {"name:port", ...}}."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets: dict[str, set[str]] = {"static": set(), "dns_a": set()}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets["static"].update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", (
                f"{PROMETHEUS_CONFIG}: job {job['job_name']}: use type A (Docker's DNS)"
            )
            targets["dns_a"].update(f"{name}:{dns['port']}" for name in dns["names"])
    return targets


def metrics_port(service: str) -> str:
    env = environment(SERVICES[service])
    return env.get("DASHBOARD_PORT") or env.get("HEALTH_PORT") or "8000"


@pytest.mark.parametrize("name", ["prometheus", "grafana", "alertmanager"])
def test_monitoring_services_start_only_with_their_profile(name: str) -> None:
    assert name in SERVICES, f"docker-compose.yml has no service {name}"
    assert SERVICES[name].get("profiles") == ["monitoring"], f'service {name}: set profiles: ["monitoring"]'
    assert SERVICES[name].get("healthcheck", {}).get("test"), f"service {name}: add a healthcheck"
    for other, service in SERVICES.items():
        if other not in ("prometheus", "grafana", "alertmanager"):
            if other not in TOOLS:
                assert "profiles" not in service, f"service {other}: the pipeline itself must start with a plain `up`"
            assert not set(depends_on(service)) & {"prometheus", "grafana", "alertmanager"}, (
                f"service {other} depends on monitoring"
            )


def test_prometheus_mounts_its_config() -> None:
    assert mounts("prometheus").get("/etc/prometheus/prometheus.yml") == "./monitoring/prometheus.yml"
    command = " ".join(SERVICES["prometheus"].get("command", []))
    assert "--config.file=/etc/prometheus/prometheus.yml" in command, "service prometheus: --config.file"


@pytest.mark.parametrize("service", sorted(PYTHON_SERVICES))
def test_prometheus_scrapes_every_python_service(service: str) -> None:
    targets = scrape_targets()
    target = f"{service}:{metrics_port(service)}"
    if "container_name" in SERVICES[service] or service == "sensor":
        # Scaled with --scale: one target per replica, from Docker's DNS.
        assert target in targets["dns_a"], f"{PROMETHEUS_CONFIG}: scrape {target} with dns_sd_configs (type A)"
    else:
        assert target in targets["static"] | targets["dns_a"], f"{PROMETHEUS_CONFIG}: no scrape target {target}"


def test_prometheus_scrapes_only_compose_services() -> None:
    targets = scrape_targets()
    for target in targets["static"] | targets["dns_a"]:
        host = target.rsplit(":", 1)[0]
        assert host in SERVICES, f"{PROMETHEUS_CONFIG}: target {target} is not a service of docker-compose.yml"


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "no promtool: run `bash localstack/install.sh` (Debian's prometheus package)"
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, f"promtool check config: {result.stdout}{result.stderr}"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboards() -> None:
    grafana_mounts = mounts("grafana")
    assert grafana_mounts.get("/etc/grafana/provisioning") == "./monitoring/grafana/provisioning"
    datasources = [
        source
        for file in sorted((GRAFANA_PROVISIONING / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(file.read_text())["datasources"]
    ]
    prometheus = [d for d in datasources if d["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["url"] == "http://prometheus:9090", datasources
    uids = {d["uid"] for d in prometheus}
    providers = [
        p
        for file in sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(file.read_text())["providers"]
    ]
    assert providers, "monitoring/grafana/provisioning/dashboards: no dashboards provider"
    for provider in providers:
        path = provider["options"]["path"]
        assert grafana_mounts.get(path) == "./monitoring/grafana/dashboards", (
            f"the dashboards provider reads {path}, where service grafana does not mount monitoring/grafana/dashboards"
        )
    # Every panel queries the provisioned data source.
    text = (GRAFANA_DASHBOARDS / "pipeline.json").read_text()
    used = set(re.findall(r'"uid":\s*"([^"]+)"', text)) - {json.loads(text)["uid"]}
    assert used <= uids, f"pipeline.json uses data sources {sorted(used - uids)}, not provisioned"


def test_dashboard_uses_only_metrics_the_code_exposes() -> None:
    known = code_metric_names()
    assert {"pipeline_readings_received_total", "pipeline_publish_to_stored_seconds_bucket"} <= set(known), (
        "found too few metrics in */metrics.py; has the way they are declared changed?"
    )
    exprs = dashboard_exprs(GRAFANA_DASHBOARDS / "pipeline.json")
    assert exprs, "pipeline.json has no queries"
    unknown = {
        f"{title}: {name}"
        for title, expr in exprs
        for name in metric_names_in(expr)
        if name not in known and name not in PROMETHEUS_SERIES
    }
    assert not unknown, f"pipeline.json queries metrics no service exposes: {sorted(unknown)}"
    for title, expr in exprs:
        assert metric_names_in(expr), f"pipeline.json: panel {title!r}: no metric in {expr!r}"
        for name in metric_names_in(expr):
            if known.get(name) == "Counter":
                assert re.search(rf"\b(rate|irate|increase)\(\s*{name}\b", expr), (
                    f"pipeline.json: panel {title!r}: counter {name} needs rate() or increase()"
                )


def test_dashboard_covers_the_pipeline() -> None:
    queries = dashboard_exprs(GRAFANA_DASHBOARDS / "pipeline.json")
    exprs = " ".join(expr for _, expr in queries)
    for name in (
        "pipeline_readings_received_total",
        "pipeline_readings_stored_total",
        "pipeline_readings_forwarded_total",
        "pipeline_rejections_total",
        "pipeline_readings_scored_total",
        "pipeline_anomalies_total",
        "pipeline_consumer_lag",
        "pipeline_bridge_inbox",
        "pipeline_sensor_pending",
        "pipeline_connected",
        "pipeline_connections_total",
        "pipeline_model_info",
    ):
        assert name in exprs, f"pipeline.json: no panel shows {name}"
    hops = {
        name.removesuffix("_bucket") for name in code_metric_names() if re.match(r"pipeline_.*_seconds_bucket$", name)
    }
    work = {
        "pipeline_predict_seconds",
        "pipeline_dashboard_query_seconds",
        "pipeline_mongo_write_seconds",
        "pipeline_timeline_flush_seconds",
    }
    assert "pipeline_mongo_write_seconds" in exprs, "pipeline.json: no panel shows the MongoDB insert time"
    hops -= work  # work times, not hops
    assert len(hops) >= 4, hops
    for hop in hops:
        for q in ("0.5", "0.95", "0.99"):
            pattern = rf"histogram_quantile\({q},.*\brate\({hop}_bucket\b"
            assert any(re.search(pattern, expr) for _, expr in queries), f"pipeline.json: no p{q} of {hop}"


def test_make_up_leaves_the_sensor_count_to_the_file() -> None:
    """`--scale` on `make up` would override SENSORS in .env (the file's `scale:` already reads it)."""
    recipe = re.search(r"^up:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None, "Makefile: no up target"
    assert "docker compose up" in recipe.group(1) and "--scale" not in recipe.group(1)


@pytest.mark.parametrize("service", ["Data_collection", "Server", "Models_analysis", "Dashboard"])
def test_images_install_from_their_hashed_lock(service: str) -> None:
    steps = instructions(ROOT / service / "Dockerfile")
    runs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert runs == [f"pip install --require-hashes -r {service}/requirements.lock"], runs
    copies = [args for word, args in steps if word == "COPY"]
    assert f"{service}/requirements.lock {service}/requirements.lock" in copies


def test_sensors_keep_their_spool_on_a_volume(tmp_path: Path) -> None:
    """What a sensor has not had acknowledged outlives its container (README "What happens when something fails")."""
    spool = env_of(final_stage(ROOT / "Data_collection/Dockerfile")).get("SENSOR_SPOOL_DIR")
    assert spool, "Data_collection/Dockerfile: set SENSOR_SPOOL_DIR"
    made = [a for w, a in final_stage(ROOT / "Data_collection/Dockerfile") if w == "RUN" and spool in a]
    assert made and "-o app" in made[0], "the spool folder must exist in the image, owned by the runtime user"
    sensor = resolved(tmp_path)["services"]["sensor"]
    volumes = [v for v in sensor.get("volumes", []) if v.get("target") == spool]
    assert volumes and volumes[0]["type"] == "volume", f"sensor: mount a named volume at {spool}"


def test_retention_settings_reach_the_bridge_from_env(tmp_path: Path) -> None:
    names = [
        "SERVER_RETENTION_RAW_DAYS",
        "SERVER_RETENTION_HOURLY_DAYS",
        "SERVER_RETENTION_DAILY_DAYS",
        "SERVER_RETENTION_REJECTIONS_DAYS",
        "SERVER_RETENTION_ALERTS_DAYS",
    ]
    defaults = resolved(tmp_path, "server")["services"]["server"]["environment"]
    assert [defaults[name] for name in names] == ["30", "400", "0", "30", "90"], "the README's defaults"
    chosen = {name: str(7 + i) for i, name in enumerate(names)}
    environment = resolved(tmp_path, "server", dotenv=dict(chosen))["services"]["server"]["environment"]
    assert {name: environment[name] for name in names} == chosen
