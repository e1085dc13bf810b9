"""docker-compose.replicaset.yml, the replicated MongoDB opt-in, merged by the real Compose CLI.

No engine runs here, so the replica set itself never starts in these tests:
they hold the merged project to what the mongo image and mongod need (read from
the image's entry point, docker-library/mongo 8.0/docker-entrypoint.sh) and to
what the services' driver makes of their MONGO_URI (pipeline.mongo). FerretDB,
which the local stack runs, cannot replicate; the driver settings are tested on
it in tests/integration/test_mongo_write_concern.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import uri_parser

from pipeline.mongo import driver_options
from tests.unit.test_compose import compose_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
REPLICA_SET = ROOT / "docker-compose.replicaset.yml"
INITIATE = ROOT / "mongo" / "replicaset" / "initiate.js"
MEMBERS = ["mongo", "mongo2", "mongo3"]
HOSTS = [(member, 27017) for member in MEMBERS]
KEYFILE = "/run/mongo-keyfile/keyfile"
#: Services that reach MongoDB with the application user, and the variable that holds their URI.
CLIENTS = {
    "server": "MONGO_URI",
    "trainer": "MONGO_URI",
    "train": "MONGO_URI",
    "dashboard": "MONGO_URI",
    "mongo-express": "ME_CONFIG_MONGODB_URL",
}
#: Those that only read: they may read from a secondary while there is no primary.
READERS = {"dashboard", "mongo-express"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml alone, as Compose resolves it (every profile)."""
    result = compose_config(tmp_path_factory.mktemp("compose"), COMPOSE, args=(), options=("--profile", "*"))
    assert result.returncode == 0, result.stderr
    project: dict[str, Any] = yaml.safe_load(result.stdout)
    return project


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`docker compose -f docker-compose.yml -f docker-compose.replicaset.yml config` (every profile)."""
    result = compose_config(
        tmp_path_factory.mktemp("compose"), COMPOSE, REPLICA_SET, args=(), options=("--profile", "*")
    )
    assert result.returncode == 0, result.stderr
    project: dict[str, Any] = yaml.safe_load(result.stdout)
    return project


def depends(service: dict[str, Any]) -> dict[str, str]:
    """{dependency: condition} of a service."""
    return {name: d["condition"] for name, d in service.get("depends_on", {}).items()}


def volumes(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{target: volume entry} of a service."""
    return {v["target"]: v for v in service.get("volumes", [])}


def test_the_override_merges_and_needs_the_root_login(tmp_path: Path) -> None:
    assert compose_config(tmp_path, COMPOSE, REPLICA_SET).returncode == 0
    result = compose_config(tmp_path, COMPOSE, REPLICA_SET, dotenv={"MONGO_ROOT_PASSWORD": None})
    assert result.returncode != 0 and "MONGO_ROOT_PASSWORD" in result.stderr


def test_three_members_of_rs0_on_the_base_image_each_with_its_own_data(
    base: dict[str, Any], merged: dict[str, Any]
) -> None:
    services = merged["services"]
    image = base["services"]["mongo"]["image"]
    data = set()
    for name in MEMBERS:
        member = services[name]
        assert member["image"] == image, f"{name} runs {member['image']}, not the base file's {image}"
        command = member["command"]
        assert command[0] == "mongod", "the image's entry point runs its init steps only for mongod"
        assert command[command.index("--replSet") + 1] == "rs0"
        assert command[command.index("--keyFile") + 1] == KEYFILE
        assert member["restart"] == "unless-stopped"
        data.add(volumes(member)["/data/db"]["source"])
        assert member["environment"]["MONGO_MEMBER"] == name, "the health check asks the member by its own name"
    assert data == {"mongo-data", "mongo2-data", "mongo3-data"}
    assert {"mongo-data", "mongo2-data", "mongo3-data", "mongo-keyfile"} <= set(merged["volumes"])


def test_only_the_first_member_has_a_root_user_and_init_scripts(merged: dict[str, Any]) -> None:
    """rs.initiate refuses a member that has data ("has data already, cannot initiate set"): the
    image's entry point writes the root user and runs the init scripts only when given them."""
    services = merged["services"]
    assert "MONGO_INITDB_ROOT_USERNAME" in services["mongo"]["environment"]
    assert "/docker-entrypoint-initdb.d" in volumes(services["mongo"])
    for name in ("mongo2", "mongo3"):
        assert not any(k.startswith("MONGO_INITDB") for k in services[name].get("environment", {})), name
        assert "/docker-entrypoint-initdb.d" not in volumes(services[name]), name


def test_the_keyfile_is_written_once_for_uid_999_with_mode_400_before_any_member_starts(
    merged: dict[str, Any],
) -> None:
    services = merged["services"]
    keyfile = services["mongo-keyfile"]
    assert keyfile["image"] == services["mongo"]["image"]
    assert keyfile["restart"] == "no" and keyfile["user"] == "root"
    assert keyfile["entrypoint"][:2] == ["/bin/sh", "-c"]
    assert "chown 999:999" in keyfile["entrypoint"][2] and "chmod 400" in keyfile["entrypoint"][2]
    mount = volumes(keyfile)["/run/mongo-keyfile"]
    assert mount["source"] == "mongo-keyfile" and not mount.get("read_only")
    assert KEYFILE.startswith("/run/mongo-keyfile/")
    for name in MEMBERS:
        member_mount = volumes(services[name])["/run/mongo-keyfile"]
        assert member_mount["source"] == "mongo-keyfile" and member_mount.get("read_only") is True, name
        assert depends(services[name]).get("mongo-keyfile") == "service_completed_successfully", name


def test_the_keyfile_script_writes_a_key_mongod_accepts_and_keeps_it(merged: dict[str, Any], tmp_path: Path) -> None:
    """The service's own script, run here by sh on a folder standing for the volume."""
    assert os.geteuid() == 0, "chown to uid 999 needs root, as the tests and CI run (never skipped)"
    script = merged["services"]["mongo-keyfile"]["entrypoint"][2].replace("$$", "$")
    script = script.replace("/run/mongo-keyfile/", f"{tmp_path}/")
    key = tmp_path / "keyfile"
    first = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "wrote a new replica set keyfile" in first.stdout
    info = key.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (999, 999, 0o400)
    content = key.read_text()
    # mongod: 6 to 1024 characters of the base64 set.
    assert 6 <= len(content) <= 1024 and re.fullmatch(r"[A-Za-z0-9+/=]+", content)
    again = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "wrote" not in again.stdout
    assert key.read_text() == content, "a keyfile that exists is kept: the members keep proving themselves"
    assert not (tmp_path / "keyfile.new").exists()


def test_each_member_has_a_health_check_that_needs_its_real_server_and_no_login(merged: dict[str, Any]) -> None:
    for name in MEMBERS:
        check = merged["services"][name]["healthcheck"]
        test = " ".join(check["test"])
        assert '--host "$$MONGO_MEMBER"' in test, "on 127.0.0.1 the first member's init server would pass"
        assert "hello()" in test and "--password" not in test
        assert check["start_interval"] == "2s" and check["interval"] == "30s"


def test_the_init_service_waits_for_every_member_and_runs_once(merged: dict[str, Any]) -> None:
    init = merged["services"]["mongo-rs-init"]
    assert init["restart"] == "no"
    assert depends(init) == {m: "service_healthy" for m in MEMBERS}
    assert init["entrypoint"][:2] == ["mongosh", "--nodb"] and init["entrypoint"][-1] == "/replicaset/initiate.js"
    assert volumes(init)["/replicaset"]["source"] == str(ROOT / "mongo" / "replicaset")
    assert volumes(init)["/docker-entrypoint-initdb.d"]["source"] == str(ROOT / "mongo")
    environment = init["environment"]
    needed = set()
    for script in (INITIATE, ROOT / "mongo" / "10-create-app-user.js"):
        needed |= set(re.findall(r'required\("([A-Z_]+)"\)', script.read_text()))
    assert {"MONGO_INITDB_ROOT_USERNAME", "MONGO_APP_PASSWORD"} <= needed
    assert all(environment.get(variable) for variable in needed), f"the scripts need {sorted(needed)}"
    assert environment["MONGO_DATABASE"] == merged["services"]["mongo"]["environment"]["MONGO_DATABASE"]
    assert "--password" not in " ".join(init["entrypoint"]), "the root password stays in the environment"


def test_the_init_script_initiates_rs0_with_all_three_members_and_creates_the_user() -> None:
    script = INITIATE.read_text()
    assert 'const SET = "rs0"' in script
    hosts = re.search(r"const MEMBERS = \[(.*?)\]", script)
    assert hosts is not None
    assert [h.strip().strip('"') for h in hosts.group(1).split(",")] == [f"{m}:27017" for m in MEMBERS]
    assert "replSetInitiate" in script and "status.code === 94" in script, "initiated once, then left as it is"
    assert 'load("/docker-entrypoint-initdb.d/10-create-app-user.js")' in script
    user = (ROOT / "mongo" / "10-create-app-user.js").read_text()
    assert "getUser(username)" in user, "the user script must do nothing when the user exists"


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_every_client_names_rs0_and_all_three_members(merged: dict[str, Any], name: str) -> None:
    uri = merged["services"][name]["environment"][CLIENTS[name]]
    parsed = uri_parser.parse_uri(uri)
    assert parsed["nodelist"] == HOSTS
    options = parsed["options"]
    assert options["replicaSet"] == "rs0"
    assert options["w"] == "majority" and options["retryWrites"] is True
    assert options["authSource"] == parsed["database"] == merged["services"]["mongo"]["environment"]["MONGO_DATABASE"]
    assert options.get("readPreference", "primary") == ("primaryPreferred" if name in READERS else "primary")
    assert driver_options(uri) == {"retryReads": True}, "what pipeline.mongo adds to it"


def test_no_service_still_reaches_a_single_mongo(merged: dict[str, Any]) -> None:
    """Whatever service the base file points at mongo:27017 alone is pointed at the set too."""
    for name, service in merged["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if isinstance(value, str) and "mongodb://" in value:
                assert "mongo:27017,mongo2:27017,mongo3:27017" in value, f"{name}: {variable} is not the set"


@pytest.mark.parametrize("name", ["server", "trainer", "dashboard", "mongo-express"])
def test_the_services_start_after_the_set_is_initiated(merged: dict[str, Any], name: str) -> None:
    conditions = depends(merged["services"][name])
    assert conditions.get("mongo-rs-init") == "service_completed_successfully"
    assert conditions.get("mongo") == "service_healthy", "the base file's dependency is kept"


def test_start_order_keyfile_then_members_then_init_then_services(merged: dict[str, Any]) -> None:
    services = merged["services"]
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        assert name not in path, f"a dependency cycle: {' -> '.join((*path, name))}"
        for dependency in depends(services[name]):
            visit(dependency, (*path, name))
        if name not in order:
            order.append(name)

    for name in services:
        visit(name)
    position = {name: i for i, name in enumerate(order)}
    for member in MEMBERS:
        assert position["mongo-keyfile"] < position[member] < position["mongo-rs-init"]
    for name in ("server", "trainer", "dashboard", "mongo-express", "sensor"):
        assert position["mongo-rs-init"] < position[name], name


def test_the_tls_override_is_not_silently_combined() -> None:
    """Both overrides set the members' command; the header says they do not combine."""
    header = REPLICA_SET.read_text().split("\n\n", 1)[0]
    assert "Not combined with docker-compose.tls.yml" in " ".join(shlex.split(header.replace("#", "")))


@pytest.mark.parametrize("script", [INITIATE, ROOT / "mongo" / "10-create-app-user.js"], ids=lambda p: p.name)
def test_the_mongosh_scripts_parse(script: Path) -> None:
    """mongosh runs them as JavaScript: at least they must parse (no mongod here to run them on)."""
    assert shutil.which("node"), "node (installed for mongo-express) checks the scripts' syntax"
    result = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
