"""The alerts firing now, as Alertmanager holds them, and the runbooks they point to.

The dashboard asks Alertmanager's API v2 for the alerts that fire and reach
someone (``GET /api/v2/alerts?active=true&silenced=false&inhibited=false``;
resolved alerts are never in that answer), with a short timeout, and keeps the
answer for CACHE_S seconds: pages polling every 3 s cost Alertmanager one
request per CACHE_S, however many are open. An answer that cannot be had or
read is reported as "unreachable" with the reason, never as an empty list,
which would read as "nothing fires". Alertmanager is not a dependency of the
dashboard's readiness, as the services it probes are not: the page says what
is wrong instead.

Whatever Alertmanager sends is treated as untrusted input (anyone who can
reach its API can post alerts): every string is cut to a length, every field
may be missing or of the wrong type, and an item that is not an alert at all
is counted, not shown. The page puts every value in as text.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import contract

logger = logging.getLogger(__name__)

#: The alerts that fire now and are neither silenced nor inhibited.
QUERY = "/api/v2/alerts?active=true&silenced=false&inhibited=false"
#: An answer is reused for this long; a failure too, so a page does not wait on a dead Alertmanager at each poll.
CACHE_S = 5.0
TIMEOUT_S = 2.0
#: Larger answers are refused (about 15,000 alerts).
MAX_BODY = 16 << 20
#: Alerts in one answer of /api/firing, the most severe first; ``total`` counts them all.
MAX_SHOWN = 200
MAX_NAME = 200
MAX_SUMMARY = 1000
MAX_LABELS = 30
MAX_LABEL = 200
#: Order on the page; any other severity (or none) comes between warning and info.
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 3}
OTHER_RANK = 2
#: Labels the page shows apart from the rest.
SHOWN_APART = ("alertname", "severity")
#: ``annotations.runbook`` as monitoring/alerts.yml writes it: a section of docs/alerts.md.
RUNBOOK = re.compile(r"docs/alerts\.md#([a-z0-9][a-z0-9-]{0,63})")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "alerts.md"

#: What /api/firing holds besides its status when there is nothing to show.
NOTHING: dict[str, Any] = {"alerts": [], "total": 0, "skipped": 0, "last_ok_at": None}
#: (url, timeout in s) -> (HTTP status, body of at most MAX_BODY + 1 bytes).
Fetch = Callable[[str, float], tuple[int, bytes]]


class AnswerError(ValueError):
    """Alertmanager's answer is not a list of alerts."""


def parse_alerts(body: bytes) -> dict[str, Any]:
    """The alerts of an answer of ``GET /api/v2/alerts``, most severe first.

    Returns ``{"alerts": [...at most MAX_SHOWN], "total": alerts read, "skipped":
    items that are no alert}``; raises :class:`AnswerError` if the answer is no
    JSON list. Within a severity the newest alert comes first.
    """
    if len(body) > MAX_BODY:
        raise AnswerError(f"the answer is larger than {MAX_BODY >> 20} MiB")
    try:
        items = json.loads(body)
    except (ValueError, RecursionError) as error:
        # RecursionError: JSON nested deeper than the parser's stack.
        raise AnswerError(f"the answer is not JSON ({type(error).__name__})") from None
    if not isinstance(items, list):
        raise AnswerError(f"the answer is a JSON {type(items).__name__}, not a list of alerts")
    alerts = [alert for alert in map(parse_alert, items) if alert is not None]
    alerts.sort(key=_order)
    return {"alerts": alerts[:MAX_SHOWN], "total": len(alerts), "skipped": len(items) - len(alerts)}


def parse_alert(item: object) -> dict[str, Any] | None:
    """One alert as the page shows it, or None if ``item`` has no labels (no alert at all)."""
    if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
        return None
    labels = _string_map(item["labels"])
    annotations = _string_map(item.get("annotations"))
    status = item.get("status")
    state = status.get("state") if isinstance(status, dict) else None
    severity = (_text(labels.get("severity", "").strip().lower(), 32) or "").rstrip("…") or "none"
    runbook = _text(annotations.get("runbook"), 2000)
    others = [(key, value) for key, value in labels.items() if key not in SHOWN_APART]
    return {
        "name": _text(labels.get("alertname"), MAX_NAME) or "(no alertname)",
        "severity": severity,
        "summary": _text(annotations.get("summary"), MAX_SUMMARY),
        "since": _time(item.get("startsAt")),
        "state": _text(state, 32),
        "service": _text(labels.get("job"), MAX_LABEL),
        "instance": _text(labels.get("instance"), MAX_LABEL),
        "sensor": _text(labels.get("sensor"), MAX_LABEL),
        "labels": {_text(k, MAX_LABEL): _text(v, MAX_LABEL) for k, v in sorted(others)[:MAX_LABELS]},
        "runbook": runbook,
        "runbook_url": runbook_url(runbook),
        "fingerprint": _text(item.get("fingerprint"), 64),
    }


def runbook_url(runbook: str | None) -> str | None:
    """Where the page links a ``runbook`` annotation: its section, served by the dashboard, or an http(s) URL."""
    if runbook is None:
        return None
    local = RUNBOOK.fullmatch(runbook.strip())
    if local:
        return f"/runbooks/{local.group(1)}"
    if re.fullmatch(r"https?://[^\s\"'<>\\]{1,2000}", runbook.strip()):
        return runbook.strip()
    return None


def _order(alert: dict[str, Any]) -> tuple[int, float, str, str]:
    rank = SEVERITY_RANK.get(alert["severity"], OTHER_RANK)
    since = -datetime.fromisoformat(alert["since"]).timestamp() if alert["since"] else 0.0
    return rank, since, alert["name"], alert["fingerprint"] or ""


def _string_map(value: object) -> dict[str, str]:
    """The string-valued entries of a JSON object (a label set); anything else is empty."""
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if isinstance(item, str)}


def _text(value: object, limit: int) -> str | None:
    """A string cut to ``limit`` characters, encodable as UTF-8 (a lone surrogate becomes '?'); None if not a string."""
    if not isinstance(value, str):
        return None
    cut = value[:limit] + ("…" if len(value) > limit else "")
    return cut.encode("utf-8", "replace").decode("utf-8")


def _time(value: object) -> str | None:
    """An RFC 3339 time as the pipeline writes times (UTC, milliseconds, Z); None if it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            return None
        return contract.iso(moment)
    except (ValueError, OverflowError):
        return None


def http_get(url: str, timeout_s: float) -> tuple[int, bytes]:
    """GET ``url``: the status and at most MAX_BODY + 1 bytes of the body (so a larger one shows as such)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the URL is a setting
            return response.status, response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as error:
        return error.code, error.read(4096)


class Alertmanager:
    """Alertmanager's firing alerts for /api/firing, asked at most once per ``cache_s``."""

    def __init__(
        self,
        url: str,
        *,
        fetch: Fetch = http_get,
        clock: Callable[[], float] = time.monotonic,
        cache_s: float = CACHE_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._answer: dict[str, Any] | None = None
        self._asked_at = 0.0
        self._last_ok: str | None = None

    def firing(self) -> dict[str, Any]:
        """The /api/firing answer: ``status`` ``ok``, ``unreachable`` (with ``error``) or ``not_configured``."""
        if not self.url:
            return {"status": "not_configured", "alertmanager": None, "error": None, "checked_at": None} | NOTHING
        # One request at a time: pages polling together wait for it and share its answer.
        with self._lock:
            now = self._clock()
            if self._answer is None or now - self._asked_at >= self.cache_s:
                self._answer = self._ask()
                self._asked_at = now
            return self._answer

    def _ask(self) -> dict[str, Any]:
        checked_at = contract.iso(datetime.now(UTC))
        answer: dict[str, Any] = {"status": "ok", "alertmanager": self.url, "error": None, "checked_at": checked_at}
        try:
            status, body = self._fetch(self.url + QUERY, self.timeout_s)
            if status != 200:
                raise AnswerError(f"it answered HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
            answer |= parse_alerts(body)
        except (OSError, http.client.HTTPException, AnswerError) as error:
            reason = _reason(error, self.timeout_s)
            if self._answer is None or self._answer["status"] == "ok":
                logger.warning("Alertmanager at %s: %s; the page shows alerting as unreachable", self.url, reason)
            answer |= {"status": "unreachable", "error": reason} | NOTHING
        else:
            if self._answer is not None and self._answer["status"] != "ok":
                logger.info("Alertmanager at %s answers again: %d alerts firing", self.url, answer["total"])
            self._last_ok = checked_at
        answer["last_ok_at"] = self._last_ok
        return answer


def _reason(error: BaseException, timeout_s: float) -> str:
    cause = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(cause, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return str(cause) or type(cause).__name__


def runbooks(text: str) -> dict[str, str]:
    """The runbook sections of docs/alerts.md by their anchor (``### ServiceDown`` -> ``servicedown``)."""
    found: dict[str, str] = {}
    section = re.search(r"^## Runbooks$(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    if section is None:
        return found
    for match in re.finditer(r"^### ([^\n]+)\n(.*?)(?=^### |\Z)", section.group(1), flags=re.MULTILINE | re.DOTALL):
        title = match.group(1).strip()
        found[_anchor(title)] = f"{title}\n\n{match.group(2).strip()}\n"
    return found


def _anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def load_runbooks(path: Path = DOCS) -> Mapping[str, str]:
    """The runbooks of ``path``; none if it is missing (an image built without docs/)."""
    try:
        return runbooks(path.read_text(encoding="utf-8"))
    except OSError as error:
        logger.warning("no runbooks to link (%s): the page links none", error)
        return {}
