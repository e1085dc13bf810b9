"""Retrying an action until it succeeds or the service is told to stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["RetryError", "until_done"]


def until_done(
    action: Callable[[], T],
    stop: threading.Event,
    what: str,
    transient: tuple[type[BaseException], ...],
) -> T:
    """Run ``action`` until it succeeds, waiting with exponential backoff and jitter.

    Only ``transient`` errors are retried (a server away or busy); anything else
    propagates. Gives up, raising :class:`RetryError`, only once ``stop`` is set,
    so the caller can leave its input unacknowledged for redelivery.
    """

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning("%s failed (attempt %d: %s); retrying in %.1fs", what, state.attempt_number, error, wait)

    retrying = Retrying(
        retry=retry_if_exception_type(transient),
        wait=wait_exponential_jitter(multiplier=0.2, max=10.0),
        stop=stop_when_event_set(stop),
        before_sleep=log_retry,
    )
    return retrying(action)
