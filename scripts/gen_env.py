"""Write .env from .env.example, filling every empty value with a random secret.

A value made of ``name:`` entries (MQTT_SENSOR_ACCOUNTS) gets a random
password after each colon instead.

Run by `make env` (and by `make up` / `make run`). An existing .env keeps its
values; keys that .env.example gained since (a new service's password, say)
are appended, secrets again random. Values are never printed.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def render(example: str) -> str:
    """The example's lines with each empty `KEY=` (and each empty `name:`) given a fresh random value."""
    lines = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            entries = value.strip().split(",")
            if value.strip() == "":
                line = f"{key}={secrets.token_urlsafe(24)}"
            elif all(entry.endswith(":") for entry in entries):
                line = f"{key}=" + ",".join(entry + secrets.token_urlsafe(24) for entry in entries)
        lines.append(line)
    return "\n".join(lines) + "\n"


def keys(text: str) -> list[str]:
    """The keys set in an env file's text (comments and blank lines skipped)."""
    return [
        line.partition("=")[0].strip()
        for line in text.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    ]


def main(argv: list[str]) -> int:
    """Create .env (or the path given), or add the keys it lacks."""
    target = Path(argv[1]) if len(argv) > 1 else ROOT / ".env"
    rendered = render((ROOT / ".env.example").read_text())
    if not target.exists():
        target.write_text(rendered)
        target.chmod(0o600)
        print(f"wrote {target} with fresh random secrets")
        return 0
    current = target.read_text()
    have = set(keys(current))
    missing = [line for line in rendered.splitlines() if "=" in line and not line.lstrip().startswith("#")]
    missing = [line for line in missing if line.partition("=")[0].strip() not in have]
    if not missing:
        print(f"{target} exists and has every key; left as it is")
        return 0
    target.write_text(current.rstrip("\n") + "\n" + "\n".join(missing) + "\n")
    print(f"added {', '.join(line.partition('=')[0] for line in missing)} to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
