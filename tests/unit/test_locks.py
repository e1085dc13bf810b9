"""The hashed locks agree with the requirements files, with each other, and are what gets installed.

``make lock`` writes requirements-dev.lock (the venv of the tests and the local
stack) and one <service>/requirements.lock per image, constrained to it. These
tests fail when a requirements file changed without ``make lock``, when an image
would run another version than the tests ran, or when an install skips the lock.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("Data_collection", "Server", "Models_analysis", "Dashboard")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\#]+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line in a requirements file, following ``-r``."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            found.update(pins((path.parent / line[3:].strip()).resolve()))
            continue
        match = _PIN.match(line)
        if match:
            found[_name(match.group(1))] = match.group(2)
    return found


def locked(path: Path) -> dict[str, str]:
    """name -> version in a lock; every entry must carry hashes."""
    text = path.read_text()
    entries = pins(path)
    assert entries, f"{path.name} is empty"
    for name in entries:
        pattern = rf"^{re.escape(name)}==\S+(?: ;[^\\\n]*)? (?:\\\n\s+--hash=sha256:[0-9a-f]{{64}}\s*)+"
        block = re.search(pattern, text, re.M | re.I)
        assert block is not None, f"{path}: {name} has no --hash lines (run `make lock`)"
    return entries


@pytest.mark.parametrize(
    ("requirements", "lock"),
    [("requirements-dev.txt", "requirements-dev.lock")]
    + [(f"{s}/requirements.txt", f"{s}/requirements.lock") for s in SERVICES],
)
def test_every_pin_is_in_its_lock_at_the_same_version(requirements: str, lock: str) -> None:
    wanted, got = pins(ROOT / requirements), locked(ROOT / lock)
    wrong = {n: (v, got.get(n)) for n, v in wanted.items() if got.get(n) != v}
    assert not wrong, f"{requirements} and {lock} differ (name: (wanted, locked)); run `make lock`: {wrong}"


@pytest.mark.parametrize("service", SERVICES)
def test_an_image_runs_the_versions_the_tests_ran(service: str) -> None:
    image, tests = locked(ROOT / service / "requirements.lock"), locked(ROOT / "requirements-dev.lock")
    differ = {n: (v, tests.get(n)) for n, v in image.items() if tests.get(n) != v}
    assert not differ, f"{service}/requirements.lock vs requirements-dev.lock (image, tests): {differ}"


def test_the_venv_installs_from_the_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r requirements-dev.lock" in makefile
    assert "$(VENV)/.installed: requirements-dev.lock" in makefile, "a changed lock must rebuild the venv"


def test_the_pins_parser_reads_what_it_should(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("orjson==3.13.0  # fast\n")
    (tmp_path / "req.txt").write_text("-r base.txt\nPaho_MQTT[proxy]==2.2.0 ; python_version >= '3.8'\n# x==1\n")
    assert pins(tmp_path / "req.txt") == {"orjson": "3.13.0", "paho-mqtt": "2.2.0"}
