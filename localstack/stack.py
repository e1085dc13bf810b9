"""Start, stop and inspect the local stack's servers: Mosquitto, Kafka, FerretDB and mongo-express.

The servers run natively, without Docker. ``localstack/install.sh`` installs them
(Debian packages, and Kafka, FerretDB and mongo-express built into
``$LOCALSTACK_CACHE``); this module renders their configuration into
``$STACK_DIR``, starts each in its own session, waits until it really answers and
stops it again. It needs only the standard library plus pymongo, confluent-kafka
and paho-mqtt, which are imported only by the readiness checks.

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

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

#: Every server the stack can run, in start order.
SERVER_NAMES = ("ferretdb", "mongo-express", "kafka", "mosquitto")
#: How many log lines a start failure shows.
LOG_TAIL_LINES = 30
#: Environment variables without a default: the stack refuses to start without them.
REQUIRED_SECRETS = ("MQTT_SERVER_PASSWORD", "MQTT_SENSOR_PASSWORD", "MONGO_EXPRESS_PASSWORD", "MONGO_APP_PASSWORD")


class StackError(RuntimeError):
    """A server could not be started, reached or stopped."""


class ConfigError(ValueError):
    """The environment does not configure the stack: a variable is missing or malformed."""


# --------------------------------------------------------------------------- versions


def component_versions() -> dict[str, str]:
    """The versions install.sh builds, read from the committed manifests (the single source)."""
    pom = (PACKAGE_DIR / "kafka" / "pom.xml").read_text()
    gomod = (PACKAGE_DIR / "ferretdb" / "go.mod").read_text()
    package = json.loads((PACKAGE_DIR / "mongo-express" / "package.json").read_text())
    kafka = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom)
    ferretdb = re.search(r"^\s*(?:require\s+)?github\.com/FerretDB/FerretDB\s+(v\S+)", gomod, re.MULTILINE)
    if kafka is None or ferretdb is None:
        raise StackError("cannot read the Kafka or FerretDB version from localstack/kafka/pom.xml or ferretdb/go.mod")
    return {
        "kafka": kafka.group(1),
        "ferretdb": ferretdb.group(1),
        "mongo-express": package["dependencies"]["mongo-express"],
    }


# --------------------------------------------------------------------------- configuration


def _int_env(environ: Mapping[str, str], name: str, default: int, *, low: int = 1, high: int = 65535) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _str_env(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name, "").strip() or default


def sensor_accounts(text: str) -> dict[str, str]:
    """``MQTT_SENSOR_ACCOUNTS`` ("id:password,...") as {sensor id: password}.

    mosquitto/docker-entrypoint.sh checks the entries when the broker starts.
    """
    return dict(entry.split(":", 1) for entry in text.replace(",", " ").split() if ":" in entry)


@dataclass(frozen=True)
class StackConfig:
    """Ports, credentials and directories of the local stack (see :meth:`from_env`).

    Secrets are excluded from ``repr`` so a config can be logged.
    """

    state_dir: Path
    cache_dir: Path
    mqtt_port: int = 1883
    mqtt_ws_port: int = 9001
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_num_partitions: int = 3
    mongo_port: int = 27017
    mongo_express_port: int = 8081
    mongo_database: str = "sensor_pipeline"
    mongo_app_username: str = "pipeline"
    mongo_app_password: str = field(default="", repr=False)
    mqtt_server_username: str = "bridge"
    mqtt_server_password: str = field(default="", repr=False)
    #: The bridge's client ids, '*' a wildcard (MQTT_SERVER_CLIENT_IDS): only its user may use them.
    mqtt_server_client_ids: str = "bridge-*"
    mqtt_sensor_username: str = "sensor"
    mqtt_sensor_password: str = field(default="", repr=False)
    #: Sensors with a user of their own: "id:password,id:password,..." (MQTT_SENSOR_ACCOUNTS).
    mqtt_sensor_accounts: str = field(default="", repr=False)
    mongo_express_username: str = "admin"
    mongo_express_password: str = field(default="", repr=False)
    mongo_express_cookie_secret: str = field(default="", repr=False)
    mongo_express_session_secret: str = field(default="", repr=False)
    #: MONGO_URI from the environment: use that MongoDB instead of starting FerretDB.
    external_mongo_uri: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, require_secrets: bool = True) -> StackConfig:
        """Read the configuration from environment variables (the project's names), with defaults.

        ``require_secrets=False`` skips the check of the required passwords, for
        commands that only look at or stop a running stack.
        """
        env = os.environ if environ is None else environ
        state_dir = Path(_str_env(env, "STACK_DIR", str(REPO_ROOT / ".stack"))).expanduser().resolve()
        cache_dir = Path(_str_env(env, "LOCALSTACK_CACHE", str(REPO_ROOT / ".cache" / "localstack")))
        config = cls(
            state_dir=state_dir,
            cache_dir=cache_dir.expanduser().resolve(),
            mqtt_port=_int_env(env, "MQTT_PORT", 1883),
            mqtt_ws_port=_int_env(env, "MQTT_WS_PORT", 9001),
            kafka_port=_int_env(env, "KAFKA_PORT", 9092),
            kafka_controller_port=_int_env(env, "KAFKA_CONTROLLER_PORT", 9093),
            kafka_num_partitions=_int_env(env, "KAFKA_NUM_PARTITIONS", 3, high=1000),
            mongo_port=_int_env(env, "MONGO_PORT", 27017),
            mongo_express_port=_int_env(env, "MONGO_EXPRESS_PORT", 8081),
            mongo_database=_str_env(env, "MONGO_DATABASE", "sensor_pipeline"),
            mongo_app_username=_str_env(env, "MONGO_APP_USERNAME", "pipeline"),
            mongo_app_password=env.get("MONGO_APP_PASSWORD", ""),
            mqtt_server_username=_str_env(env, "MQTT_SERVER_USERNAME", "bridge"),
            mqtt_server_password=env.get("MQTT_SERVER_PASSWORD", ""),
            mqtt_server_client_ids=_str_env(env, "MQTT_SERVER_CLIENT_IDS", "bridge-*"),
            mqtt_sensor_username=_str_env(env, "MQTT_SENSOR_USERNAME", "sensor"),
            mqtt_sensor_password=env.get("MQTT_SENSOR_PASSWORD", ""),
            mqtt_sensor_accounts=env.get("MQTT_SENSOR_ACCOUNTS", "").strip(),
            mongo_express_username=_str_env(env, "MONGO_EXPRESS_USERNAME", "admin"),
            mongo_express_password=env.get("MONGO_EXPRESS_PASSWORD", ""),
            # Only signing keys for mongo-express's cookies: a fresh random one is fine.
            mongo_express_cookie_secret=env.get("MONGO_EXPRESS_COOKIE_SECRET") or secrets.token_hex(16),
            mongo_express_session_secret=env.get("MONGO_EXPRESS_SESSION_SECRET") or secrets.token_hex(16),
            external_mongo_uri=env.get("MONGO_URI", "").strip() or None,
        )
        config.validate(require_secrets=require_secrets)
        return config

    def validate(self, *, require_secrets: bool = True) -> None:
        """Raise :class:`ConfigError` naming the variables that are missing or inconsistent."""
        if require_secrets:
            values = {
                "MQTT_SERVER_PASSWORD": self.mqtt_server_password,
                "MQTT_SENSOR_PASSWORD": self.mqtt_sensor_password,
                "MONGO_EXPRESS_PASSWORD": self.mongo_express_password,
                "MONGO_APP_PASSWORD": self.mongo_app_password,
            }
            if self.external_mongo_uri:
                del values["MONGO_APP_PASSWORD"]  # the external URI carries its own credentials
            missing = [name for name in REQUIRED_SECRETS if name in values and not values[name]]
            if missing:
                raise ConfigError(
                    "missing required environment variable(s): "
                    + ", ".join(missing)
                    + " (`make env` writes them to .env; see .env.example)"
                )
        ports = {
            "MQTT_PORT": self.mqtt_port,
            "MQTT_WS_PORT": self.mqtt_ws_port,
            "KAFKA_PORT": self.kafka_port,
            "KAFKA_CONTROLLER_PORT": self.kafka_controller_port,
            "MONGO_EXPRESS_PORT": self.mongo_express_port,
        }
        if not self.external_mongo_uri:
            ports["MONGO_PORT"] = self.mongo_port
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ConfigError(f"{name} and {seen[port]} are both {port}")
            seen[port] = name
        for name, user in (
            ("MQTT_SERVER_USERNAME", self.mqtt_server_username),
            ("MQTT_SENSOR_USERNAME", self.mqtt_sensor_username),
        ):
            if ":" in user or any(c.isspace() for c in user):
                raise ConfigError(f"{name} must not contain ':' or whitespace")
        if self.mqtt_server_username == self.mqtt_sensor_username:
            raise ConfigError("MQTT_SERVER_USERNAME and MQTT_SENSOR_USERNAME must differ (they get different rights)")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", self.mongo_database):
            raise ConfigError("MONGO_DATABASE must be 1-63 letters, digits, '_' or '-'")

    # Directories -------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        """Where each server's stdout and stderr go (``<server>.log``)."""
        return self.state_dir / "logs"

    def conf_dir(self, server: str) -> Path:
        """The rendered configuration of one server."""
        return self.state_dir / "conf" / server

    def data_dir(self, server: str) -> Path:
        """The persistent data of one server."""
        return self.state_dir / "data" / server

    # Connection details ------------------------------------------------------

    @property
    def uses_ferretdb(self) -> bool:
        """False when MONGO_URI points at an external MongoDB."""
        return self.external_mongo_uri is None

    @property
    def mongo_uri(self) -> str:
        """The application user's MongoDB URI (credentials included: do not log it)."""
        if self.external_mongo_uri:
            return self.external_mongo_uri
        user = urllib.parse.quote(self.mongo_app_username, safe="")
        password = urllib.parse.quote(self.mongo_app_password, safe="")
        # FerretDB stores the --setup-username user in the setup database, so that
        # database is the authSource (authSource=admin fails).
        return (
            f"mongodb://{user}:{password}@127.0.0.1:{self.mongo_port}/{self.mongo_database}"
            f"?authSource={self.mongo_database}"
        )

    def secret_values(self) -> list[str]:
        """Every secret in use, raw and URL-quoted, to scrub from error messages."""
        raw = [
            self.mongo_app_password,
            self.mqtt_server_password,
            self.mqtt_sensor_password,
            *sensor_accounts(self.mqtt_sensor_accounts).values(),
            self.mongo_express_password,
            self.mongo_express_cookie_secret,
            self.mongo_express_session_secret,
        ]
        if self.external_mongo_uri:
            parsed = urllib.parse.urlsplit(self.external_mongo_uri)
            if parsed.password:
                raw += [parsed.password, urllib.parse.unquote(parsed.password)]
        values = {v for v in raw if v} | {urllib.parse.quote(v, safe="") for v in raw if v}
        return sorted(values, key=len, reverse=True)


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None if there is no such process."""
    return _proc_stat_path(f"/proc/{pid}/stat")


def _proc_stat_path(path: str) -> list[str] | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def _live(pid: int, fields: list[str]) -> bool:
    """Whether a process still runs: not a zombie, or a zombie leader whose other threads still exit.

    A multi-threaded process (the JVM) killed by SIGKILL can show its main thread
    as a zombie while other threads still hold its sockets and files.
    """
    if fields[0] not in ("Z", "X"):
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any((t := _proc_stat_path(f"/proc/{pid}/task/{tid}/stat")) and t[0] not in ("Z", "X") for tid in tasks)


def _proc_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether ``pid`` runs and, if given, started at ``start_time`` (so it is not a reused pid)."""
    fields = _proc_stat(pid)
    if fields is None or not _live(pid, fields):
        return False
    return start_time is None or fields[19] == start_time


def _group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _proc_stat(pid)
        if fields is not None and fields[2] == str(pgid) and _live(pid, fields):
            members.append(pid)
    return members


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _find_executable(name: str, *extra: str) -> str | None:
    """``name`` on PATH, else the first of ``extra`` that exists (e.g. /usr/sbin for mosquitto)."""
    found = shutil.which(name)
    if found:
        return found
    return next((p for p in extra if os.access(p, os.X_OK)), None)


def _base_env() -> dict[str, str]:
    """A minimal environment for a server: it must not inherit the caller's secrets."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "JAVA_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    return env


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ("" if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- mosquitto.conf

#: The broker configuration Compose runs; the local stack renders its own from it.
MOSQUITTO_CONF = REPO_ROOT / "mosquitto" / "mosquitto.conf"
#: Settings whose values are paths on the machine that runs the broker: the local stack sets its own.
MOSQUITTO_PATH_SETTINGS = ("password_file", "acl_file", "plugin", "plugin_opt_owners_file", "persistence_location")
#: Listener ports of mosquitto/mosquitto.conf -> the local stack's port setting that replaces it.
MOSQUITTO_LISTENERS = {"1883": "MQTT_PORT", "9001": "MQTT_WS_PORT"}
#: The client_owners plugin's sources: install.sh builds it, with a stamp of their hash.
MOSQUITTO_PLUGIN_SOURCES = tuple(REPO_ROOT / "mosquitto" / "plugin" / name for name in ("client_owners.c", "build.sh"))


def mosquitto_plugin_stamp() -> str:
    """The hash install.sh writes beside the plugin it built from the current sources (its stamp_of)."""
    return hashlib.sha256(b"".join(path.read_bytes() for path in MOSQUITTO_PLUGIN_SOURCES)).hexdigest()


def render_mosquitto_conf(
    source: str, paths: Mapping[str, str], ports: Mapping[str, int], *, run_as_root: bool = False
) -> str:
    """The local stack's mosquitto.conf: ``source`` (mosquitto/mosquitto.conf) with only paths and listeners changed.

    ``paths`` gives a value for each of :data:`MOSQUITTO_PATH_SETTINGS`; each
    ``listener <port>`` becomes ``listener <ports[MOSQUITTO_LISTENERS[port]]> 127.0.0.1``.
    Every other line, and so every limit, stays as Compose has it.
    """
    missing = set(MOSQUITTO_PATH_SETTINGS) - set(paths)
    if missing:
        raise StackError(f"render_mosquitto_conf: no path for {sorted(missing)}")
    seen: set[str] = set()
    lines = ["# Rendered by localstack/stack.py from mosquitto/mosquitto.conf at each start: do not edit."]
    if run_as_root:
        # Started as root, mosquitto drops to user `mosquitto`, which can then
        # read neither the 0600 password file nor write the data directory.
        lines.append("user root")
    for line in source.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else ""
        if key in MOSQUITTO_PATH_SETTINGS:
            if key in seen:
                raise StackError(f"mosquitto.conf sets {key} twice; the local stack renders one")
            seen.add(key)
            line = f"{key} {paths[key]}"
        elif key == "listener":
            port = words[1] if len(words) > 1 else ""
            if port not in MOSQUITTO_LISTENERS:
                known = ", ".join(MOSQUITTO_LISTENERS)
                raise StackError(f"mosquitto.conf has a listener on {port!r}; localstack/stack.py knows only {known}")
            # Note: mosquitto 2.0.11 binds a websockets listener on every interface whatever address is given.
            line = f"listener {ports[MOSQUITTO_LISTENERS[port]]} 127.0.0.1"
        elif key == "user":
            raise StackError("mosquitto.conf sets `user`; the local stack decides that")
        lines.append(line)
    if seen != set(MOSQUITTO_PATH_SETTINGS):
        raise StackError(f"mosquitto.conf lacks {sorted(set(MOSQUITTO_PATH_SETTINGS) - seen)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- servers


class _Server:
    """One server: how to configure, run and probe it. Subclasses fill in the details."""

    name: str = ""
    #: Seconds from launch until it must answer.
    ready_timeout: float = 60.0
    #: Servers that must answer before this one is launched.
    after: tuple[str, ...] = ()
    #: A log line that must appear before the probe is tried (None: probe at once).
    started_marker: str | None = None

    def __init__(self, config: StackConfig) -> None:
        self.config = config

    @property
    def port(self) -> int:
        """The main port (the one ``status`` shows)."""
        raise NotImplementedError

    @property
    def ports(self) -> dict[str, int]:
        """Every port it listens on, by environment variable name."""
        raise NotImplementedError

    def prepare(self, log: Any) -> None:
        """Render configuration and initialise data before a launch; ``log`` is its open log file."""

    def command(self) -> list[str]:
        """The command line (no secrets: it is visible in ``ps``)."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment of the process (secrets go here rather than on the command line)."""
        return _base_env()

    @property
    def cwd(self) -> Path:
        """Working directory of the process."""
        return self.config.data_dir(self.name)

    def probe(self) -> bool:
        """One readiness check: True when it really answers; StackError when it never will."""
        raise NotImplementedError


class _FerretDB(_Server):
    name = "ferretdb"
    ready_timeout = 30.0

    @property
    def port(self) -> int:
        return self.config.mongo_port

    @property
    def ports(self) -> dict[str, int]:
        return {"MONGO_PORT": self.config.mongo_port}

    @property
    def binary(self) -> Path:
        version = component_versions()["ferretdb"]
        return self.config.cache_dir / f"ferretdb-{version}" / "ferretdb"

    def prepare(self, log: Any) -> None:
        if not self.binary.exists():
            raise StackError(f"ferretdb: {self.binary} is missing; run `bash localstack/install.sh`")
        (self.config.data_dir(self.name) / "sqlite").mkdir(parents=True, exist_ok=True)
        (self.config.data_dir(self.name) / "state").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        data = self.config.data_dir(self.name)
        sqlite_url = "file:" + urllib.parse.quote(str(data / "sqlite")) + "/"  # must end with '/'
        return [
            str(self.binary),
            "--handler=sqlite",
            f"--sqlite-url={sqlite_url}",
            f"--listen-addr=127.0.0.1:{self.config.mongo_port}",
            f"--state-dir={data / 'state'}",
            "--debug-addr=-",  # its HTTP debug server would clash between parallel stacks
            "--telemetry=disable",
            "--log-level=info",
            # Real SCRAM authentication. Without it FerretDB 1.x with SQLite accepts
            # any user and password (PLAIN is never checked).
            "--test-enable-new-auth",
            f"--setup-database={self.config.mongo_database}",
            f"--setup-username={self.config.mongo_app_username}",
        ]

    def env(self) -> dict[str, str]:
        # The password goes by environment (kong reads FERRETDB_*), not argv, so `ps` does not show it.
        return {**_base_env(), "FERRETDB_SETUP_PASSWORD": self.config.mongo_app_password, "DO_NOT_TRACK": "1"}

    def probe(self) -> bool:
        from pymongo import MongoClient
        from pymongo.errors import OperationFailure, PyMongoError

        client: MongoClient[dict[str, Any]] = MongoClient(
            self.config.mongo_uri, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500
        )
        try:
            client[self.config.mongo_database].command("ping")
            return True
        except OperationFailure as exc:
            if exc.code == 18:  # AuthenticationFailed
                raise StackError(
                    "ferretdb rejected MONGO_APP_USERNAME/MONGO_APP_PASSWORD. FerretDB creates the user "
                    "only when the database is new, so the data in "
                    f"{self.config.data_dir(self.name)} was set up with other credentials: "
                    "use those again, or delete that directory (its data is lost)"
                ) from None
            return False
        except PyMongoError:
            return False
        finally:
            client.close()


class _MongoExpress(_Server):
    name = "mongo-express"
    ready_timeout = 60.0
    # 1.0.0 exits if it cannot reach the database at startup.
    after = ("ferretdb",)

    @property
    def port(self) -> int:
        return self.config.mongo_express_port

    @property
    def ports(self) -> dict[str, int]:
        return {"MONGO_EXPRESS_PORT": self.config.mongo_express_port}

    @property
    def app_dir(self) -> Path:
        version = component_versions()["mongo-express"]
        return self.config.cache_dir / f"mongo-express-{version}" / "node_modules" / "mongo-express"

    def prepare(self, log: Any) -> None:
        if not (self.app_dir / "app.js").exists():
            raise StackError(f"mongo-express: {self.app_dir} is missing; run `bash localstack/install.sh`")
        if _find_executable("node", "/usr/bin/nodejs") is None:
            raise StackError("mongo-express: node is not installed; run `bash localstack/install.sh`")
        self.config.data_dir(self.name).mkdir(parents=True, exist_ok=True)

    @property
    def cwd(self) -> Path:
        return self.app_dir

    def command(self) -> list[str]:
        node = _find_executable("node", "/usr/bin/nodejs") or "node"
        return [node, "-r", str(PACKAGE_DIR / "mongo-express" / "preload.js"), str(self.app_dir / "app.js")]

    def env(self) -> dict[str, str]:
        # The URL goes without credentials: preload.js passes them as driver options,
        # because mongo-express prints the whole URL when it cannot connect.
        parts = urllib.parse.urlsplit(self.config.mongo_uri)
        netloc = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        return {
            **_base_env(),
            "NODE_ENV": "production",
            "ME_CONFIG_MONGODB_URL": url,
            "LOCALSTACK_MONGO_USERNAME": urllib.parse.unquote(parts.username or ""),
            "LOCALSTACK_MONGO_PASSWORD": urllib.parse.unquote(parts.password or ""),
            # The app user is no admin: show only the URL's database (no listDatabases, no serverStatus).
            "ME_CONFIG_MONGODB_ENABLE_ADMIN": "false",
            "ME_CONFIG_BASICAUTH_USERNAME": self.config.mongo_express_username,
            "ME_CONFIG_BASICAUTH_PASSWORD": self.config.mongo_express_password,
            "ME_CONFIG_SITE_COOKIESECRET": self.config.mongo_express_cookie_secret,
            "ME_CONFIG_SITE_SESSIONSECRET": self.config.mongo_express_session_secret,
            "VCAP_APP_HOST": "127.0.0.1",
            "PORT": str(self.config.mongo_express_port),
        }

    def probe(self) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self.config.mongo_express_port}/")
        token = f"{self.config.mongo_express_username}:{self.config.mongo_express_password}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                return response.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise StackError(
                    f"mongo-express on port {self.port} rejects MONGO_EXPRESS_USERNAME/MONGO_EXPRESS_PASSWORD"
                ) from None
            return False
        except (urllib.error.URLError, OSError):
            return False


class _Kafka(_Server):
    name = "kafka"
    ready_timeout = 180.0  # JVM start and log recovery after a kill -9, on 2 cores
    started_marker = "Kafka Server started"

    @property
    def port(self) -> int:
        return self.config.kafka_port

    @property
    def ports(self) -> dict[str, int]:
        return {"KAFKA_PORT": self.config.kafka_port, "KAFKA_CONTROLLER_PORT": self.config.kafka_controller_port}

    @property
    def lib_dir(self) -> Path:
        version = component_versions()["kafka"]
        return self.config.cache_dir / f"kafka-{version}" / "lib"

    @property
    def properties(self) -> Path:
        return self.config.conf_dir(self.name) / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.config.data_dir(self.name) / "kraft-logs"

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
            return str(Path(java_home) / "bin" / "java")
        java = _find_executable("java")
        if java is None:
            raise StackError("kafka: java is not installed; run `bash localstack/install.sh`")
        return java

    def _jvm_common(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={PACKAGE_DIR / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.config.logs_dir}",
            "-cp",
            f"{self.lib_dir}/*",  # a JVM classpath wildcard, not a shell glob
        ]

    def prepare(self, log: Any) -> None:
        if not any(self.lib_dir.glob("kafka_2.13-*.jar")):
            raise StackError(f"kafka: {self.lib_dir} has no Kafka jars; run `bash localstack/install.sh`")
        self.config.conf_dir(self.name).mkdir(parents=True, exist_ok=True)
        self.log_dirs.mkdir(parents=True, exist_ok=True)
        template = string.Template((PACKAGE_DIR / "kafka" / "server.properties.template").read_text())
        self.properties.write_text(
            template.substitute(
                port=self.config.kafka_port,
                controller_port=self.config.kafka_controller_port,
                num_partitions=self.config.kafka_num_partitions,
                log_dirs=self.log_dirs,
            )
        )
        if (self.log_dirs / "meta.properties").exists():
            return  # formatted once per data directory; formatting again would fail
        log.write(b"localstack: formatting Kafka storage\n")
        log.flush()
        result = subprocess.run(
            [
                self._java(),
                "-Xmx256M",
                *self._jvm_common(),
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "--cluster-id",
                _kafka_cluster_id(),
                "--config",
                str(self.properties),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_base_env(),
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"kafka: formatting the storage in {self.log_dirs} failed (exit {result.returncode})")

    def command(self) -> list[str]:
        return [
            self._java(),
            "-Xms512m",
            "-Xmx512m",
            "-server",
            # The flags of Kafka's own kafka-server-start.sh.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:MaxInlineLevel=15",
            "-Djava.awt.headless=true",
            *self._jvm_common(),
            "kafka.Kafka",
            str(self.properties),
        ]

    def probe(self) -> bool:
        if not _port_open(self.config.kafka_port):
            return False  # spare librdkafka's connection-refused noise
        from confluent_kafka.admin import AdminClient

        probe_config: dict[str, Any] = {
            "bootstrap.servers": f"127.0.0.1:{self.config.kafka_port}",
            "socket.timeout.ms": 3000,
            "logger": logging.getLogger(f"{__name__}.kafka-probe"),
        }
        admin = AdminClient(probe_config)
        try:
            metadata = admin.list_topics(timeout=3)
        except Exception:  # KafkaException, or a timeout while the broker settles
            return False
        return bool(metadata.brokers)


def _kafka_cluster_id() -> str:
    """A random cluster id like ``kafka-storage random-uuid`` (base64url, 22 chars, no leading '-')."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):  # it would be read as an option
            return value


class _Mosquitto(_Server):
    name = "mosquitto"
    ready_timeout = 20.0

    @property
    def port(self) -> int:
        return self.config.mqtt_port

    @property
    def ports(self) -> dict[str, int]:
        return {"MQTT_PORT": self.config.mqtt_port, "MQTT_WS_PORT": self.config.mqtt_ws_port}

    @property
    def conf_file(self) -> Path:
        return self.config.conf_dir(self.name) / "mosquitto.conf"

    @property
    def plugin(self) -> Path:
        """The client_owners plugin install.sh builds (mosquitto/plugin/)."""
        return self.config.cache_dir / "mosquitto-plugin" / "mosquitto_client_owners.so"

    def prepare(self, log: Any) -> None:
        if _find_executable("mosquitto", "/usr/sbin/mosquitto") is None:
            raise StackError("mosquitto is not installed; run `bash localstack/install.sh`")
        passwd_tool = _find_executable("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        if passwd_tool is None:
            raise StackError("mosquitto_passwd is not installed (package mosquitto); run `bash localstack/install.sh`")
        stamp = self.plugin.parent / ".stamp"
        if not self.plugin.exists() or not stamp.exists() or stamp.read_text().strip() != mosquitto_plugin_stamp():
            # Never run a plugin built from other sources than the ones checked out.
            raise StackError(
                f"mosquitto: {self.plugin} is missing or older than mosquitto/plugin/; run `bash localstack/install.sh`"
            )
        conf = self.config.conf_dir(self.name)
        data = self.config.data_dir(self.name)
        conf.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        # Rebuilt at every start, so a changed password in the environment takes
        # effect, by the same script that writes them in Compose.
        script = REPO_ROOT / "mosquitto" / "docker-entrypoint.sh"
        env = {
            **_base_env(),
            "PATH": f"{Path(passwd_tool).parent}:{_base_env().get('PATH', '/usr/bin:/bin')}",
            "MOSQUITTO_AUTH_DIR": str(conf),
            "MOSQUITTO_DATA_DIR": str(data),
            "MOSQUITTO_OWNER": "",  # this process's user runs the broker
            "MQTT_SERVER_USERNAME": self.config.mqtt_server_username,
            "MQTT_SERVER_PASSWORD": self.config.mqtt_server_password,
            "MQTT_SERVER_CLIENT_IDS": self.config.mqtt_server_client_ids,
            "MQTT_SENSOR_USERNAME": self.config.mqtt_sensor_username,
            "MQTT_SENSOR_PASSWORD": self.config.mqtt_sensor_password,
            "MQTT_SENSOR_ACCOUNTS": self.config.mqtt_sensor_accounts,
        }
        result = subprocess.run(["/bin/sh", str(script), "true"], capture_output=True, env=env, check=False, timeout=60)
        if result.returncode != 0:
            # Its messages name the variable and the entry, never a password.
            why = result.stderr.decode().strip()
            raise StackError(f"{script.name} could not write the password file and ACL: {why}")
        # Compose's mosquitto.conf, every limit included, with this machine's paths and ports.
        self.conf_file.write_text(
            render_mosquitto_conf(
                MOSQUITTO_CONF.read_text(),
                {
                    "password_file": str(conf / "passwd"),
                    "acl_file": str(conf / "acl"),
                    "plugin": str(self.plugin),
                    "plugin_opt_owners_file": str(conf / "owners"),
                    "persistence_location": f"{data}/",
                },
                self.ports,
                run_as_root=os.geteuid() == 0,
            )
        )

    def command(self) -> list[str]:
        mosquitto = _find_executable("mosquitto", "/usr/sbin/mosquitto") or "mosquitto"
        return [mosquitto, "-c", str(self.conf_file)]

    def probe(self) -> bool:
        import paho.mqtt.client as mqtt

        # The fleet account with a throwaway client id: the bridge's user may use
        # only the bridge's client ids, and a probe must never take over a bridge's session.
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"localstack-probe-{uuid.uuid4().hex[:8]}", clean_session=True
        )
        client.username_pw_set(self.config.mqtt_sensor_username, self.config.mqtt_sensor_password)
        outcome: dict[str, Any] = {}

        def on_connect(_client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
            outcome["reason"] = reason_code

        client.on_connect = on_connect
        try:
            client.connect("127.0.0.1", self.config.mqtt_port, keepalive=10)
            deadline = time.monotonic() + 3
            while "reason" not in outcome and time.monotonic() < deadline:
                client.loop(timeout=0.2)
        except OSError:
            return False
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop(timeout=0.1)  # flushes DISCONNECT and closes the socket
        reason = outcome.get("reason")
        if reason is None:
            return False
        if reason.is_failure:
            raise StackError(f"mosquitto refused MQTT_SENSOR_USERNAME's login: {reason}")
        return True


_SERVER_CLASSES: dict[str, type[_Server]] = {
    "ferretdb": _FerretDB,
    "mongo-express": _MongoExpress,
    "kafka": _Kafka,
    "mosquitto": _Mosquitto,
}


# --------------------------------------------------------------------------- the stack


class Stack:
    """Starts, stops and inspects the local stack's servers for one :class:`StackConfig`.

    Every method can be called from another process than the one that started the
    servers: the state (pids, process groups, start times) lives in ``state_dir/run``.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        names = [n for n in SERVER_NAMES if n != "ferretdb" or config.uses_ferretdb]
        self.servers: dict[str, _Server] = {name: _SERVER_CLASSES[name](config) for name in names}
        # Popen objects of the servers this instance launched, so their exits get reaped.
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    # Public API --------------------------------------------------------------

    def start(self) -> list[str]:
        """Start every server not yet running and wait until each answers; returns those it launched.

        Servers that already run are reused. If one fails, the servers this call
        launched are stopped again and :class:`StackError` names the failing server
        and shows the end of its log.
        """
        self.config.validate()
        with self._locked():
            launched: list[str] = []
            try:
                self._check_external_mongo()
                self._check_ports_free()
                pending = list(self.servers)
                ready: set[str] = {n for n in _SERVER_CLASSES if n not in self.servers}
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

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every server: SIGTERM to its process group, SIGKILL after ``timeout_s``. Idempotent."""
        with self._locked():
            # Signal them all first, so their shutdowns overlap.
            names = [n for n in reversed(SERVER_NAMES) if n in self.servers]
            signalled = [n for n in names if self._signal(n, signal.SIGTERM)]
            deadline = time.monotonic() + timeout_s
            for name in signalled:
                self._wait_gone(name, deadline, escalate=True)
            for name in names:
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
        """What the pipeline's services need to connect (includes credentials: do not log it)."""
        config = self.config
        return {
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(config.mqtt_port),
            "MQTT_WS_PORT": str(config.mqtt_ws_port),
            "MQTT_SERVER_USERNAME": config.mqtt_server_username,
            "MQTT_SERVER_PASSWORD": config.mqtt_server_password,
            "MQTT_SERVER_CLIENT_IDS": config.mqtt_server_client_ids,
            "MQTT_SENSOR_USERNAME": config.mqtt_sensor_username,
            "MQTT_SENSOR_PASSWORD": config.mqtt_sensor_password,
            "MQTT_SENSOR_ACCOUNTS": config.mqtt_sensor_accounts,
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{config.kafka_port}",
            "MONGO_URI": config.mongo_uri,
            "MONGO_DATABASE": config.mongo_database,
            # Each sensor keeps what the broker has not acknowledged in <id>.sqlite here.
            "SENSOR_SPOOL_DIR": str(config.state_dir / "sensor-spool"),
        }

    def log_path(self, name: str) -> Path:
        """The log file of one server (its stdout and stderr)."""
        return self.config.logs_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of a server's log, secrets scrubbed."""
        return self._redact(_tail(self.log_path(name), lines))

    # Internals ---------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if name not in self.servers:
            raise StackError(f"unknown server {name!r}; this stack has: {', '.join(self.servers)}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop between processes sharing a state directory."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.config.state_dir / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _pid_file(self, name: str) -> Path:
        return self.config.state_dir / "run" / f"{name}.json"

    def _running_record(self, name: str) -> dict[str, Any] | None:
        """The pid record of a running server, or None (a stale record is removed)."""
        path = self._pid_file(name)
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if _proc_alive(record["pid"], record.get("start_time")):
            return record
        self._reap(name)
        path.unlink(missing_ok=True)
        return None

    def _reap(self, name: str) -> int | None:
        """Collect the exit status of a server this instance launched; its exit code if it has ended."""
        process = self._processes.get(name)
        return None if process is None else process.poll()

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
        try:
            client.get_database(self.config.mongo_database).command("ping")
        except PyMongoError as exc:
            raise StackError(
                f"MONGO_URI is set, but that MongoDB refused the connection or did not answer: {self._redact(str(exc))}"
            ) from None
        finally:
            client.close()

    def _check_ports_free(self) -> None:
        """Fail before launching anything if a server that is not running would find its port taken."""
        for name, server in self.servers.items():
            if self._running_record(name) is None:
                for variable, port in server.ports.items():
                    if _port_open(port):
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
            if _port_open(port):
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
            # Own session and process group: a terminal's Ctrl+C does not reach the
            # server, and stop() can signal the whole group.
            process = subprocess.Popen(
                server.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=server.cwd,
                env=server.env(),
                start_new_session=True,
                close_fds=True,
            )
        self._processes[name] = process
        fields = _proc_stat(process.pid)
        record = {
            "pid": process.pid,
            "pgid": process.pid,  # session leader: its pid is the group id
            "start_time": fields[19] if fields else None,
            "ports": server.ports,
            "log_offset": offset,
        }
        pid_file = self._pid_file(name)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(pid_file)
        logger.info("launched %s (pid %d), log %s", name, process.pid, log_path)
        return True

    def _wait_ready(self, name: str, deadline: float, *, fresh: bool) -> None:
        """Poll the server's readiness until ``deadline``; StackError with its log if it fails."""
        server = self.servers[name]
        started = time.monotonic()
        record = self._running_record(name)
        marker_seen = not (fresh and server.started_marker)
        delay = 0.2
        while True:
            if record is None or not _proc_alive(record["pid"], record.get("start_time")):
                code = self._reap(name)
                self._pid_file(name).unlink(missing_ok=True)
                raise self._failure(name, "exited during startup" + (f" with code {code}" if code is not None else ""))
            if not marker_seen:
                marker_seen = self._log_contains(name, record.get("log_offset", 0), server.started_marker or "")
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

    def _log_contains(self, name: str, offset: int, needle: str) -> bool:
        try:
            with self.log_path(name).open("rb") as handle:
                handle.seek(offset)
                return needle.encode() in handle.read()
        except FileNotFoundError:
            return False

    def _signal(self, name: str, sig: signal.Signals) -> bool:
        """Send ``sig`` to the server's process group; False if it was not running."""
        record = self._running_record(name)
        if record is None:
            return False
        try:
            os.killpg(record["pgid"], sig)
        except ProcessLookupError:
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
        while _group_members(pgid):
            self._reap(name)
            if time.monotonic() > deadline:
                if not escalate:
                    raise StackError(f"{name} (process group {pgid}) survived SIGKILL")
                logger.warning("%s did not stop in time; sending SIGKILL", name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                deadline, escalate = time.monotonic() + 30.0, False
            time.sleep(0.1)
        self._reap(name)
        self._processes.pop(name, None)
        path.unlink(missing_ok=True)
        # A server launched by another (finished) process is reaped by init, a moment
        # later: wait briefly so `pgrep` right after a stop shows no zombie.
        settle = time.monotonic() + 2.0
        while _proc_stat(pgid) is not None and time.monotonic() < settle:
            time.sleep(0.05)

    def _terminate(self, name: str, timeout_s: float) -> None:
        if self._signal(name, signal.SIGTERM):
            self._wait_gone(name, time.monotonic() + timeout_s, escalate=True)
        self._pid_file(name).unlink(missing_ok=True)
