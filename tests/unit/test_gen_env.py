"""make env: random secrets, never overwriting, adding keys that are new."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(target: Path) -> str:
    result = subprocess.run(
        [sys.executable, "scripts/gen_env.py", str(target)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def values(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")
    )


def test_fresh_env_gets_random_secrets_and_keeps_them(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    run(target)
    first = values(target)
    assert len(first["MQTT_SERVER_PASSWORD"]) >= 24 and first["MQTT_SENSOR_USERNAME"] == "sensor"
    assert first["MQTT_SERVER_PASSWORD"] != first["MONGO_APP_PASSWORD"]
    other = tmp_path / "other.env"
    run(other)
    assert values(other)["MONGO_APP_PASSWORD"] != first["MONGO_APP_PASSWORD"], "secrets must differ per clone"
    assert "left as it is" in run(target)
    assert values(target) == first


def test_an_older_env_gets_the_keys_it_lacks(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    run(target)
    lines = target.read_text().splitlines()
    target.write_text("\n".join(line for line in lines if not line.startswith("MONGO_EXPRESS_PASSWORD=")) + "\n")
    kept = values(target)
    assert "added MONGO_EXPRESS_PASSWORD" in run(target)
    now = values(target)
    assert len(now["MONGO_EXPRESS_PASSWORD"]) >= 24
    assert {k: now[k] for k in kept} == kept


def test_sensor_accounts_get_a_random_password_each(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    run(target)
    accounts = [entry.split(":", 1) for entry in values(target)["MQTT_SENSOR_ACCOUNTS"].split(",")]
    assert [sensor for sensor, _ in accounts] == ["sensor-1", "sensor-2", "sensor-3"]
    passwords = [password for _, password in accounts]
    assert all(len(p) >= 24 for p in passwords) and len(set(passwords)) == 3


def test_sensors_is_written_as_a_number_and_an_older_env_gains_it(tmp_path: Path) -> None:
    """SENSORS (Compose's sensor replicas) is a setting, not a secret: 3, kept as the user sets it."""
    target = tmp_path / ".env"
    run(target)
    assert values(target)["SENSORS"] == "3"
    target.write_text("".join(f"{k}={v}\n" for k, v in values(target).items() if k != "SENSORS"))
    assert "added SENSORS" in run(target)
    assert values(target)["SENSORS"] == "3"
    target.write_text(target.read_text().replace("SENSORS=3", "SENSORS=10"))
    run(target)
    assert values(target)["SENSORS"] == "10"
