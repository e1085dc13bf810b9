"""The README's Settings table, held against the code.

Every variable the table lists must be a field of the settings of each service
its "Used by" column names (the broker's: read by mosquitto/docker-entrypoint.sh),
with the default the table states; and :data:`EFFECTS` names, for every one of
them, the tests that fail if it stops having the effect the table gives it.

Most of those tests are here. They follow a setting from the settings object
into the code that uses it, with recording stand-ins where a client or a store
would be (an MQTT or Kafka client, MongoDB): they check how a setting flows
into the code, not what the servers make of it. The rest run the real services
on the local stack (tests/integration, tests/e2e, tests/faults), among them
tests/integration/test_settings_effects.py for the settings only a server can show.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast
from unittest import mock

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Message, Producer
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

import Dashboard.__main__ as dashboard_main
import Data_collection.__main__ as sensor_main
import Models_analysis.__main__ as model_main
import Models_analysis.trainer as trainer_main
import Server.__main__ as server_main
from Dashboard.settings import Settings as DashboardSettings
from Data_collection import publisher as publisher_module
from Data_collection.publisher import Publisher
from Data_collection.settings import DEMO_CSV
from Data_collection.settings import Settings as SensorSettings
from localstack.namespace import free_port
from Models_analysis import registry as registry_module
from Models_analysis import scorer as scorer_module
from Models_analysis.calibration import Calibrated
from Models_analysis.model import ModelError
from Models_analysis.registry import ModelRegistry
from Models_analysis.scorer import Scorer
from Models_analysis.settings import Settings as ModelSettings
from Models_analysis.settings import TrainerSettings
from pipeline import contract, health, logs
from pipeline.batch import Attempt
from pipeline.csv_rows import read_rows
from pipeline.health import HealthServer
from pipeline.kafka import ensure_pipeline_topics
from pipeline.mqtt import connect, make_client
from pipeline.settings import KafkaSettings, hostname
from Server import aggregates
from Server import ingest as ingest_module
from Server import results as results_module
from Server.aggregates import Aggregator
from Server.ingest import Bridge, Incoming, Prepared, RecentIds, prepare
from Server.results import ResultsSink
from Server.retention import Rule
from Server.settings import Settings as ServerSettings
from Server.store import Store
from tests.helpers import asgi, payload
from tests.unit.fakes import (
    FakeMessage,
    OneModel,
    RecordingConsumer,
    RecordingMqttClient,
    RecordingProducer,
    RecordingStore,
)
from tests.unit.models import ConstantModel, SlowModel
from tests.unit.test_compose import run_entrypoint

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ENTRYPOINT = ROOT / "mosquitto" / "docker-entrypoint.sh"

#: The services of the "Used by" column, by the name the README gives them, and their code.
SERVICES: dict[str, type[BaseSettings]] = {
    "sensor": SensorSettings,
    "server": ServerSettings,
    "model": ModelSettings,
    "trainer": TrainerSettings,
    "dashboard": DashboardSettings,
}
PACKAGES = {
    "sensor": "Data_collection",
    "server": "Server",
    "model": "Models_analysis",
    "trainer": "Models_analysis",
    "dashboard": "Dashboard",
}
#: "Used by: mosquitto": read by the broker's entry point, not by a Python service.
BROKER = "mosquitto"

#: Values for the settings every service requires, so a settings object can be built here.
REQUIRED = {
    "MQTT_USERNAME": "user",
    "MQTT_PASSWORD": "password",
    "MONGO_URI": "mongodb://user:password@127.0.0.1:1/db",
    "DASHBOARD_USERNAME": "user",
    "DASHBOARD_PASSWORD": "password",
}

S = TypeVar("S", bound=BaseSettings)


def make(cls: type[S], **values: Any) -> S:
    """``cls`` as a service builds it, with ``values`` set and the required settings filled in."""
    required: dict[str, Any] = {k: v for k, v in REQUIRED.items() if k in cls.model_fields and k not in values}
    return cls(**required, **values)


@pytest.fixture(autouse=True, scope="module")
def _no_settings_from_the_environment() -> Iterator[None]:
    """The tests here set what they need; nothing from the caller's shell changes a default."""
    with pytest.MonkeyPatch.context() as patch:
        for cls in SERVICES.values():
            for name in cls.model_fields:
                patch.delenv(name, raising=False)
        yield


# --- the README's Settings table --------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One variable of the Settings table (a row naming two or four variables gives one Row each)."""

    name: str
    default: str
    used_by: tuple[str, ...]
    meaning: str


NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _cells(line: str) -> list[str]:
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _names(cell: str) -> list[str]:
    """``A`` / ``B``, and the shorthand ``KAFKA_TOPIC_READINGS`` / ``_RESULTS`` (the first name's prefix)."""
    parts = [part.strip().strip("`").strip() for part in cell.split("/")]
    names = [parts[0]]
    for part in parts[1:]:
        names.append(parts[0].rsplit("_", 1)[0] + part if part.startswith("_") else part)
    for name in names:
        if not NAME.match(name):
            raise ValueError(f"README Settings table: cannot read a variable name in {cell!r}")
    return names


def _users(cell: str) -> tuple[str, ...]:
    users: list[str] = []
    for word in (w.strip() for w in cell.split(",")):
        if word == "all":
            users += SERVICES
        elif word in SERVICES or word == BROKER:
            users.append(word)
        else:
            raise ValueError(f"README Settings table: 'Used by' names {word!r}, which is no service")
    return tuple(dict.fromkeys(users))


def settings_table(text: str | None = None) -> list[Row]:
    """The rows of the table between "## Settings" and the next "## " heading, one per variable."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found = re.search(r"^## Settings[ \t]*\n(.*?)(?=^## )", text, re.M | re.S)
    if found is None:
        raise ValueError("README.md has no '## Settings' section followed by another '## ' heading")
    lines = [line for line in found[1].splitlines() if line.startswith("|")]
    if not lines or [c.lower() for c in _cells(lines[0])] != ["variable", "default", "used by", "meaning"]:
        raise ValueError("README Settings table: the header is not | Variable | Default | Used by | Meaning |")
    rows: list[Row] = []
    for line in lines[2:]:
        variable, default, used_by, meaning = _cells(line)
        names = _names(variable)
        defaults = [d.strip() for d in default.split(" / ")]
        if len(defaults) != len(names):
            defaults = [default] * len(names)
        users = _users(used_by)
        rows += [Row(name, d, users, meaning) for name, d in zip(names, defaults, strict=True)]
    return rows


@functools.cache
def readme_rows() -> tuple[Row, ...]:
    """The README's table, read once."""
    return tuple(settings_table())


def _rows_or_none() -> tuple[Row, ...]:
    # For parametrizing at import: an unreadable table fails the tests below, not the collection.
    try:
        return readme_rows()
    except (OSError, ValueError):
        return ()


LITERAL = re.compile(r"^`([^`]*)`(?:\s*\([^)]*\))?$")


def _comparable(value: Any) -> Any:
    if isinstance(value, Path):
        return value.resolve()
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def _default_problem(cls: type[BaseSettings], row: Row) -> str | None:
    """What is wrong with the README's default for ``row.name`` in ``cls``, if anything."""
    where = f"{row.name} ({cls.__module__}.{cls.__name__})"
    info = cls.model_fields[row.name]
    text = row.default
    if text == "required":
        return None if info.is_required() else f"{where}: the README says required; the code has a default"
    if info.is_required():
        return f"{where}: the README gives the default {text!r}; the code requires a value"
    if text.startswith("none"):
        has_none = info.default_factory is None and info.default in (None, "")
        return None if has_none else f"{where}: the README says none by default; the code has {info.default!r}"
    if text == "host name":
        value = getattr(make(cls), row.name)
        return None if value == hostname() else f"{where}: the README says the host name; the code gives {value!r}"
    literal = LITERAL.match(text)
    if literal is None:
        return None  # described in words ("the only column, or `value`"): its effect test covers it
    stated = literal[1].replace("<host name>", hostname())
    code = _comparable(getattr(make(cls), row.name))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(row.name, stated)
        try:
            readme = _comparable(getattr(make(cls), row.name))
        except ValidationError as error:
            return f"{where}: the README's default `{literal[1]}` is not a valid value: {error.errors()[0]['msg']}"
    if readme != code:
        return f"{where}: the README says the default is `{literal[1]}`; the code's default is {code!r}"
    return None


def _broker_problems(row: Row) -> list[str]:
    script = ENTRYPOINT.read_text(encoding="utf-8")
    if "${" + row.name not in script:
        return [f"{row.name}: the README says the broker uses it; {ENTRYPOINT.relative_to(ROOT)} never reads it"]
    literal = LITERAL.match(row.default)
    found = re.search(r"\$\{" + row.name + r":-([^}]*)\}", script)
    if literal is not None and (found is None or found[1] != literal[1]):
        code = found[1] if found else "none"
        return [f"{row.name}: the README says the default is `{literal[1]}`; the entry point's is {code!r}"]
    return []


def test_the_settings_table_reads_as_expected() -> None:
    """The parser itself, on the forms the table uses (so a quiet misreading cannot pass the tests below)."""
    text = "\n".join(
        [
            "## Settings",
            "",
            "| Variable | Default | Used by | Meaning |",
            "| --- | --- | --- | --- |",
            "| `A_HOST` / `A_PORT` | `localhost` / `1883` | sensor, server | x |",
            "| `T_ONE` / `_TWO` / `_THREE` | `1` / `2` / `3` | model | a \\| b |",
            "| `C` | the only column, or `value` | all | c |",
            "| `D` | required | mosquitto | d |",
            "",
            "## Next",
            "| `E` | `1` | all | not in the section |",
        ]
    )
    rows = settings_table(text)
    assert [(r.name, r.default) for r in rows] == [
        ("A_HOST", "`localhost`"),
        ("A_PORT", "`1883`"),
        ("T_ONE", "`1`"),
        ("T_TWO", "`2`"),
        ("T_THREE", "`3`"),
        ("C", "the only column, or `value`"),
        ("D", "required"),
    ]
    assert rows[0].used_by == ("sensor", "server") and rows[2].meaning == "a | b"
    assert rows[5].used_by == tuple(SERVICES) and rows[6].used_by == (BROKER,)
    with pytest.raises(ValueError, match="which is no service"):
        settings_table(text.replace("| mosquitto |", "| broker |"))


def test_every_variable_is_a_setting_of_the_services_it_names_with_the_stated_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)  # SENSOR_CSV's default is a path from the repository's root
    rows = settings_table()
    assert len(rows) >= 40, f"only {len(rows)} variables read from README.md's Settings table"
    assert len({r.name for r in rows}) == len(rows), "a variable is listed twice"
    problems: list[str] = []
    for row in rows:
        if BROKER in row.used_by:
            problems += _broker_problems(row)
        for service in (s for s in row.used_by if s != BROKER):
            cls = SERVICES[service]
            if row.name not in cls.model_fields:
                problems.append(
                    f"{row.name}: the README says the {service} uses it; {cls.__module__} has no such field"
                )
                continue
            problem = _default_problem(cls, row)
            if problem:
                problems.append(problem)
    assert not problems, "README.md's Settings table and the code disagree:\n" + "\n".join(problems)


@functools.cache
def _attributes_read(package: str) -> frozenset[str]:
    """Every attribute name read (``x.NAME``) in ``package``'s code and in the shared pipeline/ code."""
    names: set[str] = set()
    for folder in (ROOT / package, ROOT / "pipeline"):
        for source in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                    names.add(node.attr)
    return frozenset(names)


def _reads() -> list[Any]:
    cases: list[Any] = []
    for row in _rows_or_none():
        for service in (s for s in row.used_by if s != BROKER):
            cases.append(pytest.param(row.name, service, id=f"{row.name}-{service}"))
    return cases


@pytest.mark.parametrize(("name", "service"), _reads())
def test_every_service_named_reads_the_variable(name: str, service: str) -> None:
    """A field nothing reads has no effect (as MODEL_FORECAST_AHEAD once had): each one is read somewhere."""
    package = PACKAGES[service]
    assert name in _attributes_read(package), f"{name}: nothing in {package}/ or pipeline/ reads it"


@functools.cache
def _own_attributes_read(package: str) -> frozenset[str]:
    """Every attribute name read in ``package``'s own code (not the shared pipeline/)."""
    names: set[str] = set()
    for source in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return frozenset(names)


def _fields_read() -> list[Any]:
    cases: list[Any] = []
    for service, cls in SERVICES.items():
        for name in cls.model_fields:
            if name not in _own_attributes_read(PACKAGES[service]):
                continue  # read, if at all, by shared code: the other test holds it to the table
            cases.append(pytest.param(service, name, id=f"{service}-{name}"))
    return cases


@pytest.mark.parametrize(("service", "name"), _fields_read())
def test_every_setting_a_service_reads_is_in_the_table_under_it(service: str, name: str) -> None:
    """The other direction: a setting a service's own code reads is documented, with that service in Used by."""
    rows = {row.name: row for row in readme_rows()}
    assert name in rows, f"{name}: {PACKAGES[service]} reads it; README.md's Settings table does not list it"
    assert service in rows[name].used_by, f"{name}: {PACKAGES[service]} reads it; the table's Used by omits {service}"


# --- the registry: which tests show each variable's effect ------------------------------

U = "tests/unit/test_settings_table.py::"
I = "tests/integration/test_settings_effects.py::"  # noqa: E741 - one letter, beside U
BRIDGE_ONCE = "tests/integration/test_bridge.py::test_a_reading_reaches_mongodb_and_kafka_exactly_once"
OWN_USER = "tests/integration/test_security.py::test_a_sensor_with_its_own_user_runs_with_it"
OVER_TLS = "tests/integration/test_security.py::test_sensors_and_bridge_work_over_tls"
RETAINED = "tests/integration/test_retention.py::"
CAPPED = "tests/integration/test_bad_input.py::test_rejections_are_a_capped_collection_of_the_configured_size"
AHEAD = "tests/unit/test_scoring_ahead.py::"
TRAINER = "tests/unit/test_model_trainer.py::"
PROMOTION = "tests/e2e/test_models.py::" + (
    "test_a_promotion_by_the_trainer_changes_the_model_identity_and_scoring_never_stops_while_it_fits"
)
TRAINER_STORE = (
    "tests/integration/test_trainer.py::test_the_trainer_promotes_a_better_model_refuses_a_worse_one_and_records_both"
)
E2E_PIPELINE = "tests/e2e/test_pipeline.py::test_three_sensors_every_reading_gets_one_prediction"
TLS_IT = "tests/integration/test_tls.py::"
TLS_U = "tests/unit/test_tls_settings.py::"
TLS_LOGIN = TLS_U + "test_kafka_settings_start_only_with_a_whole_login_and_say_what_they_turn_on"
TLS_END_TO_END = TLS_IT + "test_the_pipeline_runs_end_to_end_over_tls"
TLS_WRONG_CA = TLS_IT + "test_a_service_that_cannot_verify_a_certificate_stops_at_start_naming_the_variable"
TLS_SCRAM = TLS_IT + "test_kafka_speaks_protocol_only_after_tls_and_a_scram_login"
TLS_PAGE = TLS_U + "test_the_page_serves_https_only_with_a_certificate_and_its_own_key"
HUNG_MODEL = "tests/e2e/test_models.py::" + (
    "test_a_model_that_hangs_turns_its_batches_into_prediction_errors_and_the_service_not_ready"
)

#: Every variable of the README's Settings table -> the tests ("path::function") that fail if it
#: stops having the effect the table gives it. test_every_variable_has_effect_tests keeps it complete.
EFFECTS: dict[str, list[str]] = {
    "KAFKA_TLS_CA_FILE": [TLS_LOGIN, TLS_END_TO_END, TLS_WRONG_CA],
    "KAFKA_SASL_USERNAME": [TLS_LOGIN, TLS_SCRAM, TLS_END_TO_END],
    "KAFKA_SASL_PASSWORD": [TLS_LOGIN, TLS_SCRAM, TLS_END_TO_END],
    "MONGO_TLS_CA_FILE": [TLS_U + "test_mongo_tls_ca_file_turns_tls_on", TLS_END_TO_END, TLS_WRONG_CA],
    "DASHBOARD_TLS_CERT_FILE": [TLS_PAGE, TLS_END_TO_END],
    "DASHBOARD_TLS_KEY_FILE": [TLS_PAGE, TLS_END_TO_END],
    "LOG_LEVEL": [
        U + "test_log_level_decides_what_reaches_the_log",
        U + "test_each_service_sets_up_logging_at_log_level",
    ],
    "MQTT_HOST": [U + "test_connect_uses_the_broker_address_keepalive_and_session_expiry", BRIDGE_ONCE],
    "MQTT_PORT": [U + "test_connect_uses_the_broker_address_keepalive_and_session_expiry", BRIDGE_ONCE, OVER_TLS],
    "MQTT_USERNAME": [U + "test_the_client_logs_in_with_the_configured_user", OWN_USER],
    "MQTT_PASSWORD": [U + "test_the_client_logs_in_with_the_configured_user", OWN_USER],
    "MQTT_KEEPALIVE_S": [
        U + "test_connect_uses_the_broker_address_keepalive_and_session_expiry",
        I + "test_bridges_in_one_share_group_split_the_readings_and_another_group_gets_them_all",
    ],
    "MQTT_SESSION_EXPIRY_S": [U + "test_connect_uses_the_broker_address_keepalive_and_session_expiry"],
    "SENSOR_ID": [
        U + "test_the_sensors_readings_carry_sensor_id",
        U + "test_the_publisher_connects_as_sensor_id_and_publishes_to_its_topic",
        OWN_USER,
    ],
    "SENSOR_CSV": [U + "test_the_sensor_replays_sensor_csv"],
    "SENSOR_VALUE_COLUMN": [U + "test_sensor_value_column_picks_the_values"],
    "SENSOR_TIMESTAMP_COLUMN": [U + "test_sensor_timestamp_column_gives_the_readings_times"],
    "SENSOR_INTERVAL_S": [U + "test_sensor_interval_s_spaces_the_readings"],
    "SENSOR_LOOP": [U + "test_sensor_loop_starts_over_after_the_last_row"],
    "SENSOR_MAX_READINGS": [U + "test_sensor_max_readings_stops_the_sensor"],
    "SENSOR_QUEUE_MAX": [
        U + "test_the_sensor_holds_sensor_queue_max_readings_while_the_broker_is_away",
        U + "test_a_full_queue_makes_publishing_wait_until_stopped",
        "tests/faults/test_faults.py::test_a_sensor_whose_queue_is_full_pauses_its_csv_and_says_so",
    ],
    "SENSOR_SPOOL_DIR": [
        U + "test_unacknowledged_readings_are_kept_in_sensor_spool_dir_and_sent_first_on_the_next_start",
        "tests/faults/test_faults.py::"
        "test_a_sensor_killed_while_the_broker_is_away_sends_what_it_held_when_it_starts_again",
    ],
    "SENSOR_REPLAY_S": [
        U + "test_after_a_reconnect_the_sensor_replays_what_was_acknowledged_within_sensor_replay_s",
        "tests/faults/test_faults.py::test_after_a_long_outage_the_sensor_replays_what_was_acknowledged_before_it",
    ],
    "MQTT_TLS_CA_FILE": [U + "test_tls_ca_file_turns_tls_on_and_verifies_the_broker", OVER_TLS],
    "MQTT_TLS_CERT_FILE": [
        U + "test_the_client_certificate_and_key_are_shown_to_a_broker_that_asks",
        U + "test_a_key_that_does_not_match_the_certificate_is_refused",
    ],
    "MQTT_TLS_KEY_FILE": [
        U + "test_the_client_certificate_and_key_are_shown_to_a_broker_that_asks",
        U + "test_a_key_that_does_not_match_the_certificate_is_refused",
    ],
    "HEALTH_PORT": [
        U + "test_health_port_serves_health_and_zero_serves_nothing",
        U + "test_the_sensor_serves_health_on_health_port",
        "tests/e2e/test_monitoring.py::test_every_service_serves_metrics_health_and_readiness",
    ],
    "MQTT_CLIENT_ID": [
        U + "test_the_bridge_connects_as_mqtt_client_id_and_subscribes_in_its_share_group",
        U + "test_server_main_passes_its_settings_on",
        I + "test_bridges_in_one_share_group_split_the_readings_and_another_group_gets_them_all",
        I + "test_kafka_sees_the_configured_consumer_groups_and_client_ids",
    ],
    "MQTT_SHARE_GROUP": [
        U + "test_the_bridge_connects_as_mqtt_client_id_and_subscribes_in_its_share_group",
        I + "test_bridges_in_one_share_group_split_the_readings_and_another_group_gets_them_all",
    ],
    "MQTT_SERVER_CLIENT_IDS": [
        U + "test_the_broker_gives_the_bridges_user_the_client_ids_of_mqtt_server_client_ids",
        "tests/integration/test_hostile_clients.py::test_only_the_owner_of_a_client_id_connects_with_it",
    ],
    "SERVER_MAX_INFLIGHT": [
        U + "test_the_bridge_asks_the_broker_for_at_most_server_max_inflight",
        I + "test_the_broker_sends_the_bridge_at_most_server_max_inflight_unacknowledged_readings",
    ],
    "SERVER_BATCH_MAX": [U + "test_a_bridge_batch_holds_at_most_server_batch_max"],
    "SERVER_BATCH_WAIT_MS": [U + "test_a_bridge_batch_waits_server_batch_wait_ms_to_fill"],
    "SERVER_TIMELINE_EVERY_S": [
        "tests/unit/test_timeline_interval.py::test_the_timeline_writes_once_every_interval_and_once_more_at_the_stop",
        U + "test_server_main_passes_its_settings_on",
    ],
    "SERVER_AGGREGATE_SETTLE_S": [
        U + "test_an_aggregate_is_written_once_nothing_was_added_for_settle_s",
        U + "test_server_main_passes_its_settings_on",
    ],
    "SERVER_MAX_PAYLOAD_BYTES": [U + "test_payloads_over_server_max_payload_bytes_are_rejected"],
    "SERVER_REJECTIONS_MAX_MB": [U + "test_server_main_passes_its_settings_on", CAPPED],
    "SERVER_ALERTS_MAX_MB": [
        U + "test_server_main_passes_its_settings_on",
        RETAINED + "test_alerts_are_a_capped_collection",
    ],
    **{
        name: [U + "test_server_main_passes_its_settings_on", RETAINED + "test_old_documents_of_every_kind_are_deleted"]
        for name in (
            "SERVER_RETENTION_RAW_DAYS",
            "SERVER_RETENTION_HOURLY_DAYS",
            "SERVER_RETENTION_DAILY_DAYS",
            "SERVER_RETENTION_REJECTIONS_DAYS",
            "SERVER_RETENTION_ALERTS_DAYS",
        )
    },
    "SERVER_DEDUPE_CACHE": [U + "test_the_bridge_skips_the_last_server_dedupe_cache_readings_it_stored"],
    "SERVER_SENSOR_METRICS_MAX": [
        "tests/unit/test_sensor_metrics.py::"
        "test_the_bridge_keeps_series_for_server_sensor_metrics_max_sensors_of_valid_readings_only",
        "tests/unit/test_sensor_metrics.py::test_at_most_max_sensors_get_series_and_those_that_have_them_keep_them",
    ],
    "KAFKA_BOOTSTRAP_SERVERS": [
        U + "test_the_model_service_consumes_as_configured",
        U + "test_server_main_passes_its_settings_on",
        BRIDGE_ONCE,
    ],
    "KAFKA_TOPIC_READINGS": [U + "test_kafka_topic_names_flow_from_the_bridge_to_the_model_to_the_sink", BRIDGE_ONCE],
    "KAFKA_TOPIC_RESULTS": [U + "test_kafka_topic_names_flow_from_the_bridge_to_the_model_to_the_sink", E2E_PIPELINE],
    "KAFKA_TOPIC_DEADLETTER": [
        U + "test_rejected_messages_go_to_kafka_topic_deadletter",
        "tests/integration/test_bridge.py::test_a_malformed_payload_is_kept_with_its_reason_and_the_flow_continues",
    ],
    "KAFKA_TOPIC_ALERTS": [
        U + "test_kafka_topic_names_flow_from_the_bridge_to_the_model_to_the_sink",
        "tests/e2e/test_models.py::test_anomalies_become_alerts_and_accuracy_matches_a_hand_computation",
    ],
    "KAFKA_NUM_PARTITIONS": [
        U + "test_topics_are_created_with_kafka_num_partitions",
        I + "test_topics_a_bridge_creates_have_kafka_num_partitions",
        I + "test_topics_a_model_service_creates_have_kafka_num_partitions",
    ],
    "KAFKA_RESULTS_GROUP_ID": [
        U + "test_the_sink_consumes_results_and_alerts_in_its_group",
        I + "test_kafka_sees_the_configured_consumer_groups_and_client_ids",
        E2E_PIPELINE,
    ],
    "MONGO_URI": [
        U + "test_the_store_uses_mongo_uri_and_mongo_database",
        U + "test_the_dashboard_serves_on_dashboard_port_and_watches_dashboard_services",
        BRIDGE_ONCE,
    ],
    "MONGO_DATABASE": [
        U + "test_the_store_uses_mongo_uri_and_mongo_database",
        U + "test_the_dashboard_serves_on_dashboard_port_and_watches_dashboard_services",
        CAPPED,
    ],
    "MODEL_PATH": [
        U + "test_model_main_loads_model_path_checked_every_reload_check_s",
        "tests/e2e/test_models.py::test_a_folder_gives_each_sensor_its_own_model_or_the_default",
        "tests/unit/test_settings.py::test_bad_setting_stops_the_service_with_its_name",
    ],
    "MODEL_TRAINED_PATH": [
        U + "test_model_main_loads_model_path_checked_every_reload_check_s",
        TRAINER + "test_the_trained_model_serves_its_sensor_before_model_paths",
        TRAINER + "test_trainer_main_lowers_its_priority_and_needs_model_trained_path",
        PROMOTION,
    ],
    "TRAINER_EVERY_S": [
        TRAINER + "test_a_round_every_trainer_every_s",
        TRAINER
        + "test_a_sensor_with_too_little_history_is_looked_at_again_after_trainer_retry_s_and_one_decided_after_a_day",
    ],
    "TRAINER_RETRY_S": [
        TRAINER
        + "test_a_sensor_with_too_little_history_is_looked_at_again_after_trainer_retry_s_and_one_decided_after_a_day"
    ],
    "TRAINER_WINDOW_S": [TRAINER + "test_the_window_and_the_most_readings_bound_what_a_fit_takes", TRAINER_STORE],
    "TRAINER_HOLDOUT_S": [TRAINER + "test_a_better_challenger_is_promoted_and_recorded", TRAINER_STORE],
    "TRAINER_MIN_READINGS": [TRAINER + "test_too_little_history_gets_no_challenger"],
    "TRAINER_MAX_READINGS": [TRAINER + "test_the_window_and_the_most_readings_bound_what_a_fit_takes"],
    "TRAINER_KIND": [TRAINER + "test_the_kind_and_interval_width_are_the_fitted_models", PROMOTION],
    "TRAINER_INTERVAL_WIDTH": [TRAINER + "test_the_kind_and_interval_width_are_the_fitted_models"],
    "TRAINER_MIN_GAIN": [
        TRAINER + "test_min_gain_decides_how_much_better_a_challenger_must_be",
        TRAINER + "test_a_worse_challenger_is_refused_and_the_served_model_stays",
    ],
    "TRAINER_REPLACE_USER_MODELS": [TRAINER + "test_a_users_own_model_is_kept_unless_they_opt_in"],
    "TRAINER_NICE": [TRAINER + "test_trainer_main_lowers_its_priority_and_needs_model_trained_path"],
    "MODEL_RELOAD_CHECK_S": [
        U + "test_model_main_loads_model_path_checked_every_reload_check_s",
        U + "test_a_changed_model_file_is_picked_up_after_reload_check_s",
    ],
    "KAFKA_GROUP_ID": [
        U + "test_the_model_service_consumes_as_configured",
        I + "test_kafka_sees_the_configured_consumer_groups_and_client_ids",
        E2E_PIPELINE,
    ],
    "KAFKA_CLIENT_ID": [
        U + "test_the_model_service_consumes_as_configured",
        I + "test_kafka_sees_the_configured_consumer_groups_and_client_ids",
    ],
    "MODEL_BATCH_MAX": [U + "test_the_model_service_consumes_as_configured"],
    "MODEL_BATCH_WAIT_MS": [U + "test_the_model_service_consumes_as_configured"],
    "MODEL_TIME_GRID_MS": [
        U + "test_a_batch_is_forecast_once_per_grid_time",
        U + "test_a_time_grid_of_zero_forecasts_the_exact_times",
        AHEAD + "test_any_time_inside_the_grid_gets_the_direct_predict_at_its_grid_time",
    ],
    "MODEL_FORECAST_CACHE": [U + "test_the_forecast_cache_keeps_model_forecast_cache_forecasts_between_batches"],
    "MODEL_FORECAST_AHEAD": [
        AHEAD + "test_scoring_is_a_lookup_once_the_grid_is_made",
        AHEAD + "test_the_grid_is_refreshed_in_the_background_before_it_runs_out",
        AHEAD + "test_without_a_grid_every_batch_predicts",
    ],
    "KAFKA_REPLICATION_FACTOR": [
        "tests/unit/test_kafka_cluster.py::test_topics_are_created_with_kafka_replication_factor_and_min_insync_replicas",
        "tests/unit/test_kafka_topics.py::test_on_a_cluster_topics_get_the_replicas_asked_for_and_writes_wait_for_all_but_one",
        "tests/faults/test_cluster.py::test_the_pipelines_topics_have_three_replicas_and_need_two_in_sync",
    ],
    "KAFKA_MIN_INSYNC_REPLICAS": [
        "tests/unit/test_kafka_cluster.py::test_min_insync_replicas_is_valid_only_within_the_replicas",
        "tests/unit/test_kafka_topics.py::test_on_a_cluster_topics_get_the_replicas_asked_for_and_writes_wait_for_all_but_one",
        "tests/faults/test_cluster.py::test_the_pipelines_topics_have_three_replicas_and_need_two_in_sync",
    ],
    "MODEL_ADAPTIVE_GAMMA": [
        U + "test_model_adaptive_gamma_widens_a_sensors_interval_after_a_miss_and_zero_keeps_the_models",
        "tests/e2e/test_models.py::test_a_sensor_whose_readings_miss_gets_a_wider_interval_and_its_anomaly_flag_follows_it",
        "tests/unit/test_adaptive.py::test_over_a_long_run_the_share_missed_is_the_target_whatever_the_models_error",
    ],
    "MODEL_PREDICT_TIMEOUT_S": [
        U + "test_a_predict_call_past_model_predict_timeout_s_becomes_prediction_errors",
        HUNG_MODEL,
    ],
    "DASHBOARD_PORT": [
        U + "test_the_dashboard_serves_on_dashboard_port_and_watches_dashboard_services",
        "tests/e2e/test_dashboard.py::test_every_route_needs_the_login",
    ],
    "DASHBOARD_USERNAME": [
        U + "test_the_page_needs_dashboard_username_and_password",
        "tests/e2e/test_dashboard.py::test_every_route_needs_the_login",
    ],
    "DASHBOARD_PASSWORD": [
        U + "test_the_page_needs_dashboard_username_and_password",
        "tests/e2e/test_dashboard.py::test_every_route_needs_the_login",
    ],
    "DASHBOARD_SERVICES": [
        U + "test_the_dashboard_serves_on_dashboard_port_and_watches_dashboard_services",
        "tests/e2e/test_dashboard.py::test_health_shows_services_up_and_their_rates",
    ],
    "DASHBOARD_ALERTMANAGER_URL": [
        U + "test_the_dashboard_serves_on_dashboard_port_and_watches_dashboard_services",
        "tests/unit/test_firing.py::test_alertmanager_is_asked_for_active_unsilenced_uninhibited_alerts_once_per_cache_period",
        "tests/unit/test_firing.py::test_without_a_url_alerting_is_not_configured_and_nothing_is_asked",
        "tests/e2e/test_alerting.py::test_a_stopped_bridge_is_alerted_silenced_and_resolved",
    ],
}


def _broker_variables() -> list[str]:
    """The variables the broker's entry point reads with a default (``${NAME:-...}``)."""
    return re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", ENTRYPOINT.read_text(encoding="utf-8"))


@functools.cache
def _test_functions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))


def test_every_variable_has_effect_tests() -> None:
    documented = {row.name for row in settings_table()}
    problems = [f"{name}: in README.md's Settings table, not in EFFECTS" for name in sorted(documented - set(EFFECTS))]
    # An entry for a setting the table does not list yet is fine; one for no setting at all is stale.
    fields = {name for cls in SERVICES.values() for name in cls.model_fields} | set(_broker_variables())
    problems += [f"{name}: in EFFECTS, but no service has such a setting" for name in sorted(set(EFFECTS) - fields)]
    for name, tests in EFFECTS.items():
        if not tests:
            problems.append(f"{name}: no test")
        for test in tests:
            path, _, function = test.partition("::")
            if not (ROOT / path).is_file():
                problems.append(f"{name}: {path} does not exist")
            elif function not in _test_functions(ROOT / path):
                problems.append(f"{name}: {path} has no test function {function}")
    assert not problems, "\n".join(problems)


# --- stand-ins for clients and stores (they record; no server is involved) --------------


class Sentinel(Exception):
    """Raised by a stand-in to end a service's main() once it has what the test looks at."""


@contextlib.contextmanager
def keep_signals() -> Iterator[None]:
    """A service's main() installs SIGTERM and SIGINT handlers: put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class Clock:
    """A monotonic clock the test moves (patched in as a module's ``time``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def success(packet: int) -> ReasonCode:
    return ReasonCode(packet, "Success")


# --- LOG_LEVEL ----------------------------------------------------------------------------

LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup() changes the root logger and a few library loggers: put them back."""
    root = logging.getLogger()
    names = ("cmdstanpy", "prophet", "pymongo", "matplotlib", "prophet.plot", "librdkafka")
    saved = (
        root.level,
        root.handlers[:],
        {n: (logging.getLogger(n).level, logging.getLogger(n).filters[:]) for n in names},
    )
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name, (level, filters) in saved[2].items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).filters[:] = filters


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("level", LEVELS)
def test_log_level_decides_what_reaches_the_log(level: str, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup(level, "svc")
    assert logging.getLogger().level == logging.getLevelName(level)
    for name in LEVELS:
        logging.getLogger("Server.ingest").log(logging.getLevelName(name), "message at %s", name)
    out = capsys.readouterr().out
    shown = [name for name in LEVELS if f"message at {name}" in out]
    assert shown == LEVELS[LEVELS.index(level) :], out


def _setup_levels() -> tuple[list[str], Any]:
    levels: list[str] = []
    return levels, mock.patch.object(logs, "setup", lambda level, service: levels.append(level))


@pytest.mark.parametrize("service", list(SERVICES))
def test_each_service_sets_up_logging_at_log_level(service: str, tmp_path: Path) -> None:
    """Each service's main() hands LOG_LEVEL to logs.setup (whose effect the test above checks)."""
    for level in ("ERROR", "DEBUG"):
        levels, patched = _setup_levels()
        with patched, keep_signals(), mock.patch.dict(os.environ, {**REQUIRED, "LOG_LEVEL": level}):
            if service == "sensor":
                assert run_sensor({"LOG_LEVEL": level, "SENSOR_MAX_READINGS": "1"}).log_levels == [level]
                continue
            if service == "server":
                with pytest.raises(Sentinel), mock.patch.object(server_main, "ensure_pipeline_topics", _raise):
                    server_main.main()
            elif service == "model":
                with mock.patch.dict(os.environ, {"MODEL_PATH": str(tmp_path / "none.joblib")}):
                    assert model_main.main() == 2
            elif service == "trainer":
                os.environ.pop("MODEL_TRAINED_PATH", None)
                assert trainer_main.main() == 2  # no MODEL_TRAINED_PATH: stops once logging is set up
            else:
                with pytest.raises(Sentinel), mock.patch.object(dashboard_main, "mongo_client", _raise):
                    dashboard_main.main()
        assert levels == [level], service


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise Sentinel


# --- MQTT: the broker's address, the login, keepalive, session, TLS ---------------------


@hypothesis_settings(max_examples=100)
@given(
    host=st.sampled_from(["localhost", "mosquitto", "10.0.0.7", "broker.example.org"]),
    port=st.integers(1, 65535),
    keepalive=st.integers(5, 3600),
    expiry=st.integers(0, 2**32 - 1),
)
@example(host="localhost", port=1883, keepalive=5, expiry=0)
@example(host="localhost", port=8883, keepalive=3600, expiry=604800)
def test_connect_uses_the_broker_address_keepalive_and_session_expiry(
    host: str, port: int, keepalive: int, expiry: int
) -> None:
    config = make(
        SensorSettings, MQTT_HOST=host, MQTT_PORT=port, MQTT_KEEPALIVE_S=keepalive, MQTT_SESSION_EXPIRY_S=expiry
    )
    client = RecordingMqttClient()
    assert connect(cast(mqtt.Client, client), config, threading.Event())
    [call] = client.connects
    assert (call.host, call.port, call.keepalive) == (host, port, keepalive)
    assert call.clean_start is False, "a persistent session: the broker keeps it for MQTT_SESSION_EXPIRY_S"
    assert call.properties.SessionExpiryInterval == expiry
    assert client.loop_started == 1


@pytest.mark.parametrize(
    ("name", "value", "valid"),
    [
        ("MQTT_KEEPALIVE_S", 4, False),
        ("MQTT_KEEPALIVE_S", 5, True),
        ("MQTT_KEEPALIVE_S", 3600, True),
        ("MQTT_KEEPALIVE_S", 3601, False),
        ("MQTT_SESSION_EXPIRY_S", -1, False),
        ("MQTT_SESSION_EXPIRY_S", 0, True),
        ("MQTT_PORT", 0, False),
        ("MQTT_PORT", 65536, False),
    ],
)
def test_mqtt_settings_outside_their_bounds_are_refused(name: str, value: int, valid: bool) -> None:
    if valid:
        assert getattr(make(SensorSettings, **{name: value}), name) == value
    else:
        with pytest.raises(ValidationError, match=name):
            make(SensorSettings, **{name: value})


def test_the_client_logs_in_with_the_configured_user() -> None:
    config = make(ServerSettings, MQTT_USERNAME="bridge-user", MQTT_PASSWORD="s3cret pass")
    client = make_client(config, "bridge-1")
    assert (client.username, client.password) == ("bridge-user", "s3cret pass")


@dataclass(frozen=True)
class Certificates:
    ca: Path
    other_ca: Path
    other_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and an unrelated CA."""
    assert shutil.which("openssl"), "openssl is missing (Debian's openssl package)"
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        openssl(
            "req", "-x509", *key, "-days", "1", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt"
        )
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extensions in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", *key, "-subj", f"/CN={name}-{'127.0.0.1' if name == 'server' else 'sensor'}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", *extensions, "-out", f"{name}.crt")  # fmt: skip
    return Certificates(
        ca=folder / "ca.crt",
        other_ca=folder / "other-ca.crt",
        other_key=folder / "other-ca.key",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
    )


class OneConnection:
    """A listener on 127.0.0.1 that takes one connection, as TLS server when given a context; records what it saw."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.first_byte: bytes | None = None
        self.peer: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._serve, args=(tls,), daemon=True).start()

    def _serve(self, tls: ssl.SSLContext | None) -> None:
        try:
            connection, _ = self._socket.accept()
            connection.settimeout(10)
            with connection:
                if tls is None:
                    self.first_byte = connection.recv(1)
                else:
                    with tls.wrap_socket(connection, server_side=True) as secure:
                        self.peer = cast(dict[str, Any], secure.getpeercert())
        except (OSError, ssl.SSLError) as error:
            self.error = error
        finally:
            self._socket.close()
            self._done.set()

    def wait(self) -> OneConnection:
        assert self._done.wait(10), "nobody connected"
        return self


def server_tls(certificates: Certificates, client_certificate: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    if client_certificate:
        context.load_verify_locations(certificates.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def connect_once(client: mqtt.Client, port: int) -> BaseException | None:
    """paho's own connect (TCP, the TLS handshake, CONNECT) to 127.0.0.1:port; the error, if any."""
    try:
        client.connect("127.0.0.1", port, keepalive=30)
    except (OSError, ssl.SSLError, ssl.CertificateError) as error:
        return error
    finally:
        with contextlib.suppress(Exception):
            client.socket().close()  # type: ignore[union-attr]
    return None


def test_tls_ca_file_turns_tls_on_and_verifies_the_broker(certificates: Certificates) -> None:
    plain = OneConnection()
    assert connect_once(make_client(make(SensorSettings), "s-1"), plain.port) is None
    assert plain.wait().first_byte == b"\x10", "without MQTT_TLS_CA_FILE: MQTT in the clear (CONNECT first)"

    trusted = OneConnection(server_tls(certificates, client_certificate=False))
    client = make_client(make(SensorSettings, MQTT_TLS_CA_FILE=certificates.ca), "s-1")
    assert connect_once(client, trusted.port) is None
    assert trusted.wait().error is None, "with MQTT_TLS_CA_FILE: a TLS handshake"

    untrusted = OneConnection(server_tls(certificates, client_certificate=False))
    client = make_client(make(SensorSettings, MQTT_TLS_CA_FILE=certificates.other_ca), "s-1")
    error = connect_once(client, untrusted.port)
    assert isinstance(error, ssl.SSLCertVerificationError), f"a broker the CA did not sign must be refused: {error!r}"


def test_the_client_certificate_and_key_are_shown_to_a_broker_that_asks(certificates: Certificates) -> None:
    asking = OneConnection(server_tls(certificates, client_certificate=True))
    config = make(
        SensorSettings,
        MQTT_TLS_CA_FILE=certificates.ca,
        MQTT_TLS_CERT_FILE=certificates.client_cert,
        MQTT_TLS_KEY_FILE=certificates.client_key,
    )
    connect_once(make_client(config, "s-1"), asking.port)
    assert asking.wait().error is None and asking.peer is not None
    assert dict(pair[0] for pair in asking.peer["subject"])["commonName"] == "client-sensor"

    without = OneConnection(server_tls(certificates, client_certificate=True))
    connect_once(make_client(make(SensorSettings, MQTT_TLS_CA_FILE=certificates.ca), "s-1"), without.port)
    assert isinstance(without.wait().error, ssl.SSLError), "no certificate set, none shown: the broker refuses"


def test_a_key_that_does_not_match_the_certificate_is_refused(certificates: Certificates) -> None:
    files = {"MQTT_TLS_CA_FILE": certificates.ca, "MQTT_TLS_CERT_FILE": certificates.client_cert}
    make_client(make(SensorSettings, **files, MQTT_TLS_KEY_FILE=certificates.client_key), "s-1")
    with pytest.raises(ssl.SSLError):
        make_client(make(SensorSettings, **files, MQTT_TLS_KEY_FILE=certificates.other_key), "s-1")


# --- the sensor: its main() with a recording publisher ----------------------------------


class FakePublisher:
    """Stands in for Data_collection.publisher.Publisher in the sensor's main(): records the readings.

    Past ``limit`` readings it answers as if the sensor were stopped, which ends an endless replay.
    """

    def __init__(
        self, settings: SensorSettings, limit: int, on_publish: Callable[[FakePublisher], None] | None
    ) -> None:
        self.settings = settings
        self.limit = limit
        self.on_publish = on_publish
        self.readings: list[contract.Reading] = []
        self.times: list[float] = []
        self.connected = threading.Event()
        self.pending = 0
        self.refused = 0

    def start(self, stop: threading.Event) -> bool:
        self.connected.set()
        return True

    def publish(self, item: contract.Reading, stop: threading.Event) -> bool:
        if len(self.readings) >= self.limit:
            return False
        self.readings.append(item)
        self.times.append(time.monotonic())
        if self.on_publish is not None:
            self.on_publish(self)
        return True

    def resend_spooled(self, stop: threading.Event) -> int:
        return 0

    def drain(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def values(self) -> list[float]:
        return [r.v for r in self.readings]


@dataclass
class SensorRun:
    code: int
    publisher: FakePublisher | None
    log_levels: list[str]

    @property
    def published(self) -> FakePublisher:
        assert self.publisher is not None, "the sensor stopped before it made its publisher"
        return self.publisher


SENSOR_BASE = {"SENSOR_ID": "s-1", "HEALTH_PORT": "0", "SENSOR_INTERVAL_S": "0", "SENSOR_LOOP": "false"}


def run_sensor(
    env: dict[str, str | None], limit: int = 1000, on_publish: Callable[[FakePublisher], None] | None = None
) -> SensorRun:
    """Run Data_collection.__main__.main() with ``env`` (None: unset) and a recording publisher."""
    created: list[FakePublisher] = []

    def publisher(config: SensorSettings) -> FakePublisher:
        created.append(FakePublisher(config, limit, on_publish))
        return created[-1]

    values = {k: v for k, v in {**REQUIRED, **SENSOR_BASE, **env}.items() if v is not None}
    levels, patched = _setup_levels()
    with keep_signals(), patched, mock.patch.dict(os.environ, values):
        with mock.patch.object(sensor_main, "Publisher", publisher):
            code = sensor_main.main()
    return SensorRun(code, created[0] if created else None, levels)


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("csv")
    (folder / "values.csv").write_text("value\n1.5\n2.5\n-3\n")
    (folder / "two.csv").write_text("a,b\n1,10\n2,20\n3,30\n")
    (folder / "named.csv").write_text("zone,value,other\nx,7,70\ny,8,80\n")
    (folder / "timed.csv").write_text("time,value\n2026-01-01T00:00:00,1\n2026-01-01T03:00:00+02:00,2\n")
    return folder


def test_the_sensor_replays_sensor_csv(csv_folder: Path) -> None:
    run = run_sensor({"SENSOR_CSV": str(csv_folder / "values.csv")})
    assert run.code == 0 and run.published.values == [1.5, 2.5, -3.0]
    demo = [row.value for row in read_rows(DEMO_CSV)]
    default = run_sensor({"SENSOR_CSV": None, "SENSOR_MAX_READINGS": "5"})
    assert default.published.values == demo[:5], "unset: the seed's demo_data.csv"
    with pytest.raises(SystemExit) as stopped:
        run_sensor({"SENSOR_CSV": str(csv_folder / "missing.csv")})
    assert stopped.value.code == 2, "a missing file: the sensor does not start"


def test_sensor_value_column_picks_the_values(csv_folder: Path) -> None:
    two = str(csv_folder / "two.csv")
    assert run_sensor({"SENSOR_CSV": two, "SENSOR_VALUE_COLUMN": "b"}).published.values == [10.0, 20.0, 30.0]
    assert run_sensor({"SENSOR_CSV": two, "SENSOR_VALUE_COLUMN": "a"}).published.values == [1.0, 2.0, 3.0]
    unnamed = run_sensor({"SENSOR_CSV": two})
    assert (unnamed.code, unnamed.publisher) == (2, None), "two columns, none named value: the sensor stops"
    named = run_sensor({"SENSOR_CSV": str(csv_folder / "named.csv")})
    assert named.published.values == [7.0, 8.0], "unset: the column named value"
    assert run_sensor({"SENSOR_CSV": str(csv_folder / "values.csv")}).published.values == [1.5, 2.5, -3.0]
    assert run_sensor({"SENSOR_CSV": two, "SENSOR_VALUE_COLUMN": "c"}).code == 2, "no such column"


def test_sensor_timestamp_column_gives_the_readings_times(csv_folder: Path) -> None:
    timed = str(csv_folder / "timed.csv")
    run = run_sensor({"SENSOR_CSV": timed, "SENSOR_TIMESTAMP_COLUMN": "time"})
    assert [r.ts for r in run.published.readings] == [
        datetime(2026, 1, 1, 0, 0, tzinfo=UTC),  # no zone: UTC
        datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
    ]
    assert run.published.values == [1.0, 2.0], "a time column and one other: the other holds the values"
    before = datetime.now(UTC)
    unset = run_sensor({"SENSOR_CSV": timed})
    after = datetime.now(UTC)
    assert all(before <= r.ts <= after for r in unset.published.readings), "unset: the time of publishing"
    looped = run_sensor({"SENSOR_CSV": timed, "SENSOR_TIMESTAMP_COLUMN": "time", "SENSOR_LOOP": "true"}, limit=6)
    times = [r.ts for r in looped.published.readings]
    assert times == sorted(times) and len(set(times)) == 6, "a looped file's times keep moving forward"


def test_sensor_loop_starts_over_after_the_last_row(csv_folder: Path) -> None:
    values = str(csv_folder / "values.csv")
    once = run_sensor({"SENSOR_CSV": values, "SENSOR_LOOP": "false"}, limit=10)
    assert once.code == 0 and once.published.values == [1.5, 2.5, -3.0]
    for loop in ("true", None):  # unset: true
        looped = run_sensor({"SENSOR_CSV": values, "SENSOR_LOOP": loop}, limit=10)
        assert looped.published.values == [1.5, 2.5, -3.0] * 3 + [1.5], loop


@hypothesis_settings(max_examples=40)
@given(most=st.integers(0, 12))
@example(most=0)
@example(most=1)
def test_sensor_max_readings_stops_the_sensor(most: int) -> None:
    limit = 25  # where the recording publisher ends an endless replay
    run = run_sensor({"SENSOR_LOOP": "true", "SENSOR_MAX_READINGS": str(most)}, limit=limit)
    assert run.code == 0
    assert len(run.published.readings) == (most or limit), "0: no limit"


def test_sensor_interval_s_spaces_the_readings() -> None:
    run = run_sensor({"SENSOR_INTERVAL_S": "0.05", "SENSOR_MAX_READINGS": "6"})
    gaps = [b - a for a, b in zip(run.published.times, run.published.times[1:], strict=False)]
    assert len(gaps) == 5 and sum(gaps) >= 5 * 0.05 * 0.95 and min(gaps) >= 0.02, gaps
    assert sum(gaps) < 5 * 0.05 + 0.5, "the interval, not far more"
    fast = run_sensor({"SENSOR_INTERVAL_S": "0", "SENSOR_MAX_READINGS": "50", "SENSOR_LOOP": "true"})
    assert fast.published.times[-1] - fast.published.times[0] < 0.5, "0: as fast as possible"


def test_the_sensors_readings_carry_sensor_id() -> None:
    run = run_sensor({"SENSOR_ID": "gate-7.north", "SENSOR_MAX_READINGS": "3"})
    assert {r.sensor for r in run.published.readings} == {"gate-7.north"}
    assert run.published.settings.SENSOR_ID == "gate-7.north"


def test_the_sensor_serves_health_on_health_port() -> None:
    port = free_port()
    seen: list[tuple[str, int]] = []

    def probe(_publisher: FakePublisher) -> None:
        if not seen:
            for path in ("/healthz", "/readyz"):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                    seen.append((path, answer.status))

    run_sensor({"HEALTH_PORT": str(port), "SENSOR_MAX_READINGS": "2"}, on_publish=probe)
    assert seen == [("/healthz", 200), ("/readyz", 200)]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)  # stopped with the sensor


def test_health_port_serves_health_and_zero_serves_nothing() -> None:
    with mock.patch.object(health, "ThreadingHTTPServer", _raise):
        HealthServer(0, ready={}).start()  # 0: no server is made at all
        assert run_sensor({"HEALTH_PORT": "0", "SENSOR_MAX_READINGS": "1"}).code == 0
    port = free_port()
    server = HealthServer(port, ready={"mqtt": lambda: False})
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert not_ready.value.code == 503
    finally:
        server.stop()


# --- the sensor's publisher ---------------------------------------------------------------


def _reading(n: int, sensor: str = "s-1") -> contract.Reading:
    return contract.Reading(id=f"r-{n}", sensor=sensor, ts=datetime.now(UTC), v=float(n))


def stopped_after(seconds: float) -> threading.Event:
    """A stop event set after ``seconds``: a publish that should go through at once cannot hang the test."""
    event = threading.Event()
    timer = threading.Timer(seconds, event.set)
    timer.daemon = True
    timer.start()
    return event


@contextlib.contextmanager
def real_publisher(**values: Any) -> Iterator[Publisher]:
    """A Publisher with its real paho client (never connected) and its spool in a folder of its own."""
    with tempfile.TemporaryDirectory() as spool:
        publisher = Publisher(make(SensorSettings, **{"SENSOR_ID": "s-1", "SENSOR_SPOOL_DIR": spool, **values}))
        try:
            yield publisher
        finally:
            publisher.close()


@hypothesis_settings(max_examples=30)
@given(size=st.integers(1, 40))
@example(size=1)
def test_the_sensor_holds_sensor_queue_max_readings_while_the_broker_is_away(size: int) -> None:
    """No broker: what is published is held, up to SENSOR_QUEUE_MAX; the next one is not taken."""
    running, stopped = stopped_after(10.0), threading.Event()
    stopped.set()
    with real_publisher(SENSOR_QUEUE_MAX=size) as publisher:
        assert all(publisher.publish(_reading(n), running) for n in range(size))
        assert publisher.published == size == publisher.pending == len(publisher.spool)
        assert publisher.publish(_reading(size), stopped) is False, "full: it waits (here: already stopped)"
        assert publisher.published == size


def test_a_full_queue_makes_publishing_wait_until_stopped() -> None:
    stop = stopped_after(10.0)
    with real_publisher(SENSOR_QUEUE_MAX=3) as publisher:
        for n in range(3):
            assert publisher.publish(_reading(n), stop)
        answer: list[bool] = []
        waiting = threading.Thread(target=lambda: answer.append(publisher.publish(_reading(3), stop)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and answer == [], "a reading past the queue waits"
        stop.set()
        waiting.join(5)
        assert answer == [False] and publisher.published == 3


@dataclass
class RecordedPublisher:
    publisher: Publisher
    client: RecordingMqttClient


@contextlib.contextmanager
def recorded_publisher(spool: str | Path | None = None, **values: Any) -> Iterator[RecordedPublisher]:
    """A Publisher whose MQTT client is a recording stand-in (its spool in ``spool``, else a folder of its own)."""
    clients: list[RecordingMqttClient] = []

    def client(settings: Any, client_id: str, *, manual_ack: bool = False) -> RecordingMqttClient:
        clients.append(RecordingMqttClient(client_id, manual_ack))
        return clients[-1]

    with contextlib.ExitStack() as stack:
        folder = spool if spool is not None else stack.enter_context(tempfile.TemporaryDirectory())
        with mock.patch.object(publisher_module, "make_client", client):
            publisher = Publisher(make(SensorSettings, **{"SENSOR_ID": "s-1", "SENSOR_SPOOL_DIR": folder, **values}))
        stack.callback(publisher.spool.close)
        yield RecordedPublisher(publisher, clients[0])


def test_the_publisher_connects_as_sensor_id_and_publishes_to_its_topic() -> None:
    with recorded_publisher(SENSOR_ID="gate-7", SENSOR_QUEUE_MAX=5) as recorded:
        assert recorded.client.client_id == "gate-7"
        assert recorded.publisher.topic == contract.readings_topic("gate-7") == "sensors/gate-7/readings"
        assert recorded.client.max_queued == 5 and recorded.publisher.spool.limit == 5, "SENSOR_QUEUE_MAX bounds both"


def test_unacknowledged_readings_are_kept_in_sensor_spool_dir_and_sent_first_on_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "spool-here"
    stop = stopped_after(10.0)
    with recorded_publisher(folder, SENSOR_ID="gate-7") as first:
        for n in range(4):
            assert first.publisher.publish(_reading(n, "gate-7"), stop)
        acked = success(PacketTypes.PUBACK)
        for mid in (1, 2):  # the broker acknowledges the first two only
            first.publisher._on_publish(cast(mqtt.Client, first.client), None, mid, acked, None)
    assert [p.name for p in folder.iterdir() if p.suffix == ".sqlite"] == ["gate-7.sqlite"]
    with recorded_publisher(folder, SENSOR_ID="gate-7") as second:
        assert second.publisher.resend_spooled(stop) == 2
        assert [contract.parse_reading(raw).id for raw in second.client.published] == ["r-2", "r-3"]
    with recorded_publisher(tmp_path / "elsewhere", SENSOR_ID="gate-7") as other:
        assert other.publisher.resend_spooled(stop) == 0, "another SENSOR_SPOOL_DIR holds nothing of it"


@hypothesis_settings(max_examples=100)
@given(
    window=st.integers(0, 60),
    acked_at=st.lists(st.integers(0, 100), min_size=1, max_size=20).map(sorted),
    outage=st.integers(0, 200),
    lost_after=st.integers(0, 30),
)
@example(window=10, acked_at=[0, 50, 89, 90, 95], outage=100, lost_after=0)
@example(window=0, acked_at=[100], outage=5, lost_after=0)
def test_after_a_reconnect_the_sensor_replays_what_was_acknowledged_within_sensor_replay_s(
    window: int, acked_at: list[int], outage: int, lost_after: int
) -> None:
    """The readings acknowledged in the SENSOR_REPLAY_S seconds before the connection was lost, whatever the
    outage's length, are published again after the reconnect (0: none)."""
    clock, stop = Clock(), stopped_after(10.0)
    flags = SimpleNamespace(session_present=False)
    counted = REGISTRY.get_sample_value("pipeline_sensor_replayed_total") or 0.0
    with mock.patch.object(publisher_module, "time", clock):
        with recorded_publisher(SENSOR_REPLAY_S=window, SENSOR_QUEUE_MAX=1000) as recorded:
            publisher, client = recorded.publisher, cast(mqtt.Client, recorded.client)
            publisher._on_connect(client, None, flags, success(PacketTypes.CONNACK), None)
            start = clock.now
            for n, at in enumerate(acked_at):
                clock.now = start + at
                assert publisher.publish(_reading(n), stop)
                mid = len(recorded.client.published)
                publisher._on_publish(client, None, mid, success(PacketTypes.PUBACK), None)
            clock.now = lost = start + acked_at[-1] + lost_after
            publisher._on_disconnect(client, None, flags, ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)
            clock.now += outage
            recorded.client.published.clear()
            publisher._on_connect(client, None, flags, success(PacketTypes.CONNACK), None)
    wanted = [f"r-{n}" for n, at in enumerate(acked_at) if window > 0 and start + at >= lost - window]
    assert [contract.parse_reading(raw).id for raw in recorded.client.published] == wanted
    assert publisher.replayed == len(wanted)
    assert (REGISTRY.get_sample_value("pipeline_sensor_replayed_total") or 0.0) - counted == len(wanted), "counted"


# --- the bridge --------------------------------------------------------------------------


@dataclass
class BuiltBridge:
    bridge: Bridge
    client: RecordingMqttClient
    producer: RecordingProducer
    store: RecordingStore


def make_bridge(**values: Any) -> BuiltBridge:
    """A Bridge with its settings, a recording MQTT client, producer and store (no server)."""
    clients: list[RecordingMqttClient] = []

    def client(settings: Any, client_id: str, *, manual_ack: bool = False) -> RecordingMqttClient:
        clients.append(RecordingMqttClient(client_id, manual_ack))
        return clients[-1]

    producer, store = RecordingProducer(), RecordingStore()
    with mock.patch.object(ingest_module, "make_client", client):
        bridge = Bridge(make(ServerSettings, **values), cast(Store, store), cast(Producer, producer), threading.Event())
    return BuiltBridge(bridge, clients[0], producer, store)


def incoming(raw: bytes, sensor: str = "s-1", mid: int = 1) -> Incoming:
    return Incoming(contract.readings_topic(sensor), raw, mid, 0, 0, datetime.now(UTC))


@hypothesis_settings(max_examples=100)
@given(inflight=st.integers(1, 65535))
@example(inflight=1)
@example(inflight=65535)
def test_the_bridge_asks_the_broker_for_at_most_server_max_inflight(inflight: int) -> None:
    built = make_bridge(SERVER_MAX_INFLIGHT=inflight)
    assert built.bridge.start()
    [call] = built.client.connects
    assert call.properties.ReceiveMaximum == inflight, "MQTT 5 Receive Maximum in CONNECT"
    for bad in (0, 65536):
        with pytest.raises(ValidationError, match="SERVER_MAX_INFLIGHT"):
            make(ServerSettings, SERVER_MAX_INFLIGHT=bad)


@hypothesis_settings(max_examples=60)
@given(
    client_id=st.from_regex(r"\A[A-Za-z0-9_.-]{1,40}\Z"),
    group=st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"),
)
def test_the_bridge_connects_as_mqtt_client_id_and_subscribes_in_its_share_group(client_id: str, group: str) -> None:
    built = make_bridge(MQTT_CLIENT_ID=client_id, MQTT_SHARE_GROUP=group)
    assert built.client.client_id == client_id and built.client.manual_ack
    flags = SimpleNamespace(session_present=False)
    built.bridge._on_connect(cast(mqtt.Client, built.client), None, flags, success(PacketTypes.CONNACK), None)
    [topics] = built.client.subscriptions
    assert topics[0][0] == f"$share/{group}/{contract.MQTT_READINGS_FILTER}"
    for bad in ("a/b", "a+", "#", "x" * 65, ""):
        with pytest.raises(ValidationError, match="MQTT_SHARE_GROUP"):
            make(ServerSettings, MQTT_SHARE_GROUP=bad)


@hypothesis_settings(max_examples=100)
@given(most=st.integers(1, 50), count=st.integers(1, 120))
@example(most=1, count=3)
@example(most=50, count=50)
def test_a_bridge_batch_holds_at_most_server_batch_max(most: int, count: int) -> None:
    built = make_bridge(SERVER_BATCH_MAX=most, SERVER_BATCH_WAIT_MS=0)
    for n in range(count):
        built.bridge.inbox.put(incoming(b"{}", mid=n))
    sizes: list[int] = []
    mids: list[int] = []
    while sum(sizes) < count:
        batch = built.bridge.poll()
        sizes.append(len(batch))
        mids += [item.mid for item in batch]
    assert sizes == [most] * (count // most) + ([count % most] if count % most else [])
    assert mids == list(range(count)) and built.bridge.inbox.empty()


def test_a_bridge_batch_waits_server_batch_wait_ms_to_fill() -> None:
    def later(bridge: Bridge, delay_s: float, mid: int) -> threading.Timer:
        timer = threading.Timer(delay_s, lambda: bridge.inbox.put(incoming(b"{}", mid=mid)))
        timer.start()
        return timer

    waiting = make_bridge(SERVER_BATCH_MAX=100, SERVER_BATCH_WAIT_MS=400).bridge
    waiting.inbox.put(incoming(b"{}", mid=0))
    timers = [later(waiting, 0.1, 1), later(waiting, 1.2, 2)]
    started = time.monotonic()
    batch = waiting.poll()
    took = time.monotonic() - started
    assert [i.mid for i in batch] == [0, 1], "what came within the wait, not what came after"
    assert 0.39 <= took < 1.1, took

    eager = make_bridge(SERVER_BATCH_MAX=100, SERVER_BATCH_WAIT_MS=0).bridge
    eager.inbox.put(incoming(b"{}", mid=0))
    timers.append(later(eager, 0.3, 1))
    started = time.monotonic()
    assert [i.mid for i in eager.poll()] == [0], "0: what is there, at once"
    assert time.monotonic() - started < 0.25
    for timer in timers:
        timer.cancel()


def _prepared(n: int) -> Prepared:
    item = _reading(n)
    return prepare(payload(item), contract.readings_topic(item.sensor), datetime.now(UTC), contract.MAX_PAYLOAD_BYTES)


@hypothesis_settings(max_examples=100)
@given(size=st.integers(0, 6), count=st.integers(1, 10), data=st.data())
@example(size=0, count=1, data=None)
def test_the_bridge_skips_the_last_server_dedupe_cache_readings_it_stored(
    size: int, count: int, data: st.DataObject | None
) -> None:
    again = data.draw(st.integers(0, count - 1), label="again") if data is not None else 0
    built = make_bridge(SERVER_DEDUPE_CACHE=size)
    items = [_prepared(n) for n in range(count)]
    for item in items:
        built.bridge.write([item], Attempt())
    produced = len(built.producer.produced)
    built.bridge.write([items[again]], Attempt())
    remembered = again >= count - size  # among the last `size` readings stored
    assert (len(built.producer.produced) == produced) == remembered, (size, count, again)
    ids = RecentIds(size)
    ids.add_all(f"r-{n}" for n in range(count))
    assert [f"r-{n}" in ids for n in range(count)] == [n >= count - size for n in range(count)]


@hypothesis_settings(max_examples=150)
@given(limit=st.integers(64, 4096), data=st.data())
@example(limit=contract.MAX_PAYLOAD_BYTES, data=None)
def test_payloads_over_server_max_payload_bytes_are_rejected(limit: int, data: st.DataObject | None) -> None:
    built = make_bridge(SERVER_MAX_PAYLOAD_BYTES=limit)
    item = _reading(1)
    raw = payload(item)
    sizes = st.one_of(st.sampled_from([limit - 1, limit, limit + 1]), st.integers(len(raw), limit + 200))
    size = max(len(raw), data.draw(sizes, label="size") if data is not None else limit + 1)
    padded = raw + b" " * (size - len(raw))  # JSON allows the white space: only the size differs
    if size > limit:
        with pytest.raises(contract.ContractError) as refused:
            built.bridge.handle(incoming(padded))
        assert refused.value.kind == "too_large"
    else:
        assert built.bridge.handle(incoming(padded)).reading.id == item.id
    rows = {row.name: row for row in readme_rows()}
    most = re.search(r"at most `(\d+)`", rows["SERVER_MAX_PAYLOAD_BYTES"].meaning)
    assert most is not None and int(most[1]) == contract.MAX_PAYLOAD_LIMIT
    make(ServerSettings, SERVER_MAX_PAYLOAD_BYTES=contract.MAX_PAYLOAD_LIMIT)
    with pytest.raises(ValidationError, match="SERVER_MAX_PAYLOAD_BYTES"):
        make(ServerSettings, SERVER_MAX_PAYLOAD_BYTES=contract.MAX_PAYLOAD_LIMIT + 1)


@hypothesis_settings(max_examples=200)
@given(settle=st.integers(0, 3600), elapsed=st.integers(0, 4000))
@example(settle=10, elapsed=9)
@example(settle=10, elapsed=10)
@example(settle=0, elapsed=0)
@example(settle=1, elapsed=0)
def test_an_aggregate_is_written_once_nothing_was_added_for_settle_s(settle: int, elapsed: int) -> None:
    clock, store = Clock(), RecordingStore()
    at = datetime(2026, 11, 27, 10, 34, 5, tzinfo=UTC)

    def prediction(n: int) -> dict[str, Any]:
        model = {"name": "m", "hash": "h"}
        return {"_id": f"p{n}", "sensor": "s1", "ds": at, "v": 1.0, "yhat": 1.0, "yhat_lower": 0.0} | {
            "yhat_upper": 2.0,
            "model": model,
        }

    with mock.patch.object(aggregates, "time", clock):
        aggregator = Aggregator(cast(Store, store), threading.Event(), settle_s=settle)
        # The running totals are written by _id updates, outside this setting: counted apart.
        aggregator._write_scores = lambda scores, write_id, retry: 0  # type: ignore[method-assign]
        aggregator.touch_accuracy([prediction(1)])
        clock.now += elapsed
        written = aggregator.flush()
        assert written == (1 if elapsed >= settle else 0), (settle, elapsed)
        if not written and settle >= 2:
            clock.now += settle - elapsed - 1
            aggregator.touch_accuracy([prediction(2)])  # added again: it waits anew
            clock.now += settle - 1
            assert aggregator.flush() == 0
            clock.now += 1
            assert aggregator.flush() == 1
        elif not written:
            clock.now += settle - elapsed
            assert aggregator.flush() == 1
    hours = [d for name, documents in store.inserted if name == contract.COLLECTION_ACCURACY_HOURLY for d in documents]
    assert len(hours) == 1


# --- the server's and the model service's main() ----------------------------------------


def run_server_main(env: dict[str, str]) -> dict[str, Any]:
    """Server.__main__.main() up to the bridge, with recording stand-ins for Kafka's admin, MongoDB and Kafka."""
    seen: dict[str, Any] = {}

    class FakeStore:
        def __init__(self, config: ServerSettings) -> None:
            seen["store_settings"] = config

        def ensure_capped(self, name: str, max_bytes: int, setting: str) -> None:
            seen.setdefault("capped", {})[name] = (max_bytes, setting)

        def ensure_indexes(self) -> None:
            pass

    def producer(config: dict[str, Any]) -> RecordingProducer:
        seen["producer_config"] = config
        return RecordingProducer(config)

    def retention(store: Any, stop: Any, rules: list[Rule]) -> SimpleNamespace:
        seen["retention"] = {rule.collection: rule.days for rule in rules}
        return SimpleNamespace(setup=list, run=lambda: None)

    def bridge(
        config: ServerSettings, store: Any, producer: Any, stop: Any, aggregator: Aggregator, kafka: Any
    ) -> None:
        seen["aggregator"] = aggregator
        raise Sentinel

    levels, patched = _setup_levels()
    with keep_signals(), patched, mock.patch.dict(os.environ, {**REQUIRED, **env}):
        with (
            mock.patch.object(server_main, "ensure_pipeline_topics", lambda config: seen.setdefault("topics", config)),
            mock.patch.object(server_main, "Store", FakeStore),
            mock.patch.object(server_main, "Producer", producer),
            mock.patch.object(server_main, "Bridge", bridge),
            mock.patch.object(server_main, "Retention", retention),
            pytest.raises(Sentinel),
        ):
            server_main.main()
    seen["log_levels"] = levels
    return seen


def test_server_main_passes_its_settings_on() -> None:
    seen = run_server_main(
        {
            "SERVER_REJECTIONS_MAX_MB": "3",
            "SERVER_ALERTS_MAX_MB": "5",
            "SERVER_RETENTION_RAW_DAYS": "7",
            "SERVER_RETENTION_HOURLY_DAYS": "60.5",
            "SERVER_RETENTION_DAILY_DAYS": "3650",
            "SERVER_RETENTION_REJECTIONS_DAYS": "2",
            "SERVER_RETENTION_ALERTS_DAYS": "0",
            "SERVER_AGGREGATE_SETTLE_S": "2.5",
            "SERVER_TIMELINE_EVERY_S": "0.75",
            "MQTT_CLIENT_ID": "bridge-7",
            "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:19092",
            "LOG_LEVEL": "WARNING",
        }
    )
    assert seen["capped"] == {
        "rejections": (3 * 1024 * 1024, "SERVER_REJECTIONS_MAX_MB"),
        "alerts": (5 * 1024 * 1024, "SERVER_ALERTS_MAX_MB"),
    }
    assert seen["retention"] == {
        "readings": 7,
        "predictions": 7,
        "prediction_errors": 7,
        "aggregates": 7,
        "aggregates_hourly": 60.5,
        "aggregates_daily": 3650,
        "rejections": 2,
        "alerts": 0,
    }
    assert seen["aggregator"].settle_s == 2.5
    assert seen["aggregator"].timeline.every_s == 0.75
    assert seen["producer_config"]["client.id"] == "bridge-7"
    assert seen["producer_config"]["bootstrap.servers"] == "kafka-1:19092"
    assert seen["log_levels"] == ["WARNING"]
    defaults = run_server_main({})
    assert defaults["aggregator"].settle_s == 10.0
    assert defaults["aggregator"].timeline.every_s == 5.0
    assert defaults["retention"] == {
        "readings": 30,
        "predictions": 30,
        "prediction_errors": 30,
        "aggregates": 30,
        "aggregates_hourly": 400,
        "aggregates_daily": 0,
        "rejections": 30,
        "alerts": 90,
    }


def test_model_main_loads_model_path_checked_every_reload_check_s(tmp_path: Path) -> None:
    made: list[tuple[Path, float, Path | None]] = []

    def registry(path: Path, check_every_s: float, trained: Path | None = None) -> ModelRegistry:
        made.append((path, check_every_s, trained))
        raise ModelError("stop here")

    env = {
        "MODEL_PATH": str(tmp_path / "mine.joblib"),
        "MODEL_RELOAD_CHECK_S": "0.7",
        "MODEL_TRAINED_PATH": str(tmp_path / "trained"),
    }
    with keep_signals(), mock.patch.dict(os.environ, env), mock.patch.object(model_main, "ModelRegistry", registry):
        assert model_main.main() == 2
    assert made == [(tmp_path / "mine.joblib", 0.7, tmp_path / "trained")]


def test_a_changed_model_file_is_picked_up_after_reload_check_s(tmp_path: Path) -> None:
    import joblib

    path = tmp_path / "model.joblib"

    def save(level: float) -> None:
        joblib.dump(ConstantModel(level, 1.0), tmp_path / "new.joblib")
        (tmp_path / "new.joblib").replace(path)

    for every_s in (0.5, 30.0):
        clock = Clock()
        save(1.0)
        with mock.patch.object(registry_module, "time", clock):
            models = ModelRegistry(path, check_every_s=every_s)
            save(2.0)
            clock.now += every_s * 0.9
            models.refresh()
            assert models.models["default"].model.level == 1.0, "not looked at before MODEL_RELOAD_CHECK_S"
            clock.now += every_s * 0.1
            models.refresh()
            assert models.models["default"].model.level == 2.0, "looked at once MODEL_RELOAD_CHECK_S passed"


def test_the_store_uses_mongo_uri_and_mongo_database() -> None:
    config = make(ServerSettings, MONGO_URI="mongodb://u:p@127.0.0.1:1,127.0.0.1:2/?replicaSet=x", MONGO_DATABASE="abc")
    store = Store(config)
    try:
        assert store.db.name == "abc"
        assert set(store.client.topology_description.server_descriptions()) == {("127.0.0.1", 1), ("127.0.0.1", 2)}
    finally:
        store.close()


# --- the model service's scorer, with a recording consumer ------------------------------


@dataclass
class BuiltScorer:
    scorer: Scorer
    consumer: RecordingConsumer
    producer: RecordingProducer
    model: Any


@contextlib.contextmanager
def make_scorer(model: Any = None, **values: Any) -> Iterator[BuiltScorer]:
    """A Scorer with its settings, a recording consumer and producer, and ``model`` for every sensor.

    Scorer() makes a confluent-kafka Consumer and subscribes it: librdkafka would start looking for the
    group's coordinator at once, in the background, so a real one here could join a local stack's group.
    """
    model = model if model is not None else ConstantModel(0.0, 1.0)
    consumers: list[RecordingConsumer] = []

    def consumer(config: dict[str, Any]) -> RecordingConsumer:
        consumers.append(RecordingConsumer(config))
        return consumers[-1]

    producer = RecordingProducer()
    with mock.patch.object(scorer_module, "Consumer", consumer):
        scorer = Scorer(
            make(ModelSettings, **values),
            cast(ModelRegistry, OneModel(model)),
            cast(Producer, producer),
            threading.Event(),
        )
    try:
        yield BuiltScorer(scorer, consumers[0], producer, model)
    finally:
        scorer.budget.close()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _on_grid(grid_ms: int, slot: int, offset_ms: int) -> datetime:
    """A time ``offset_ms`` from the ``slot``-th multiple of ``grid_ms`` after 2026-01-01."""
    base = (int((datetime(2026, 1, 1, tzinfo=UTC) - EPOCH).total_seconds() * 1000) // grid_ms) * grid_ms
    return EPOCH + timedelta(milliseconds=base + slot * grid_ms + offset_ms)


def _readings_at(times: list[datetime]) -> list[contract.Reading]:
    return [contract.Reading(id=f"r-{n}", sensor=f"s-{n % 3}", ts=t, v=0.0) for n, t in enumerate(times)]


@hypothesis_settings(max_examples=100)
@given(grid=st.integers(1, 10_000), data=st.data())
@example(grid=1000, data=None)
def test_a_batch_is_forecast_once_per_grid_time(grid: int, data: st.DataObject | None) -> None:
    half = (grid - 1) // 2  # strictly less than half a step away: the nearest grid time is the slot's
    if data is None:
        slots, offsets = [0, 0, 1, 5], [0, half, -half, 0]
    else:
        slots = data.draw(st.lists(st.integers(0, 30), min_size=1, max_size=20), label="slots")
        offsets = data.draw(st.lists(st.integers(-half, half), min_size=len(slots), max_size=len(slots)))
    readings = _readings_at([_on_grid(grid, s, o) for s, o in zip(slots, offsets, strict=True)])
    # No grid ahead (MODEL_FORECAST_AHEAD=0): the batch's own predict, one row per grid time.
    with make_scorer(MODEL_TIME_GRID_MS=grid, MODEL_FORECAST_AHEAD=0) as built:
        results = built.scorer.score(readings)
    assert all(isinstance(r, contract.Prediction) for r in results) and len(results) == len(readings)
    assert built.model.rows_seen == [len(set(slots))], "one row per grid time, in one call"


@hypothesis_settings(max_examples=60)
@given(offsets=st.lists(st.integers(0, 5000), min_size=1, max_size=20))
def test_a_time_grid_of_zero_forecasts_the_exact_times(offsets: list[int]) -> None:
    readings = _readings_at([_on_grid(1, 0, o) for o in offsets])
    with make_scorer(MODEL_TIME_GRID_MS=0, MODEL_FORECAST_AHEAD=30) as built:
        built.scorer.score(readings)
    assert built.model.rows_seen == [len(set(offsets))], "each exact time once; no grid, so nothing ahead"


@hypothesis_settings(max_examples=100)
@given(cache=st.integers(0, 60), points=st.integers(1, 10))
@example(cache=0, points=1)
@example(cache=10_000, points=10)
def test_the_forecast_cache_keeps_model_forecast_cache_forecasts_between_batches(cache: int, points: int) -> None:
    readings = _readings_at([_on_grid(1000, slot, 0) for slot in range(points)])
    with make_scorer(MODEL_TIME_GRID_MS=1000, MODEL_FORECAST_AHEAD=0, MODEL_FORECAST_CACHE=cache) as built:
        built.scorer.score(readings)
        assert len(built.scorer.forecasts) == min(cache, points), "kept: at most MODEL_FORECAST_CACHE"
        built.scorer.score(readings)
    if cache == 0:
        assert built.model.rows_seen == [points] * 2, "0: nothing kept, the same batch is predicted again"
    elif cache >= points:
        assert built.model.rows_seen == [points], "the same times again: no second predict"


def test_model_adaptive_gamma_widens_a_sensors_interval_after_a_miss_and_zero_keeps_the_models() -> None:
    # A 95 % interval of ±1.96. Step 0.5: one miss takes alpha to its floor, 0.005, so the next
    # interval is ±z(0.9975) = ±2.807, and 2.0 is inside it; the other sensor keeps its ±1.96.
    model = Calibrated(ConstantModel(0.0, 1.0), 1.959963984540054, 0.95, 100)
    readings = _readings_at([_on_grid(1000, 0, 0), _on_grid(1000, 1, 0), _on_grid(1000, 2, 0)])
    readings = [
        r.model_copy(update={"v": v, "sensor": s})
        for r, v, s in zip(readings, (10.0, 2.0, 2.0), ("a", "a", "b"), strict=True)
    ]
    with make_scorer(model, MODEL_ADAPTIVE_GAMMA=0.5) as built:
        adapted = built.scorer.score(readings)
    with make_scorer(model, MODEL_ADAPTIVE_GAMMA=0) as built:
        own = built.scorer.score(readings)
    assert all(isinstance(r, contract.Prediction) for r in adapted + own)
    predictions = cast(list[contract.Prediction], adapted)
    assert [p.anomaly for p in predictions] == [True, False, True]
    assert predictions[1].yhat_upper == pytest.approx(2.807033768343811)
    assert predictions[2].yhat_upper == pytest.approx(1.959963984540054), "sensor b has a level of its own"
    assert [p.anomaly for p in cast(list[contract.Prediction], own)] == [True, True, True]


def test_a_predict_call_past_model_predict_timeout_s_becomes_prediction_errors() -> None:
    readings = _readings_at([_on_grid(1000, 0, 0), _on_grid(1000, 1, 0)])
    with make_scorer(SlowModel(seconds=1.0), MODEL_PREDICT_TIMEOUT_S=0.2) as built:
        results = built.scorer.score(readings)
        deadline = time.monotonic() + 10
        while not built.scorer.model() and time.monotonic() < deadline:
            time.sleep(0.05)  # let the late call return here, not after the test
    assert all(isinstance(r, contract.PredictionError) for r in results) and len(results) == 2
    assert all("did not return within 0.2s (MODEL_PREDICT_TIMEOUT_S)" in r.reason for r in results)  # type: ignore[union-attr]
    with make_scorer(SlowModel(seconds=0.4), MODEL_PREDICT_TIMEOUT_S=5) as built:
        assert all(isinstance(r, contract.Prediction) for r in built.scorer.score(readings))


@hypothesis_settings(max_examples=40)
@given(most=st.integers(1, 100_000), wait_ms=st.integers(0, 60_000))
@example(most=1000, wait_ms=50)
def test_the_model_service_consumes_as_configured(most: int, wait_ms: int) -> None:
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-a:19092,kafka-b:19092",
        "KAFKA_GROUP_ID": "models-blue",
        "KAFKA_CLIENT_ID": "model-7",
        "KAFKA_TOPIC_READINGS": "readings-blue",
        "MODEL_BATCH_MAX": most,
        "MODEL_BATCH_WAIT_MS": wait_ms,
    }
    with make_scorer(**values) as built:
        built.scorer.source.poll()
    config = built.consumer.config
    assert (config["bootstrap.servers"], config["group.id"], config["client.id"]) == (
        "kafka-a:19092,kafka-b:19092",
        "models-blue",
        "model-7",
    )
    assert built.consumer.subscribed == ["readings-blue"]
    assert built.consumer.consumed == [(most, wait_ms / 1000)], "a batch: at most MODEL_BATCH_MAX, MODEL_BATCH_WAIT_MS"


TOPICS = {
    "KAFKA_TOPIC_READINGS": "r-blue",
    "KAFKA_TOPIC_RESULTS": "res-blue",
    "KAFKA_TOPIC_DEADLETTER": "dl-blue",
    "KAFKA_TOPIC_ALERTS": "al-blue",
}


def make_sink(**values: Any) -> tuple[ResultsSink, RecordingConsumer]:
    consumers: list[RecordingConsumer] = []

    def consumer(config: dict[str, Any]) -> RecordingConsumer:
        consumers.append(RecordingConsumer(config))
        return consumers[-1]

    with mock.patch.object(results_module, "Consumer", consumer):
        sink = ResultsSink(
            make(ServerSettings, **values),
            cast(Store, RecordingStore()),
            cast(Producer, RecordingProducer()),
            threading.Event(),
        )
    return sink, consumers[0]


def test_kafka_topic_names_flow_from_the_bridge_to_the_model_to_the_sink() -> None:
    item = _reading(1)
    bridge = make_bridge(**TOPICS)
    assert bridge.bridge.loop.process([incoming(payload(item))])
    assert bridge.producer.topics() == ["r-blue"], "the bridge forwards to KAFKA_TOPIC_READINGS"

    normal, odd = _reading(2).model_copy(update={"v": 0.5}), _reading(3).model_copy(update={"v": 50.0})
    with make_scorer(ConstantModel(0.0, 1.0), **TOPICS) as built:
        assert built.consumer.subscribed == ["r-blue"], "the model service reads KAFKA_TOPIC_READINGS"
        built.scorer.write([normal, odd], Attempt())
    assert sorted(built.producer.topics()) == ["al-blue", "res-blue", "res-blue"], "results, and the anomaly's alert"

    sink, consumer = make_sink(**TOPICS)
    assert consumer.subscribed == ["res-blue", "al-blue"], "the sink reads KAFKA_TOPIC_RESULTS and _ALERTS"
    stored = [
        sink.handle(cast(Message, FakeMessage(value, topic))).collection for topic, _, value in built.producer.produced
    ]
    assert sorted(stored) == sorted([contract.COLLECTION_PREDICTIONS] * 2 + [contract.COLLECTION_ALERTS])


def test_rejected_messages_go_to_kafka_topic_deadletter() -> None:
    bridge = make_bridge(**TOPICS)
    assert bridge.bridge.loop.process([incoming(b"not json")])
    assert bridge.producer.topics() == ["dl-blue"]
    assert [name for name, _ in bridge.store.inserted] == [contract.COLLECTION_REJECTIONS]
    with make_scorer(**TOPICS) as built:
        assert built.scorer.loop.process([cast(Message, FakeMessage(b"not json", "r-blue"))])
    assert built.producer.topics() == ["dl-blue"]


def test_the_sink_consumes_results_and_alerts_in_its_group() -> None:
    sink, consumer = make_sink(KAFKA_RESULTS_GROUP_ID="results-blue", MQTT_CLIENT_ID="bridge-9", **TOPICS)
    assert consumer.config["group.id"] == "results-blue"
    assert consumer.config["client.id"] == "bridge-9-results"
    assert consumer.subscribed == ["res-blue", "al-blue"]
    assert make_sink()[1].config["group.id"] == "bridge-results"


class RecordingAdmin:
    """Stands in for confluent-kafka's AdminClient: no topic exists; records the ones created."""

    made: list[RecordingAdmin] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.created: list[Any] = []
        RecordingAdmin.made.append(self)

    def list_topics(self, timeout: float = -1) -> Any:
        return SimpleNamespace(topics={})

    def create_topics(self, topics: list[Any]) -> dict[str, Any]:
        self.created += topics
        return {t.topic: SimpleNamespace(result=lambda: None) for t in topics}


@hypothesis_settings(max_examples=50)
@given(partitions=st.integers(1, 1000))
@example(partitions=1)
@example(partitions=3)
def test_topics_are_created_with_kafka_num_partitions(partitions: int) -> None:
    import confluent_kafka.admin

    RecordingAdmin.made.clear()
    services: tuple[type[KafkaSettings], ...] = (ServerSettings, ModelSettings)
    for cls in services:
        config = make(cls, KAFKA_NUM_PARTITIONS=partitions, KAFKA_BOOTSTRAP_SERVERS="kafka-9:9092", **TOPICS)
        with mock.patch.object(confluent_kafka.admin, "AdminClient", RecordingAdmin):
            ensure_pipeline_topics(config)
        admin = RecordingAdmin.made[-1]
        assert admin.config["bootstrap.servers"] == "kafka-9:9092"
        assert sorted(t.topic for t in admin.created) == sorted(TOPICS.values())
        assert {t.num_partitions for t in admin.created} == {partitions}
    for bad in (0, 1001):
        with pytest.raises(ValidationError, match="KAFKA_NUM_PARTITIONS"):
            make(ServerSettings, KAFKA_NUM_PARTITIONS=bad)


# --- the broker: MQTT_SERVER_CLIENT_IDS in mosquitto/docker-entrypoint.sh ---------------


def test_the_broker_gives_the_bridges_user_the_client_ids_of_mqtt_server_client_ids(tmp_path: Path) -> None:
    assert shutil.which("mosquitto_passwd"), "mosquitto_passwd is missing: run `bash localstack/install.sh`"

    def owners(ids: str | None) -> list[str]:
        auth = tmp_path / f"auth-{uuid.uuid4().hex}"
        chosen = {"MQTT_SERVER_CLIENT_IDS": ids} if ids is not None else {}
        result = run_entrypoint(tmp_path, MOSQUITTO_AUTH_DIR=str(auth), **chosen)
        assert result.returncode == 0, result.stderr
        return [line for line in (auth / "owners").read_text().splitlines() if line.startswith("owner ")]

    assert owners("bridge-*,*-bridge-*,edge.7") == [
        "owner bridge bridge-*",
        "owner bridge *-bridge-*",
        "owner bridge edge.7",
    ]
    assert owners(None) == ["owner bridge bridge-*"], "unset: bridge-*"


# --- the dashboard ------------------------------------------------------------------------


def test_the_dashboard_serves_on_dashboard_port_and_watches_dashboard_services() -> None:
    """Dashboard.__main__.main() with stand-ins for MongoDB's client, the probe, the app and uvicorn's server."""
    seen: dict[str, Any] = {}

    class FakeMongo:
        def __init__(self, uri: str, **kwargs: Any) -> None:
            seen["uri"] = uri

        def __getitem__(self, database: str) -> Any:
            seen["database"] = database
            return SimpleNamespace()

        def close(self) -> None:
            pass

    class FakeProbe:
        def __init__(self, services: dict[str, str]) -> None:
            seen["services"] = services

        def close(self) -> None:
            pass

    class FakeServer:
        def __init__(self, config: Any) -> None:
            seen["port"] = config.port

        def run(self) -> None:
            pass

    env = {
        **REQUIRED,
        "MONGO_URI": "mongodb://u:p@db.example:27017/x",
        "MONGO_DATABASE": "pages",
        "DASHBOARD_PORT": "8093",
        "DASHBOARD_SERVICES": "server=http://server:8000/, model_analysis=http://m:8001",
        "DASHBOARD_ALERTMANAGER_URL": "http://am.example:9093/",
    }

    def fake_app(*args: Any) -> Any:
        seen["alertmanager"] = args[3].url
        return SimpleNamespace()

    with (
        keep_signals(),
        _setup_levels()[1],
        mock.patch.dict(os.environ, env),
        mock.patch.object(
            dashboard_main, "mongo_client", lambda config, **kw: FakeMongo(config.MONGO_URI.get_secret_value(), **kw)
        ),
        mock.patch.object(dashboard_main, "ServiceProbe", FakeProbe),
        mock.patch.object(dashboard_main, "Reader", lambda db: SimpleNamespace(ping=lambda: True)),
        mock.patch.object(dashboard_main, "create_app", fake_app),
        mock.patch.object(dashboard_main.uvicorn, "Server", FakeServer),
    ):
        assert dashboard_main.main() == 0
    assert seen == {
        "uri": "mongodb://u:p@db.example:27017/x",
        "database": "pages",
        "services": {"server": "http://server:8000", "model_analysis": "http://m:8001"},
        "port": 8093,
        "alertmanager": "http://am.example:9093",
    }


@hypothesis_settings(max_examples=30)
@given(
    user=st.from_regex(r"\A[A-Za-z0-9_.-]{1,20}\Z"),
    password=st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), min_size=1, max_size=20),
)
@example(user="admin", password="s3cret")
def test_the_page_needs_dashboard_username_and_password(user: str, password: str) -> None:
    from Dashboard.app import create_app

    config = make(DashboardSettings, DASHBOARD_USERNAME=user, DASHBOARD_PASSWORD=password)
    reader = SimpleNamespace(alerts=lambda limit: [])
    app = create_app(config, cast(Any, reader), cast(Any, SimpleNamespace()))
    assert asgi(app, "/api/alerts", (user, password))[0] == 200
    for wrong in (
        None,
        (user, password + "x"),
        (user + "x", password),
        ("admin" if user != "admin" else "x", password),
    ):
        assert asgi(app, "/api/alerts", wrong)[0] == 401, wrong
