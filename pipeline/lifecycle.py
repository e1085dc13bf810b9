"""Clean stops: SIGTERM and SIGINT set a flag; loops drain and close in ``finally``."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)


def stop_event() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT; a second one exits at once."""
    event = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if event.is_set():
            logger.warning("second %s: exiting without draining", signal.Signals(signum).name)
            raise SystemExit(1)
        logger.info("%s received: finishing what is in flight, then stopping", signal.Signals(signum).name)
        event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    # A stop that arrives while the process is already exiting by itself (a sensor at the end of its CSV)
    # must not kill it: Python puts the default handlers back as it finalises, after the atexit functions,
    # and a SIGTERM then would end the process by the signal (-15) instead of its own exit code.
    atexit.register(_ignore_stop_signals)
    return event


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def supervise(
    workers: list[threading.Thread], stop: threading.Event, summary: Callable[[], None], every_s: float = 30.0
) -> int:
    """Start ``workers`` and wait for a stop signal, logging ``summary`` every ``every_s``.

    If a worker ends on its own (an unexpected error), the others are told to
    stop and 1 is returned, so the process exits and its supervisor restarts it.
    """
    for worker in workers:
        worker.start()
    code = 0
    last = time.monotonic()
    while not stop.wait(0.5):
        dead = [w.name for w in workers if not w.is_alive()]
        if dead:
            logger.error("worker %s stopped unexpectedly; stopping the service", ", ".join(dead))
            code = 1
            break
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            summary()
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    summary()
    return code
