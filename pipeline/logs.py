"""Logging, configured once per process by its entry point: to stdout, for operators."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Repeats(logging.Filter):
    """Lets a message through once per ``every_s`` seconds; says how many were held back.

    For client libraries that log every reconnect attempt while a server is down.
    """

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # The key ignores librdkafka's leading timestamp-free fields that change (none) and the text's numbers.
        key = "".join(ch for ch in record.getMessage() if not ch.isdigit())[:200]
        now = time.monotonic()
        last, held = self._seen.get(key, (0.0, 0))
        if now - last < self.every_s:
            self._seen[key] = (last, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last {self.every_s:.0f}s)"
            record.args = ()
        return True


def setup(level: str, service: str) -> None:
    """Send every logger's records to stdout with time, level and origin."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT.replace("%(name)s", f"{service} %(name)s")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO; their warnings still show.
    for noisy in ("cmdstanpy", "prophet", "pymongo", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # librdkafka logs each failed reconnect; one line per kind every 30 s tells the story.
    logging.getLogger("librdkafka").addFilter(Repeats())
    # Prophet logs an ERROR when the optional plotly is missing; nothing here plots.
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
