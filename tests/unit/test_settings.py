"""A bad setting stops a service at start, naming the variable and never echoing a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-value-never-printed"


def start(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "KAFKA_", "MONGO_", "SENSOR_", "MODEL_"))
    }
    return subprocess.run(
        [sys.executable, "-m", module], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


BASE = {"MQTT_USERNAME": "u", "MQTT_PASSWORD": SECRET, "MONGO_URI": f"mongodb://u:{SECRET}@localhost/db"}


@pytest.mark.parametrize(
    ("module", "env", "message"),
    [
        ("Server", {**BASE, "MQTT_PORT": "eighty"}, "MQTT_PORT: Input should be a valid integer"),
        ("Server", {**BASE, "MQTT_PORT": "70000"}, "MQTT_PORT: Input should be less than or equal to 65535"),
        ("Server", {"MQTT_USERNAME": "u", "MQTT_PASSWORD": SECRET}, "MONGO_URI is not set (required)"),
        ("Server", {**BASE, "SERVER_BATCH_MAX": "0"}, "SERVER_BATCH_MAX: Input should be greater than or equal to 1"),
        ("Server", {**BASE, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("Data_collection", {**BASE, "SENSOR_INTERVAL_S": "-1"}, "SENSOR_INTERVAL_S: Input should be greater than"),
        ("Data_collection", {**BASE, "SENSOR_CSV": "/nope.csv"}, "SENSOR_CSV: Path does not point to a file"),
        ("Data_collection", {**BASE, "SENSOR_ID": "a/b"}, "SENSOR_ID: String should match pattern"),
        ("Data_collection", {"MQTT_PASSWORD": SECRET}, "MQTT_USERNAME is not set (required)"),
        ("Models_analysis", {"MODEL_BATCH_MAX": "many"}, "MODEL_BATCH_MAX: Input should be a valid integer"),
        ("Models_analysis", {"MODEL_PATH": "/nope.joblib"}, "MODEL_PATH: /nope.joblib: no usable model"),
    ],
)
def test_bad_setting_stops_the_service_with_its_name(module: str, env: dict[str, str], message: str) -> None:
    result = start(module, **env)
    assert result.returncode == 2, result.stderr + result.stdout
    output = result.stderr + result.stdout
    assert message in output
    assert SECRET not in output
