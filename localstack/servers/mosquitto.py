"""Mosquitto 2.0 (Debian's package) with the configuration Compose runs: ``mosquitto/mosquitto.conf``.

:func:`render_mosquitto_conf` copies that file line by line and changes only what
names a machine: the paths (:data:`MOSQUITTO_PATH_SETTINGS`) and the listeners
(this stack's ports, on 127.0.0.1). The password, ACL and client-id owners files
are written by ``mosquitto/docker-entrypoint.sh``, the script Compose's container
runs, from the same MQTT_* variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from localstack.config import REPO_ROOT, StackError
from localstack.process import base_env, find_executable
from localstack.servers.base import Server

#: The broker configuration Compose runs; the local stack renders its own from it.
MOSQUITTO_CONF = REPO_ROOT / "mosquitto" / "mosquitto.conf"
#: Settings whose values are paths on the machine that runs the broker: the local stack sets its own.
MOSQUITTO_PATH_SETTINGS = ("password_file", "acl_file", "plugin", "plugin_opt_owners_file", "persistence_location")
#: Listener ports of mosquitto/mosquitto.conf -> the local stack's port setting that replaces it.
MOSQUITTO_LISTENERS = {"1883": "MQTT_PORT", "9001": "MQTT_WS_PORT"}
#: The client_owners plugin's sources: install.sh builds it, with a stamp of their hash.
MOSQUITTO_PLUGIN_SOURCES = tuple(REPO_ROOT / "mosquitto" / "plugin" / name for name in ("client_owners.c", "build.sh"))
#: Compose's entry point: writes the password, ACL and owners files, here as there.
ENTRYPOINT = REPO_ROOT / "mosquitto" / "docker-entrypoint.sh"


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
    lines = ["# Rendered by localstack/servers/mosquitto.py from mosquitto/mosquitto.conf at each start: do not edit."]
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
                raise StackError(f"mosquitto.conf has a listener on {port!r}; localstack knows only {known}")
            # Note: mosquitto 2.0.11 binds a websockets listener on every interface whatever address is given.
            line = f"listener {ports[MOSQUITTO_LISTENERS[port]]} 127.0.0.1"
        elif key == "user":
            raise StackError("mosquitto.conf sets `user`; the local stack decides that")
        lines.append(line)
    if seen != set(MOSQUITTO_PATH_SETTINGS):
        raise StackError(f"mosquitto.conf lacks {sorted(set(MOSQUITTO_PATH_SETTINGS) - seen)}")
    return "\n".join(lines) + "\n"


class Mosquitto(Server):
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

    def render(self) -> str:
        """This stack's mosquitto.conf (see :func:`render_mosquitto_conf`)."""
        conf = self.config.conf_dir(self.name)
        paths = {
            "password_file": str(conf / "passwd"),
            "acl_file": str(conf / "acl"),
            "plugin": str(self.plugin),
            "plugin_opt_owners_file": str(conf / "owners"),
            "persistence_location": f"{self.config.data_dir(self.name)}/",
        }
        return render_mosquitto_conf(MOSQUITTO_CONF.read_text(), paths, self.ports, run_as_root=os.geteuid() == 0)

    def prepare(self, log: IO[bytes]) -> None:
        if find_executable("mosquitto", "/usr/sbin/mosquitto") is None:
            raise StackError("mosquitto is not installed; run `bash localstack/install.sh`")
        passwd_tool = find_executable("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
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
        env = {
            **base_env(),
            "PATH": f"{Path(passwd_tool).parent}:{base_env().get('PATH', '/usr/bin:/bin')}",
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
        if self.config.tls:
            # The entry point puts the certificate and key on every listener of the
            # rendered configuration and writes the result to conf_file, as in Compose.
            rendered = conf / "mosquitto.rendered.conf"
            rendered.write_text(self.render())
            env.update(
                MOSQUITTO_CONF=str(rendered),
                MOSQUITTO_TLS_CERT_FILE=str(self.config.tls_file("server.crt")),
                MOSQUITTO_TLS_KEY_FILE=str(self.config.tls_file("server.key")),
            )
        result = subprocess.run(
            ["/bin/sh", str(ENTRYPOINT), "true"], capture_output=True, env=env, check=False, timeout=60
        )
        if result.returncode != 0:
            # Its messages name the variable and the entry, never a password.
            why = result.stderr.decode().strip()
            raise StackError(f"{ENTRYPOINT.name} could not write the password file and ACL: {why}")
        if not self.config.tls:
            self.conf_file.write_text(self.render())

    def command(self) -> list[str]:
        mosquitto = find_executable("mosquitto", "/usr/sbin/mosquitto") or "mosquitto"
        return [mosquitto, "-c", str(self.conf_file)]

    def probe(self) -> bool:
        import paho.mqtt.client as mqtt

        # The fleet account with a throwaway client id: the bridge's user may use
        # only the bridge's client ids, and a probe must never take over a bridge's session.
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"localstack-probe-{uuid.uuid4().hex[:8]}", clean_session=True
        )
        client.username_pw_set(self.config.mqtt_sensor_username, self.config.mqtt_sensor_password)
        if self.config.tls:
            client.tls_set(ca_certs=str(self.config.tls_file("ca.crt")))
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
