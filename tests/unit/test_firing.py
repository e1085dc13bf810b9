"""The alerts firing now (Dashboard/firing.py), with no server: Alertmanager's answer, its cache, /api/firing.

Alertmanager's API is open to whoever reaches it, so its answer is hostile input:
bytes that are no JSON, JSON that is no list of alerts, a huge list, fields
missing or of the wrong type, HTML and lone surrogates in the strings. The
invariants (property-based): parsing ends in an answer or in AnswerError and
nothing else; an answer is JSON that encodes as UTF-8, holds at most MAX_SHOWN
alerts, the most severe first, and accounts for every item. An Alertmanager that
does not answer, or answers garbage, is "unreachable", never an empty list.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from Dashboard import firing
from Dashboard.app import create_app
from Dashboard.firing import (
    MAX_SHOWN,
    QUERY,
    Alertmanager,
    AnswerError,
    http_get,
    load_runbooks,
    parse_alerts,
    runbook_url,
)
from Dashboard.settings import Settings
from pipeline.settings import describe_errors
from tests.helpers import asgi

ROOT = Path(__file__).resolve().parents[2]
URL = "http://alertmanager:9093"
KEYS = {
    "name",
    "severity",
    "summary",
    "since",
    "state",
    "service",
    "instance",
    "sensor",
    "labels",
    "runbook",
    "runbook_url",
    "fingerprint",
}


def am_alert(
    name: str = "ServiceDown",
    severity: str | None = "critical",
    starts: str = "2026-11-30T10:31:02.123456789Z",
    **labels: str,
) -> dict[str, Any]:
    """An alert as Alertmanager 0.25-0.28 answers it (gettableAlert)."""
    all_labels = {"alertname": name, **({"severity": severity} if severity else {}), **labels}
    return {
        "annotations": {"summary": f"{name} fires", "runbook": f"docs/alerts.md#{name.lower()}"},
        "endsAt": "2026-11-30T10:40:02.123Z",
        "fingerprint": f"{abs(hash(json.dumps(all_labels, sort_keys=True))):016x}"[:16],
        "receivers": [{"name": "webhook"}],
        "startsAt": starts,
        "status": {"inhibitedBy": [], "silencedBy": [], "state": "active"},
        "updatedAt": "2026-11-30T10:31:02.200Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "labels": all_labels,
    }


def body(items: Any) -> bytes:
    return json.dumps(items).encode()


# --- parsing: examples ---------------------------------------------------------------


def test_an_alert_as_alertmanager_sends_it() -> None:
    answer = parse_alerts(body([am_alert(job="server", instance="server:8000")]))
    assert answer == {
        "alerts": [
            {
                "name": "ServiceDown",
                "severity": "critical",
                "summary": "ServiceDown fires",
                "since": "2026-11-30T10:31:02.123Z",
                "state": "active",
                "service": "server",
                "instance": "server:8000",
                "sensor": None,
                "labels": {"instance": "server:8000", "job": "server"},
                "runbook": "docs/alerts.md#servicedown",
                "runbook_url": "/runbooks/servicedown",
                "fingerprint": answer["alerts"][0]["fingerprint"],
            }
        ],
        "total": 1,
        "skipped": 0,
    }


def test_the_most_severe_come_first_then_the_newest() -> None:
    at = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)

    def starts(minutes: int) -> str:
        return (at + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")

    items = [
        am_alert("ModelChanged", "info", starts(9)),
        am_alert("SensorSilent", "warning", starts(1), sensor="s-1"),
        am_alert("Odd", "page-me", starts(5)),
        am_alert("NoSeverity", None, starts(6)),
        am_alert("ServiceDown", "critical", starts(2), job="server"),
        am_alert("SensorSilent", "warning", starts(3), sensor="s-2"),
        am_alert("BridgeNotConnected", "CRITICAL", starts(0)),
    ]
    alerts = parse_alerts(body(items))["alerts"]
    assert [(a["name"], a["severity"], a["sensor"]) for a in alerts] == [
        ("ServiceDown", "critical", None),
        ("BridgeNotConnected", "critical", None),
        ("SensorSilent", "warning", "s-2"),
        ("SensorSilent", "warning", "s-1"),
        ("NoSeverity", "none", None),
        ("Odd", "page-me", None),
        ("ModelChanged", "info", None),
    ]


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"", "not JSON"),
        (b"<html><body>502 Bad Gateway</body></html>", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b'{"status": "success", "data": []}', "a JSON dict, not a list"),
        (b"null", "a JSON NoneType, not a list"),
        (b'"alerts"', "a JSON str, not a list"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[NaN, Infinity]", None),  # Python's parser takes them: they are items that are no alert
    ],
)
def test_an_answer_that_is_no_list_of_alerts_is_refused(answer: bytes, says: str | None) -> None:
    if says is None:
        assert parse_alerts(answer) == {"alerts": [], "total": 0, "skipped": 2}
        return
    with pytest.raises(AnswerError, match=says):
        parse_alerts(answer)


def test_a_larger_answer_than_max_body_is_refused() -> None:
    with pytest.raises(AnswerError, match="larger than 16 MiB"):
        parse_alerts(b" " * (firing.MAX_BODY + 1))


def test_a_huge_list_shows_the_most_severe_and_counts_them_all() -> None:
    items = [am_alert("SensorSilent", "warning", sensor=f"s-{i}") for i in range(10_000)]
    items[7_777] = am_alert("ServiceDown", "critical", job="server")
    started = time.monotonic()
    answer = parse_alerts(body(items))
    assert time.monotonic() - started < 5, "10,000 alerts parsed within a poll or two"
    assert answer["total"] == 10_000 and answer["skipped"] == 0
    assert len(answer["alerts"]) == MAX_SHOWN
    assert answer["alerts"][0]["name"] == "ServiceDown"


def test_missing_and_mistyped_fields_leave_what_can_be_read() -> None:
    items: list[Any] = [
        {"labels": {}},  # an alert with no name: still an alert
        {"labels": {"alertname": 42, "severity": ["critical"], "job": None, "sensor": "s-9"}},
        {"labels": {"alertname": "X"}, "annotations": "not an object", "status": [], "startsAt": 17},
        {"labels": {"alertname": "Y"}, "startsAt": "yesterday", "fingerprint": {"a": 1}},
        {"labels": {"alertname": "Z"}, "startsAt": "2026-11-30T10:00:00"},  # no zone: not a time we can place
        {"labels": {"alertname": "Zero"}, "startsAt": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC
        {"labels": "ServiceDown"},
        {"annotations": {"summary": "labels missing"}},
        ["ServiceDown"],
        "ServiceDown",
        None,
        7,
    ]
    answer = parse_alerts(body(items))
    assert answer["total"] == 6 and answer["skipped"] == 6
    by_name = {a["name"]: a for a in answer["alerts"]}
    assert set(by_name) == {"(no alertname)", "X", "Y", "Z", "Zero"}, "the two unnamed ones share a name"
    unnamed = [a for a in answer["alerts"] if a["name"] == "(no alertname)"]
    assert any(a["sensor"] == "s-9" and a["labels"] == {"sensor": "s-9"} for a in unnamed)
    assert all(a["severity"] == "none" for a in answer["alerts"])
    assert all(a["since"] is None and a["summary"] is None and a["state"] is None for a in answer["alerts"])
    assert by_name["Y"]["fingerprint"] is None


def test_html_and_odd_text_are_kept_as_text_and_cut() -> None:
    summary = '<img src=x onerror="alert(1)"><script>alert(2)</script>' + "x" * 5000
    item = am_alert("Html<b>", "warning", sensor="<i>s</i>")
    item["annotations"] = {"summary": summary, "runbook": "javascript:alert(3)"}
    item["labels"]["lone"] = "\ud800 surrogate"
    (alert,) = parse_alerts(json.dumps([item]).encode())["alerts"]
    assert alert["name"] == "Html<b>" and alert["sensor"] == "<i>s</i>", "kept as text: the page escapes"
    assert alert["summary"].startswith(summary[:100]) and len(alert["summary"]) == firing.MAX_SUMMARY + 1
    assert alert["runbook"] == "javascript:alert(3)" and alert["runbook_url"] is None
    assert alert["labels"]["lone"] == "? surrogate"
    json.dumps(alert, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize(
    ("runbook", "url"),
    [
        ("docs/alerts.md#servicedown", "/runbooks/servicedown"),
        (" docs/alerts.md#sensorsilent ", "/runbooks/sensorsilent"),
        ("https://wiki.example.com/runbooks/Disk#full", "https://wiki.example.com/runbooks/Disk#full"),
        ("docs/alerts.md#../../etc/passwd", None),
        ("docs/other.md#servicedown", None),
        ("javascript:alert(1)", None),
        ("JAVASCRIPT://%0aalert(1)", None),
        ('https://x.example/"><script>', None),
        ("data:text/html,<script>alert(1)</script>", None),
        ("//evil.example/", None),
        ("", None),
        (None, None),
    ],
)
def test_only_runbooks_of_docs_alerts_md_and_http_links_are_linked(runbook: str | None, url: str | None) -> None:
    assert runbook_url(runbook) == url


# --- parsing: properties ----------------------------------------------------------------

#: Any text, lone surrogates included (JSON can carry "\ud800"; UTF-8 cannot).
odd_text = st.text(st.characters(exclude_categories=()), max_size=300)
labels = st.dictionaries(
    st.sampled_from(["alertname", "severity", "job", "instance", "sensor", "check"]) | odd_text,
    odd_text | st.sampled_from(["critical", "warning", "info"]),
    max_size=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=30,
)
alert_like = st.fixed_dictionaries(
    {"labels": labels | json_values},
    optional={
        "annotations": st.dictionaries(st.sampled_from(["summary", "runbook"]) | odd_text, odd_text) | json_values,
        "startsAt": st.datetimes(timezones=st.timezones()).map(datetime.isoformat) | json_values,
        "status": st.fixed_dictionaries({"state": st.text(max_size=40)}) | json_values,
        "fingerprint": st.text(max_size=80) | json_values,
    },
)
answers = st.lists(alert_like | json_values, max_size=30) | json_values
START, END = datetime(2000, 1, 1), datetime(2100, 1, 1)  # noqa: DTZ001 - naive bounds, as hypothesis wants


def check_answer(answer: dict[str, Any], items: int) -> None:
    """The invariants of a parsed answer of ``items`` items."""
    alerts = answer["alerts"]
    assert answer["total"] + answer["skipped"] == items
    assert len(alerts) == min(answer["total"], MAX_SHOWN)
    json.dumps(answer, ensure_ascii=False, allow_nan=False).encode("utf-8")  # what FastAPI does, strictly
    ranks = [firing.SEVERITY_RANK.get(a["severity"], firing.OTHER_RANK) for a in alerts]
    assert ranks == sorted(ranks), "the most severe first"
    for alert in alerts:
        assert set(alert) == KEYS
        assert isinstance(alert["name"], str) and 0 < len(alert["name"]) <= firing.MAX_NAME + 1
        assert alert["summary"] is None or len(alert["summary"]) <= firing.MAX_SUMMARY + 1
        assert alert["since"] is None or alert["since"].endswith("Z")
        assert "alertname" not in alert["labels"] and "severity" not in alert["labels"]
        assert len(alert["labels"]) <= firing.MAX_LABELS
        url = alert["runbook_url"]
        assert url is None or url.startswith(("/runbooks/", "http://", "https://"))


@given(st.binary(max_size=2000))
@example(b"[{}]")
@example(b'[{"labels": {"alertname": "\\ud800"}}]')
@example(b'[{"labels": {"severity": "\\udfff", "\\ud800": "x"}, "annotations": {"runbook": "https://a/\\ud800"}}]')
def test_any_bytes_give_an_answer_or_answer_error(data: bytes) -> None:
    try:
        answer = parse_alerts(data)
    except AnswerError:
        return
    items = json.loads(data)
    check_answer(answer, len(items))


@given(answers)
def test_any_json_gives_an_answer_or_answer_error(value: Any) -> None:
    try:
        answer = parse_alerts(json.dumps(value).encode())
    except AnswerError:
        assert not isinstance(value, list)
        return
    assert isinstance(value, list)
    check_answer(answer, len(value))


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=40).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
            st.sampled_from(["critical", "warning", "info", "none"]),
            st.datetimes(START, END, timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
        ),
        max_size=40,
    )
)
def test_every_alert_alertmanager_sends_is_shown_or_counted(generated: list[tuple[str, str, str]]) -> None:
    items = [am_alert(name, severity if severity != "none" else None, starts) for name, severity, starts in generated]
    answer = parse_alerts(body(items))
    check_answer(answer, len(items))
    assert answer["skipped"] == 0
    assert sorted(a["name"] for a in answer["alerts"]) == sorted(name[: firing.MAX_NAME] for name, _, _ in generated)


# --- asking Alertmanager: the cache, and what an outage looks like -----------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Transport:
    """Answers each request with the next of ``answers`` (an exception is raised); records the URLs."""

    def __init__(self, *answers: tuple[int, bytes] | BaseException) -> None:
        self.answers = list(answers)
        self.urls: list[str] = []

    def __call__(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        self.urls.append(url)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_without_a_url_alerting_is_not_configured_and_nothing_is_asked() -> None:
    transport = Transport((200, b"[]"))
    answer = Alertmanager("", fetch=transport).firing()
    assert answer["status"] == "not_configured" and answer["alerts"] == [] and not transport.urls


def test_alertmanager_is_asked_for_active_unsilenced_uninhibited_alerts_once_per_cache_period() -> None:
    clock, transport = Clock(), Transport((200, body([am_alert()])))
    manager = Alertmanager(URL, fetch=transport, clock=clock, cache_s=5.0)
    first = manager.firing()
    assert first["status"] == "ok" and first["total"] == 1 and first["error"] is None
    assert first["alertmanager"] == URL and first["last_ok_at"] == first["checked_at"]
    assert transport.urls == [URL + "/api/v2/alerts?active=true&silenced=false&inhibited=false"] == [URL + QUERY]
    for _ in range(10):  # pages polling every 3 s, several of them
        clock.now += 0.4
        assert manager.firing() is first
    assert len(transport.urls) == 1
    clock.now += 1.1
    manager.firing()
    assert len(transport.urls) == 2


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
        (TimeoutError("timed out"), "no answer within 2 s"),
        (firing.urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), "Name or service not known"),
        (firing.urllib.error.URLError(TimeoutError("timed out")), "no answer within 2 s"),
        (http.client.BadStatusLine("SSH-2.0-OpenSSH"), "SSH-2.0-OpenSSH"),
        (http.client.IncompleteRead(b"[{"), "IncompleteRead"),
        ((500, b"internal error"), "HTTP 500: internal error"),
        ((404, b"<html>not found</html>"), "HTTP 404"),
        ((200, b"<html>a login page</html>"), "not JSON"),
        ((200, b'{"data": []}'), "not a list of alerts"),
    ],
)
def test_an_alertmanager_that_cannot_be_read_is_unreachable_never_an_empty_list(
    failure: tuple[int, bytes] | BaseException, says: str
) -> None:
    manager = Alertmanager(URL, fetch=Transport(failure), clock=Clock())
    answer = manager.firing()
    assert answer["status"] == "unreachable", answer
    assert says in answer["error"]
    assert answer["alerts"] == [] and answer["last_ok_at"] is None
    json.dumps(answer).encode("utf-8")


def test_a_failure_is_cached_too_and_the_last_answer_is_remembered(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    transport = Transport((200, b"[]"), ConnectionRefusedError(111, "refused"), ConnectionRefusedError(111, "refused"))
    transport.answers.append((200, body([am_alert()])))
    manager = Alertmanager(URL, fetch=transport, clock=clock, cache_s=5.0)
    caplog.set_level(logging.INFO, logger="Dashboard.firing")
    ok = manager.firing()
    assert ok["status"] == "ok" and ok["total"] == 0
    clock.now += 5
    down = manager.firing()
    assert down["status"] == "unreachable" and down["last_ok_at"] == ok["checked_at"]
    clock.now += 1
    assert manager.firing() is down, "a dead Alertmanager is not asked at every poll"
    clock.now += 5
    assert manager.firing()["status"] == "unreachable"
    clock.now += 5
    back = manager.firing()
    assert back["status"] == "ok" and back["total"] == 1
    assert len(transport.urls) == 4
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unreachable" in m]) == 1, "said once per outage, not at every poll"
    assert len([m for m in messages if "answers again" in m]) == 1


def test_pages_polling_at_once_share_one_request() -> None:
    calls: list[float] = []
    release = threading.Event()

    def slow(url: str, timeout_s: float) -> tuple[int, bytes]:
        calls.append(time.monotonic())
        release.wait(5)
        return 200, b"[]"

    manager = Alertmanager(URL, fetch=slow)
    answers: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: answers.append(manager.firing())) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and len(answers) == 8 and all(a is answers[0] for a in answers)


def test_http_get_gives_up_on_an_alertmanager_that_accepts_and_never_answers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        manager = Alertmanager(f"http://127.0.0.1:{port}", timeout_s=0.5)
        started = time.monotonic()
        answer = manager.firing()
    assert time.monotonic() - started < 3
    assert answer["status"] == "unreachable" and answer["error"] == "no answer within 0.5 s", answer


def test_http_get_reads_a_status_and_a_refused_connection_is_an_os_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{port}{QUERY}", 1.0)


# --- runbooks ------------------------------------------------------------------------------


def test_every_alert_rule_links_a_runbook_the_dashboard_serves() -> None:
    rules = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())
    served = load_runbooks()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            url = runbook_url(rule["annotations"]["runbook"])
            assert url == f"/runbooks/{rule['alert'].lower()}", rule["alert"]
            text = served[rule["alert"].lower()]
            assert text.startswith(rule["alert"] + "\n") and "**What it means.**" in text and "**How to fix.**" in text


def test_a_missing_docs_file_gives_no_runbooks(tmp_path: Path) -> None:
    assert load_runbooks(tmp_path / "alerts.md") == {}
    assert firing.runbooks("# Alerts\n\nno runbooks here\n") == {}


# --- /api/firing and /runbooks through the app ----------------------------------------------


def app_with(manager: Alertmanager, runbooks: dict[str, str] | None = None) -> Any:
    config = Settings(MONGO_URI="mongodb://x/db", DASHBOARD_USERNAME="u", DASHBOARD_PASSWORD="p")
    return create_app(config, cast(Any, SimpleNamespace()), cast(Any, SimpleNamespace()), manager, runbooks)


def test_api_firing_needs_the_login_and_serves_the_answer() -> None:
    app = app_with(Alertmanager(URL, fetch=Transport((200, body([am_alert(), am_alert("TargetDown", "warning")])))))
    assert asgi(app, "/api/firing", None)[0] == 401
    status, headers, answer = asgi(app, "/api/firing")
    assert status == 200 and headers["content-type"] == "application/json"
    found = json.loads(answer)
    assert found["status"] == "ok" and [a["name"] for a in found["alerts"]] == ["ServiceDown", "TargetDown"]


def test_api_firing_answers_200_when_alertmanager_does_not() -> None:
    app = app_with(Alertmanager(URL, fetch=Transport(ConnectionRefusedError(111, "Connection refused"))))
    status, _, answer = asgi(app, "/api/firing")
    assert status == 200 and json.loads(answer)["status"] == "unreachable"


def test_the_default_is_the_alertmanager_of_the_setting_and_the_runbooks_of_the_docs() -> None:
    config = Settings(MONGO_URI="mongodb://x/db", DASHBOARD_USERNAME="u", DASHBOARD_PASSWORD="p")
    app = create_app(config, cast(Any, SimpleNamespace()), cast(Any, SimpleNamespace()))
    assert json.loads(asgi(app, "/api/firing")[2])["status"] == "not_configured"
    status, headers, text = asgi(app, "/runbooks/servicedown")
    assert status == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    assert text.decode().startswith("ServiceDown\n\n**What it means.**")
    assert asgi(app, "/runbooks/ServiceDown")[0] == 200
    assert asgi(app, "/runbooks/servicedown", None)[0] == 401
    status, headers, text = asgi(app, "/runbooks/%3Cscript%3E")
    assert status == 404 and headers["content-type"].startswith("text/plain") and b"no runbook named" in text


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("", ""),
        ("http://alertmanager:9093", "http://alertmanager:9093"),
        ("http://127.0.0.1:9093/", "http://127.0.0.1:9093"),
        (" https://am.example.com/prefix/ ", "https://am.example.com/prefix"),
    ],
)
def test_the_alertmanager_url_setting(value: str, stored: str) -> None:
    config = Settings(
        MONGO_URI="mongodb://x/db", DASHBOARD_USERNAME="u", DASHBOARD_PASSWORD="p", DASHBOARD_ALERTMANAGER_URL=value
    )
    assert config.DASHBOARD_ALERTMANAGER_URL == stored


@pytest.mark.parametrize(
    "value", ["alertmanager:9093", "ftp://am:21", "http://am:9093/?x=1", "http://am:9093 x", "http://u:s3cr3t@am:9093"]
)
def test_a_bad_alertmanager_url_is_refused_without_quoting_a_password(value: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(
            MONGO_URI="mongodb://x/db", DASHBOARD_USERNAME="u", DASHBOARD_PASSWORD="p", DASHBOARD_ALERTMANAGER_URL=value
        )
    # What the dashboard prints when it stops (pipeline.settings.load).
    message = describe_errors(raised.value)
    assert message.startswith("DASHBOARD_ALERTMANAGER_URL: Value error, ") and "s3cr3t" not in message
