"""Write .env from .env.example, filling every empty value with a random secret.

Run by `make env` (and by `make up` / `make run` when .env is missing). An
existing .env is left alone; values are never printed.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def render(example: str) -> str:
    """The example's lines with each empty `KEY=` given a fresh random value."""
    lines = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and value.strip() == "":
            line = f"{key}={secrets.token_urlsafe(24)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Create .env (or the path given) unless it exists."""
    target = Path(argv[1]) if len(argv) > 1 else ROOT / ".env"
    if target.exists():
        print(f"{target} exists; left as it is")
        return 0
    target.write_text(render((ROOT / ".env.example").read_text()))
    target.chmod(0o600)
    print(f"wrote {target} with fresh random secrets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
