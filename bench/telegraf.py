"""Telegraf as the benchmarks run it: its version and binary, its configuration, and its process.

Built by localstack/install.sh from the Go module proxy with only the
``mqtt_consumer`` input and the ``kafka`` output (``localstack/telegraf/``);
:mod:`bench.peer` measures the bridge against it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.namespace import Namespace
from localstack.namespace import clear_session
from localstack.services import ROOT
from pipeline import contract

TELEGRAF_GO_MOD = ROOT / "localstack" / "telegraf" / "go.mod"


# --------------------------------------------------------------------------- Telegraf's configuration


def telegraf_version(go_mod: Path = TELEGRAF_GO_MOD) -> str:
    """The Telegraf version install.sh builds (from localstack/telegraf/go.mod), without the ``v``."""
    found = re.search(r"^\s*github\.com/influxdata/telegraf\s+v(\S+)", go_mod.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no github.com/influxdata/telegraf requirement in {go_mod}")
    return found.group(1)


def telegraf_binary() -> Path:
    """Where install.sh puts Telegraf: ``${LOCALSTACK_CACHE}/telegraf-<version>/telegraf``."""
    cache = os.environ.get("LOCALSTACK_CACHE") or str(ROOT / ".cache" / "localstack")
    return Path(cache).expanduser() / f"telegraf-{telegraf_version()}" / "telegraf"


@dataclass(frozen=True)
class TelegrafConfig:
    """What the benchmark sets in Telegraf's configuration; :func:`render_telegraf_config` writes it."""

    mqtt_url: str
    topics: Sequence[str]
    client_id: str
    username: str
    password: str
    kafka_brokers: Sequence[str]
    kafka_topic: str
    qos: int = 1
    #: MQTT messages read but not yet written by the output; acknowledged only after the write.
    max_undelivered: int = 1000
    #: Metrics per Kafka write: a full batch is written at once, a partial one at the flush interval.
    batch_size: int = 1000
    flush_interval_ms: int = 100
    #: The output's buffer: must hold every undelivered message, or Telegraf drops the oldest.
    buffer_limit: int = 100_000
    tls_ca: str | None = None
    extra_string_fields: Sequence[str] = field(default=())


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string whose value reaches Telegraf's plugins unchanged.

    TOML escapes for the quote, the backslash and control characters; then
    every ``$`` doubled, since Telegraf replaces ``$NAME`` and ``${NAME}`` in
    every string value with the environment's (``$$`` is a literal ``$``).
    A lone surrogate cannot be written in UTF-8 and raises ValueError.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone UTF-16 surrogate cannot be written in a TOML file")
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "$":
            out.append("$$")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(item) for item in items) + "]"


def render_telegraf_config(config: TelegrafConfig) -> str:
    """Telegraf's configuration file: mqtt_consumer (QoS >= 1, persistent session) -> kafka (acks from all).

    Raises ValueError for a setting that would lose the guarantee: QoS 0 (no
    acknowledgement to hold back), no client id (Telegraf refuses a
    persistent session without one), no topics or brokers, counts below one, or a
    buffer smaller than the messages in flight (it would drop the oldest).
    """
    if config.qos not in (1, 2):
        raise ValueError(f"qos must be 1 or 2 for acknowledgement after the output, not {config.qos}")
    if not config.client_id:
        raise ValueError("a persistent session needs a client id")
    if not config.topics or not config.kafka_brokers:
        raise ValueError("at least one MQTT topic and one Kafka broker")
    if not config.kafka_topic:
        raise ValueError("a Kafka topic")
    for name in ("max_undelivered", "batch_size", "flush_interval_ms", "buffer_limit"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, not {getattr(config, name)}")
    if config.buffer_limit < config.max_undelivered:
        raise ValueError(
            f"buffer_limit {config.buffer_limit} < max_undelivered {config.max_undelivered}: "
            "the output would drop undelivered readings"
        )
    tls = f"  tls_ca = {toml_string(config.tls_ca)}\n" if config.tls_ca else ""
    string_fields = ["id", *config.extra_string_fields]
    return (
        "# Written by bench/peer.py: Telegraf as the bridge's peer (MQTT -> Kafka, ack after the output).\n"
        "[agent]\n"
        '  interval = "10s"\n'
        "  round_interval = false\n"
        f"  metric_batch_size = {config.batch_size}\n"
        f"  metric_buffer_limit = {config.buffer_limit}\n"
        f'  flush_interval = "{config.flush_interval_ms}ms"\n'
        '  flush_jitter = "0s"\n'
        "  omit_hostname = true\n"
        "  quiet = true\n"
        "\n"
        "[[inputs.mqtt_consumer]]\n"
        f"  servers = {_toml_list([config.mqtt_url])}\n"
        f"  topics = {_toml_list(config.topics)}\n"
        f"  qos = {config.qos}\n"
        "  persistent_session = true\n"
        f"  client_id = {toml_string(config.client_id)}\n"
        f"  max_undelivered_messages = {config.max_undelivered}\n"
        f"  username = {toml_string(config.username)}\n"
        f"  password = {toml_string(config.password)}\n"
        f"{tls}"
        '  data_format = "json"\n'
        f"  json_string_fields = {_toml_list(string_fields)}\n"
        '  tag_keys = ["sensor"]\n'
        '  json_time_key = "ts"\n'
        '  json_time_format = "2006-01-02T15:04:05Z07:00"\n'
        "\n"
        "[[outputs.kafka]]\n"
        f"  brokers = {_toml_list(config.kafka_brokers)}\n"
        f"  topic = {toml_string(config.kafka_topic)}\n"
        "  required_acks = -1\n"
        '  routing_tag = "sensor"\n'
        "  compression_codec = 0\n"
        '  data_format = "json"\n'
        f"{tls}"
    )


# --------------------------------------------------------------------------- the two sides


class Telegraf:
    """One Telegraf process reading this namespace's MQTT readings into its Kafka topic."""

    def __init__(self, namespace: Namespace) -> None:
        env = namespace.bench.env
        self.namespace = namespace
        self.client_id = f"{namespace.name}-bridge-telegraf"  # the bridge user may only use "*-bridge-*"
        self.topic = namespace.topics["KAFKA_TOPIC_READINGS"]
        scheme = "ssl" if env.get("MQTT_TLS_CA_FILE") else "tcp"
        self.config = TelegrafConfig(
            mqtt_url=f"{scheme}://{env['MQTT_HOST']}:{env['MQTT_PORT']}",
            topics=[contract.MQTT_READINGS_FILTER],
            client_id=self.client_id,
            username=env["MQTT_SERVER_USERNAME"],
            password=env["MQTT_SERVER_PASSWORD"],
            kafka_brokers=env["KAFKA_BOOTSTRAP_SERVERS"].split(","),
            kafka_topic=self.topic,
            tls_ca=env.get("MQTT_TLS_CA_FILE"),
        )
        self.log_path = namespace.bench.log_dir / namespace.name / "telegraf.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = telegraf_binary()
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing; run `bash localstack/install.sh`")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        conf = self.log_path.with_name("telegraf.conf")
        conf.write_text(render_telegraf_config(self.config))
        conf.chmod(0o600)  # it holds the MQTT password
        with self.log_path.open("ab") as log:
            # An empty environment: nothing of ours for Telegraf to substitute into its configuration.
            self.process = subprocess.Popen(
                [str(binary), "--config", str(conf)],
                env={"PATH": "/usr/bin:/bin"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Its persistent session would otherwise collect every later benchmark's readings.
        clear_session(self.namespace.bench.env, self.client_id)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""
