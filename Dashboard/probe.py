"""The pipeline's health as the page shows it: each service's /readyz and a few of its /metrics.

Each call asks every service in DASHBOARD_SERVICES at once (2 s timeout per
request). Messages per second come from the services' counters: the probe
keeps the totals it saw over the last few seconds and divides the difference
by the time between them, so the rate is right whichever page polls it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

#: Samples of the counters this probe reads, by the name the page uses.
COUNTERS = {
    "received": "pipeline_readings_received_total",
    "scored": "pipeline_readings_scored_total",
}
LAG = "pipeline_consumer_lag"
#: Rates are measured over at most this many seconds of samples.
RATE_WINDOW_S = 15.0
#: Shortest time between two samples that gives a rate.
MIN_RATE_SPAN_S = 1.0


def parse_metrics(text: str) -> dict[str, float | None]:
    """The counters' totals and the consumer lag (summed over their labels); None for what a service lacks."""
    found: dict[str, float | None] = {name: None for name in (*COUNTERS, "lag")}
    wanted = {sample: name for name, sample in COUNTERS.items()} | {LAG: "lag"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = wanted.get(sample.name)
            if name is not None:
                found[name] = (found[name] or 0.0) + sample.value
    return found


def rate(samples: list[tuple[float, float | None]]) -> float | None:
    """Per-second increase up to the newest (time, total) sample, or None if unknown or reset.

    It is measured from the oldest sample of the last RATE_WINDOW_S that is at
    least MIN_RATE_SPAN_S older than the newest; if every sample of the window is
    newer than that (two polls in quick succession after a quiet spell, such as
    a page reloaded), from the newest one older than it, however old.
    """
    known = [(t, v) for t, v in samples if v is not None]
    if len(known) < 2:
        return None
    t1, v1 = known[-1]
    spanned = [(t, v) for t, v in known if t1 - t >= MIN_RATE_SPAN_S]
    if not spanned:
        return None
    in_window = [(t, v) for t, v in spanned if t1 - t <= RATE_WINDOW_S]
    t0, v0 = in_window[0] if in_window else spanned[-1]
    if v1 < v0:
        return None
    return (v1 - v0) / (t1 - t0)


class ServiceProbe:
    """Asks the services for their health and metrics; remembers recent totals for rates."""

    def __init__(self, services: Mapping[str, str], timeout_s: float = 2.0) -> None:
        self.services = dict(services)
        self.timeout_s = timeout_s
        self._samples: dict[str, deque[tuple[float, dict[str, float | None]]]] = {
            name: deque() for name in self.services
        }
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, 2 * len(self.services)), thread_name_prefix="probe")

    def check_all(self) -> list[dict[str, Any]]:
        """One entry per service, in the configured order."""
        futures = [self._pool.submit(self.check, name, url) for name, url in self.services.items()]
        return [future.result() for future in futures]

    def check(self, name: str, base: str) -> dict[str, Any]:
        """A service's readiness (up, not_ready or down, with its checks) and its rates and lag."""
        entry: dict[str, Any] = {"name": name, "status": "down", "up": False, "checks": {}, "error": None}
        try:
            code, body = self._get(f"{base}/readyz")
            answer = json.loads(body or b"{}")
            entry["checks"] = answer.get("checks", {})
            entry["status"] = "up" if code == 200 else "not_ready"
            entry["up"] = code == 200
        except (OSError, ValueError) as error:
            entry["error"] = f"/readyz: {_reason(error)}"
            logger.debug("service %s is not answering /readyz: %s", name, _reason(error))
        totals: dict[str, float | None] = {"received": None, "scored": None, "lag": None}
        if entry["status"] != "down":
            try:
                code, body = self._get(f"{base}/metrics")
                if code == 200:
                    totals = parse_metrics(body.decode("utf-8", errors="replace"))
            except (OSError, ValueError) as error:
                entry["error"] = f"/metrics: {_reason(error)}"
                logger.debug("service %s is not answering /metrics: %s", name, _reason(error))
        entry.update(self._rates(name, totals))
        return entry

    def _rates(self, name: str, totals: dict[str, float | None]) -> dict[str, float | None]:
        now = time.monotonic()
        with self._lock:
            samples = self._samples[name]
            samples.append((now, totals))
            # Every sample of the window, and the newest before it (what rate() falls back on).
            while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW_S:
                samples.popleft()
            history = list(samples)
        result: dict[str, float | None] = {"consumer_lag": totals["lag"]}
        for counter in COUNTERS:
            per_s = rate([(t, values[counter]) for t, values in history])
            result[f"{counter}_total"] = totals[counter]
            result[f"{counter}_per_s"] = None if per_s is None else round(per_s, 2)
        return result

    def _get(self, url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:  # noqa: S310 - URLs from settings
                return response.status, response.read(1 << 20)
        except urllib.error.HTTPError as error:
            # /readyz answers 503 with its checks when a dependency is down.
            return error.code, error.read(1 << 20)

    def close(self) -> None:
        """Stop the probe's threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__
