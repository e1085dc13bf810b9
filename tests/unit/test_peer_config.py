"""bench.telegraf's Telegraf configuration: every value reaches Telegraf as written, and the guarantees hold.

Telegraf parses TOML, then replaces ``$NAME``/``${NAME}`` in every string
value with the environment's (``$$`` is a literal ``$``), so a value survives
only if it is escaped for both.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.telegraf import TelegrafConfig, render_telegraf_config, telegraf_version, toml_string

#: Any text a UTF-8 file can hold (no lone surrogates).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
BASE = TelegrafConfig(
    mqtt_url="tcp://127.0.0.1:35883",
    topics=["sensors/+/readings"],
    client_id="ns-bridge-telegraf",
    username="bridge",
    password="secret",
    kafka_brokers=["127.0.0.1:35092"],
    kafka_topic="ns.analytics",
)


def telegraf_value(text: str) -> str:
    """What Telegraf's environment substitution leaves of a parsed string, which must hold no ``$NAME``."""
    assert re.fullmatch(r"(?:[^$]|\$\$)*", text), f"an unescaped $ in {text!r}"
    return text.replace("$$", "$")


def parsed(config: TelegrafConfig) -> dict[str, Any]:
    return tomllib.loads(render_telegraf_config(config))


@given(TEXT)
def test_a_string_survives_toml_and_the_environment_substitution(text: str) -> None:
    assert telegraf_value(tomllib.loads(f"x = {toml_string(text)}")["x"]) == text


@given(client_id=TEXT.filter(bool), username=TEXT, password=TEXT, topic=TEXT, kafka_topic=TEXT.filter(bool))
def test_every_setting_reaches_telegraf_as_given(
    client_id: str, username: str, password: str, topic: str, kafka_topic: str
) -> None:
    config = dataclasses.replace(
        BASE,
        client_id=client_id,
        username=username,
        password=password,
        topics=[topic, "$share/g/sensors/+/readings"],
        kafka_topic=kafka_topic,
        tls_ca="/ca $HOME.crt",
    )
    document = parsed(config)
    (mqtt,) = document["inputs"]["mqtt_consumer"]
    (kafka,) = document["outputs"]["kafka"]
    assert telegraf_value(mqtt["client_id"]) == client_id
    assert telegraf_value(mqtt["username"]) == username
    assert telegraf_value(mqtt["password"]) == password
    assert [telegraf_value(t) for t in mqtt["topics"]] == [topic, "$share/g/sensors/+/readings"]
    assert telegraf_value(kafka["topic"]) == kafka_topic
    assert telegraf_value(mqtt["tls_ca"]) == telegraf_value(kafka["tls_ca"]) == "/ca $HOME.crt"


def test_the_guarantees_the_issue_names() -> None:
    document = parsed(BASE)
    (mqtt,) = document["inputs"]["mqtt_consumer"]
    (kafka,) = document["outputs"]["kafka"]
    assert mqtt["qos"] == 1
    assert mqtt["persistent_session"] is True  # clean session off
    assert mqtt["client_id"] == "ns-bridge-telegraf"
    assert mqtt["max_undelivered_messages"] == 1000  # acknowledged after the output
    assert kafka["required_acks"] == -1
    assert document["agent"]["metric_buffer_limit"] >= mqtt["max_undelivered_messages"]
    assert "tls_ca" not in mqtt


@given(st.integers(min_value=1, max_value=10_000), st.integers(min_value=0, max_value=10_000))
def test_the_buffer_holds_every_undelivered_message(undelivered: int, extra: int) -> None:
    config = dataclasses.replace(BASE, max_undelivered=undelivered, buffer_limit=undelivered + extra)
    document = parsed(config)
    assert document["inputs"]["mqtt_consumer"][0]["max_undelivered_messages"] == undelivered
    assert document["agent"]["metric_buffer_limit"] == undelivered + extra
    with pytest.raises(ValueError, match="drop" if undelivered > 1 else "at least 1"):
        render_telegraf_config(dataclasses.replace(config, buffer_limit=undelivered - 1))


@pytest.mark.parametrize("qos", [1, 2])
def test_qos_one_and_two_are_accepted(qos: int) -> None:
    assert parsed(dataclasses.replace(BASE, qos=qos))["inputs"]["mqtt_consumer"][0]["qos"] == qos


@pytest.mark.parametrize(
    "change",
    [
        {"qos": 0},
        {"qos": 3},
        {"client_id": ""},
        {"topics": []},
        {"kafka_brokers": []},
        {"kafka_topic": ""},
        {"max_undelivered": 0},
        {"batch_size": 0},
        {"flush_interval_ms": 0},
        {"buffer_limit": 0},
    ],
)
def test_a_setting_that_would_lose_the_guarantee_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        render_telegraf_config(dataclasses.replace(BASE, **change))


@pytest.mark.parametrize("name", ["batch_size", "flush_interval_ms", "max_undelivered"])
def test_one_is_the_smallest_count(name: str) -> None:
    change: dict[str, Any] = {name: 1}
    document = parsed(dataclasses.replace(BASE, **change))
    assert document["agent"]["flush_interval"] == ("1ms" if name == "flush_interval_ms" else "100ms")


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        toml_string("a\ud800b")


def test_the_version_comes_from_the_pinned_go_mod() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", telegraf_version())
