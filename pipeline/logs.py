"""Logging, configured once per process by its entry point: to stdout, for operators."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    # Prophet logs an ERROR when the optional plotly is missing; nothing here plots.
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
