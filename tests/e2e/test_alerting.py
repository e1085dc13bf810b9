"""Alerting on the local stack: the bridge stops, the alert reaches a webhook; it comes back, the resolution does.

Everything is real: the bridge, Debian's Prometheus evaluating monitoring/alerts.yml
against it, Debian's Alertmanager started through monitoring/alertmanager/entrypoint.sh
with monitoring/alertmanager.yml (as Compose starts the official image), and an HTTP
receiver in this test standing in for ALERT_WEBHOOK_URL. Only the timings are
shortened: every rule's `for` to 2 s and Alertmanager's group_wait and
group_interval to 1 s, so the test takes seconds, not minutes.

The live page (the dashboard with DASHBOARD_ALERTMANAGER_URL) shows the same
alerts while they fire, on /api/firing and in a browser's DOM, and an
Alertmanager that is gone as "unreachable".
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from localstack.alerting import TEMPLATE, AlertingError, Alertmanager
from localstack.namespace import free_port
from localstack.services import ROOT, ServiceProcess
from tests.conftest import ARTIFACTS, Pipeline, wait_for
from tests.e2e.test_dashboard import Elements, login
from tests.e2e.test_dashboard import api as dashboard_api
from tests.e2e.test_dashboard import get as dashboard_get
from tests.helpers import api, chromium, get, prometheus

pytestmark = pytest.mark.e2e

RULES = ROOT / "monitoring" / "alerts.yml"
#: Every rule's `for` in the test's copy of the rules.
FOR = "2s"


class Receiver:
    """A webhook receiver: keeps every notification Alertmanager posts to it."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner._lock:
                    owner.paths.append(self.path)
                    owner.notifications.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the http.server API
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A query string with '&', as Slack-like URLs carry tokens: the entry point must keep it intact.
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts?token={self.token}&team=ops"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self, alertname: str, status: str) -> list[dict[str, Any]]:
        """The alerts named ``alertname`` in ``status`` (firing, resolved) across every notification so far."""
        with self._lock:
            return [
                alert
                for notification in self.notifications
                for alert in notification["alerts"]
                if alert["labels"].get("alertname") == alertname and alert["status"] == status
            ]

    def summary(self) -> str:
        with self._lock:
            return json.dumps(
                [(n["status"], [a["labels"].get("alertname") for a in n["alerts"]]) for n in self.notifications]
            )


def fast_rules(workdir: Path) -> Path:
    """monitoring/alerts.yml with every rule's `for` at FOR: the same expressions, labels and annotations."""
    rules = yaml.safe_load(RULES.read_text())
    shortened = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
                shortened += 1
    assert shortened, f"{RULES}: no rule has a `for`; has the file's layout changed?"
    path = workdir / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def fast_template(workdir: Path) -> Path:
    """monitoring/alertmanager.yml with group_wait and group_interval at 1 s, kept as text (its markers too)."""
    text, count = re.subn(
        r"^(\s*)(group_wait|group_interval):\s*\S+", r"\1\2: 1s", TEMPLATE.read_text(), flags=re.MULTILINE
    )
    assert count >= 2, f"{TEMPLATE}: found no group_wait/group_interval to shorten; has its layout changed?"
    path = workdir / "alertmanager.yml"
    path.write_text(text)
    return path


@pytest.fixture
def alertmanager(tmp_path: Path, pipeline: Pipeline) -> Iterator[tuple[Alertmanager, Receiver]]:
    """Alertmanager (through the Compose entry point) delivering to a receiver of this test."""
    with Receiver() as receiver:
        manager = Alertmanager(
            tmp_path / "alertmanager",
            free_port(),
            receiver.url,
            pipeline.log_dir / "alertmanager.log",
            template=fast_template(tmp_path),
        )
        try:
            manager.start()
        except AlertingError as error:
            pytest.fail(str(error))
        try:
            yield manager, receiver
        finally:
            manager.stop()


def amtool(manager: Alertmanager, *args: str) -> str:
    """Run Debian's amtool against ``manager``, as docs/alerts.md shows; its standard output."""
    result = subprocess.run(
        ["amtool", f"--alertmanager.url={manager.url}", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, f"amtool {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def am_state(manager: Alertmanager, alertname: str) -> list[str]:
    """The state (active, suppressed, ...) of each alert named ``alertname`` that Alertmanager holds."""
    status, body = get(f"{manager.url}/api/v2/alerts?filter=alertname%3D%22{alertname}%22")
    assert status == 200, body
    return [alert["status"]["state"] for alert in json.loads(body)]


def firing(pipeline: Pipeline, dashboard: ServiceProcess, alertname: str) -> list[dict[str, Any]]:
    """The alerts named ``alertname`` on the live page's /api/firing (which must have reached Alertmanager)."""
    answer = dashboard_api(pipeline, dashboard, "/api/firing")
    assert answer["status"] == "ok", answer
    return [alert for alert in answer["alerts"] if alert["name"] == alertname]


def page(pipeline: Pipeline, dashboard: ServiceProcess, screenshot: str | None = None) -> Elements:
    """The live page's DOM after a few polls in headless Chromium; a screenshot in artifacts/ if named."""
    user, password = login(pipeline)
    url = f"http://{user}:{password}@127.0.0.1:{dashboard.env['DASHBOARD_PORT']}/"
    if screenshot:
        path = ARTIFACTS / screenshot
        path.unlink(missing_ok=True)
        chromium(url, f"--screenshot={path}", "--hide-scrollbars")
        assert path.stat().st_size > 20_000, "the screenshot is blank"
    return Elements(chromium(url, "--dump-dom"))


def test_a_stopped_bridge_is_alerted_silenced_and_resolved(
    pipeline: Pipeline, tmp_path: Path, alertmanager: tuple[Alertmanager, Receiver]
) -> None:
    manager, receiver = alertmanager
    config = manager.config.read_text()
    assert f"url: '{receiver.url}'" in config, "the entry point did not put ALERT_WEBHOOK_URL in place, intact"
    assert manager.config.stat().st_mode & 0o077 == 0, "the rendered configuration holds the URL: owner only"
    # AlertDeliveryFailing reads this series of Alertmanager's (tests/unit/test_alert_rules.py takes it as given).
    status, metrics = get(f"{manager.url}/metrics")
    assert status == 200 and b'alertmanager_notifications_failed_total{integration="webhook"' in metrics

    server = pipeline.start_server()
    instance = f"127.0.0.1:{server.env['HEALTH_PORT']}"
    dashboard = pipeline.start_dashboard(
        DASHBOARD_ALERTMANAGER_URL=manager.url, DASHBOARD_SERVICES=f"server=http://{instance}"
    )
    with prometheus(
        {"server": instance},
        tmp_path,
        pipeline.log_dir / "prometheus.log",
        rule_files=[fast_rules(tmp_path)],
        alertmanagers=[f"127.0.0.1:{manager.port}"],
    ) as base:
        loaded = {r["name"] for g in api(base, "/api/v1/rules")["groups"] for r in g["rules"]}
        assert "ServiceDown" in loaded, loaded
        wait_for(
            lambda: api(base, "/api/v1/alertmanagers")["activeAlertmanagers"],
            30,
            "Prometheus to find Alertmanager",
        )
        wait_for(
            lambda: [r["value"][1] for r in api(base, "/api/v1/query", query='up{job="server"}')["result"]] == ["1"],
            30,
            "Prometheus to scrape the bridge",
            pipeline.logs,
        )
        # The bridge is up: nothing fires, nothing pends, nothing is delivered.
        assert not [a for a in api(base, "/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "ServiceDown"]
        assert not receiver.alerts("ServiceDown", "firing"), receiver.summary()
        assert not firing(pipeline, dashboard, "ServiceDown")

        assert server.stop() == 0, server.log_tail()
        (alert,) = wait_for(
            lambda: receiver.alerts("ServiceDown", "firing"),
            60,
            "the ServiceDown notification at the webhook",
            lambda: f"{receiver.summary()}\n{manager.log_tail()}",
        )
        assert alert["labels"] == {
            "alertname": "ServiceDown",
            "severity": "critical",
            "job": "server",
            "instance": instance,
        }, alert
        assert alert["annotations"] == {
            "summary": f"server at {instance} is down: Prometheus has not reached its /metrics for 1 minute",
            "runbook": "docs/alerts.md#servicedown",
        }, alert
        notification = next(n for n in receiver.notifications if alert in n["alerts"])
        assert notification["receiver"] == "webhook" and notification["groupLabels"] == {"alertname": "ServiceDown"}
        assert receiver.paths[0] == f"/alerts?token={receiver.token}&team=ops"

        # The live page shows it beside the bridge's health, with its runbook.
        (shown,) = wait_for(
            lambda: firing(pipeline, dashboard, "ServiceDown"), 30, "ServiceDown on the live page", pipeline.logs
        )
        starts = datetime.fromisoformat(alert["startsAt"])
        assert shown == {
            "name": "ServiceDown",
            "severity": "critical",
            "summary": alert["annotations"]["summary"],
            "since": shown["since"],
            "state": "active",
            "service": "server",
            "instance": instance,
            "sensor": None,
            "labels": {"instance": instance, "job": "server"},
            "runbook": "docs/alerts.md#servicedown",
            "runbook_url": "/runbooks/servicedown",
            "fingerprint": alert["fingerprint"],
        }, shown
        assert abs(datetime.fromisoformat(shown["since"]) - starts) < timedelta(seconds=1), (shown, alert)
        dom = page(pipeline, dashboard, "dashboard-firing-servicedown.png")
        assert dom.find("section", id="firing-panel", data_status="ok", data_count="1")
        assert len(dom.find("li", data_alertname="ServiceDown", data_severity="critical")) == 1
        assert dom.find("a", href="/runbooks/servicedown")
        assert dom.find("li", data_service="server", data_status="down")
        code, _, runbook = dashboard_get(dashboard, "/runbooks/servicedown", login(pipeline))
        assert code == 200 and runbook.decode().startswith("ServiceDown\n\n**What it means.**")

        # Silenced the way docs/alerts.md shows: Alertmanager holds the alert and suppresses it.
        silence = amtool(
            manager,
            "silence",
            "add",
            "alertname=ServiceDown",
            "job=server",
            "--duration=1h",
            "--author=test_alerting",
            "--comment=planned restart of the bridge",
        ).strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", silence), silence
        assert silence in amtool(manager, "silence", "query", "alertname=ServiceDown")
        wait_for(lambda: am_state(manager, "ServiceDown") == ["suppressed"], 30, "the alert to be silenced")
        # A silenced alert reaches nobody: the page leaves it out too.
        wait_for(lambda: not firing(pipeline, dashboard, "ServiceDown"), 30, "the page to leave the silenced alert out")
        amtool(manager, "silence", "expire", silence)
        wait_for(lambda: am_state(manager, "ServiceDown") == ["active"], 30, "the silence to end")
        wait_for(lambda: firing(pipeline, dashboard, "ServiceDown"), 30, "the alert back on the page")

        server.start()
        pipeline.wait_ready(server)
        (resolved,) = wait_for(
            lambda: receiver.alerts("ServiceDown", "resolved"),
            60,
            "the ServiceDown resolution at the webhook",
            lambda: f"{receiver.summary()}\n{manager.log_tail()}",
        )
        assert resolved["labels"] == alert["labels"] and resolved["startsAt"] == alert["startsAt"], resolved
        wait_for(lambda: not firing(pipeline, dashboard, "ServiceDown"), 30, "ServiceDown to leave the live page")
        dom = page(pipeline, dashboard)
        assert dom.find("section", id="firing-panel", data_status="ok", data_count="0")
        assert not dom.find("li", data_alertname="ServiceDown")


def post_alerts(manager: Alertmanager, alerts: list[dict[str, Any]]) -> None:
    """Post alerts to Alertmanager's API v2, as Prometheus does (and as anyone who reaches it can)."""
    request = urllib.request.Request(
        f"{manager.url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_the_live_page_shows_alertmanagers_alerts_as_text_and_says_when_it_is_gone(
    pipeline: Pipeline, alertmanager: tuple[Alertmanager, Receiver]
) -> None:
    manager, _ = alertmanager
    now = datetime.now(UTC)

    def posted(name: str, severity: str | None, minutes_ago: int, summary: str, **labels: str) -> dict[str, Any]:
        return {
            "labels": {"alertname": name, **({"severity": severity} if severity else {}), **labels},
            "annotations": {"summary": summary, "runbook": f"docs/alerts.md#{name.lower()}"},
            "startsAt": (now - timedelta(minutes=minutes_ago)).isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat(),
        }

    html = '<b id="injected">bold</b><img src="x" onerror="document.title=\'pwned\'">'
    sensor = pipeline.sensor_id(1)
    post_alerts(
        manager,
        [
            posted("ModelChanged", "info", 1, "the model service now serves model trend-v2"),
            posted("SensorSilent", "warning", 12, f"sensor {sensor}: no reading stored for 6m", sensor=sensor),
            posted("RejectionRateJump", "warning", 3, html, job="server", instance="server:8000"),
            posted("ServiceDown", "critical", 7, "server at server:8000 is down", job="server", instance="server:8000"),
        ],
    )
    dashboard = pipeline.start_dashboard(DASHBOARD_ALERTMANAGER_URL=manager.url)
    answer = wait_for(
        lambda: (found := dashboard_api(pipeline, dashboard, "/api/firing"))["total"] == 4 and found,
        30,
        "the four alerts on /api/firing",
        pipeline.logs,
    )
    assert answer["status"] == "ok" and answer["skipped"] == 0
    assert [(a["name"], a["severity"]) for a in answer["alerts"]] == [
        ("ServiceDown", "critical"),
        ("RejectionRateJump", "warning"),  # the newer warning first
        ("SensorSilent", "warning"),
        ("ModelChanged", "info"),
    ]
    assert answer["alerts"][1]["summary"] == html, "kept as it was sent: the page puts it in as text"
    assert answer["alerts"][2]["sensor"] == sensor

    dom_text = chromium(
        f"http://{':'.join(login(pipeline))}@127.0.0.1:{dashboard.env['DASHBOARD_PORT']}/", "--dump-dom"
    )
    dom = Elements(dom_text)
    assert dom.find("section", id="firing-panel", data_status="ok", data_count="4")
    order = [a["data-alertname"] for t, a in dom.found if t == "li" and a.get("data-alertname")]
    assert order == ["ServiceDown", "RejectionRateJump", "SensorSilent", "ModelChanged"]
    assert not dom.find("b", id="injected") and not dom.find("img", src="x"), "the summary's HTML became elements"
    assert '&lt;b id="injected"&gt;bold&lt;/b&gt;' in dom_text, "the summary is shown as text"
    assert "<title>(4 firing) Sensor pipeline" in dom_text and "pwned" not in dom_text.split("</title>")[0]
    assert dom.find("span", data_label="sensor")
    page(pipeline, dashboard, "dashboard-firing.png")

    # Alertmanager gone: the page says alerting is unreachable, never that nothing fires.
    manager.stop()
    answer = wait_for(
        lambda: (found := dashboard_api(pipeline, dashboard, "/api/firing"))["status"] == "unreachable" and found,
        30,
        "/api/firing to say unreachable",
        pipeline.logs,
    )
    assert answer["alerts"] == [] and answer["last_ok_at"] and "refused" in answer["error"].lower(), answer
    dom = page(pipeline, dashboard, "dashboard-alerting-unreachable.png")
    assert dom.find("section", id="firing-panel", data_status="unreachable", data_count="0")
    assert not dom.find("li", data_alertname="ServiceDown")
    assert get(f"http://127.0.0.1:{dashboard.env['DASHBOARD_PORT']}/readyz")[0] == 200, (
        "Alertmanager is not the dashboard's dependency, as the services it shows are not"
    )


def test_without_alertmanager_the_page_says_alerting_is_not_configured(pipeline: Pipeline) -> None:
    dashboard = pipeline.start_dashboard()
    assert dashboard_api(pipeline, dashboard, "/api/firing")["status"] == "not_configured"
    dom_text = chromium(
        f"http://{':'.join(login(pipeline))}@127.0.0.1:{dashboard.env['DASHBOARD_PORT']}/", "--dump-dom"
    )
    assert Elements(dom_text).find("section", id="firing-panel", data_status="not_configured")
    assert "Alerting is not configured" in dom_text
