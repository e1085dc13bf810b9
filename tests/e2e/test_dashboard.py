"""The live page on the real servers: its login, its JSON API, and what a browser shows."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import joblib
import pytest

from localstack.namespace import free_port
from localstack.services import ServiceProcess
from Models_analysis.model import load_model
from Models_analysis.rescore import rescore
from Models_analysis.settings import TrainerSettings
from Models_analysis.trainer import Trainer
from pipeline import contract
from tests.conftest import ARTIFACTS, Pipeline, wait_for
from tests.helpers import chromium, payload, publish
from tests.unit.models import ConstantModel

pytestmark = pytest.mark.e2e

#: The test model forecasts LEVEL with the interval LEVEL ± WIDTH.
LEVEL, WIDTH = 100.0, 5.0
#: Far outside the interval: the one anomaly of the series.
OUTLIER = 130.0
#: Readings published per sensor, 10 s apart by their own clock (so they span 8 minutes).
READINGS = 48
#: The newest reading: the page lists the latest 20 anomalies of every sensor, and an earlier test's
#: sensors (on the same database, seconds before) must not push this one off the list.
OUTLIER_AT = READINGS - 1
API_ROUTES = {
    "/api/sensors",
    "/api/sensors/{sensor}/series",
    "/api/aggregates/{sensor}",
    "/api/alerts",
    "/api/rejections",
    "/api/health",
    "/api/firing",
    "/api/sensors/{sensor}/readings.csv",
    "/api/sensors/{sensor}/model",
}


# --- helpers -----------------------------------------------------------------------


def login(pipeline: Pipeline) -> tuple[str, str]:
    env = pipeline.stack.env
    return env["MONGO_EXPRESS_USERNAME"], env["MONGO_EXPRESS_PASSWORD"]


def get(dashboard: ServiceProcess, path: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET a path of the dashboard: status, headers, body (an HTTP error is an answer, not an exception)."""
    request = urllib.request.Request(f"http://127.0.0.1:{dashboard.env['DASHBOARD_PORT']}{path}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def api(pipeline: Pipeline, dashboard: ServiceProcess, path: str) -> Any:
    code, _, body = get(dashboard, path, login(pipeline))
    assert code == 200, f"{path}: HTTP {code}: {body[:500]!r}"
    return json.loads(body)


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    """A model file forecasting LEVEL ± WIDTH for every reading."""
    path = tmp_path / "constant.joblib"
    joblib.dump(ConstantModel(level=LEVEL, width=WIDTH), path)
    return path


def start_all(pipeline: Pipeline, model_path: Path, more_services: str = "") -> ServiceProcess:
    """The bridge, the model service (the constant model) and the dashboard watching both (and ``more_services``)."""
    server = pipeline.start_server()
    model = pipeline.start_model(MODEL_PATH=str(model_path))
    services = [
        f"server=http://127.0.0.1:{server.env['HEALTH_PORT']}",
        f"model_analysis=http://127.0.0.1:{model.env['HEALTH_PORT']}",
    ]
    return pipeline.start_dashboard(DASHBOARD_SERVICES=",".join([*services, more_services]).strip(","))


def publish_series(pipeline: Pipeline, sensor: str, quiet_s: int = 0) -> list[contract.Reading]:
    """READINGS readings inside the interval, 10 s apart and ending now, but one: OUTLIER; ``quiet_s`` more
    between the first half and the second (the sensor went quiet)."""
    start = datetime.now(UTC) - timedelta(seconds=10 * (READINGS - 1) + quiet_s)
    readings = [
        contract.Reading(
            id=f"{sensor}-{i}",
            sensor=sensor,
            ts=start + timedelta(seconds=10 * i + (quiet_s if i >= READINGS // 2 else 0)),
            v=OUTLIER if i == OUTLIER_AT else round(LEVEL + 3.5 * math.sin(i / 4), 2),
        )
        for i in range(READINGS)
    ]
    codes = publish(pipeline.stack.env, sensor, contract.readings_topic(sensor), [payload(r) for r in readings])
    assert codes == [0] * READINGS, codes
    return readings


def wait_scored(pipeline: Pipeline, dashboard: ServiceProcess, sensor: str) -> dict[str, Any]:
    """The sensor's series once every reading has its prediction."""

    def scored() -> dict[str, Any] | None:
        series = api(pipeline, dashboard, f"/api/sensors/{sensor}/series?minutes=60")
        return series if series["scored"] == READINGS else None

    return wait_for(scored, 120, f"{READINGS} scored readings of {sensor} through the API", pipeline.logs)


class Elements(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a in self.found if t == tag and all(a.get(k) == v for k, v in wanted.items())]


# --- tests -------------------------------------------------------------------------


def test_every_route_needs_the_login(pipeline: Pipeline) -> None:
    dashboard = pipeline.start_dashboard()
    user, password = login(pipeline)
    schema = api(pipeline, dashboard, "/openapi.json")
    assert API_ROUTES <= set(schema["paths"]), f"the API lacks {API_ROUTES - set(schema['paths'])}"
    paths = [p.replace("{sensor}", "sensor-1") for p in schema["paths"]] + [
        "/",
        "/?sensor=sensor-1",
        "/openapi.json",
        "/static/app.js",
        "/static/style.css",
        "/static/vendor/uPlot.iife.min.js",
        "/static/vendor/uPlot.min.css",
        "/runbooks/servicedown",
        "/no-such-page",
    ]
    for path in paths:
        for auth in (None, (user, password + "x"), (user + "x", password), ("", "")):
            code, headers, _ = get(dashboard, path, auth)
            assert code == 401, f"{path} with {'no login' if auth is None else 'a wrong login'}: HTTP {code}"
            assert headers.get("www-authenticate", "").startswith("Basic "), f"{path}: no WWW-Authenticate: Basic"
        code, _, _ = get(dashboard, path, (user, password))
        assert code == (404 if path == "/no-such-page" else 200), f"{path} with the login: HTTP {code}"

    # Probes stay open for Compose and Prometheus, and count the refusals above.
    assert get(dashboard, "/healthz")[0] == 200
    assert get(dashboard, "/readyz")[0] == 200
    code, _, body = get(dashboard, "/metrics")
    assert code == 200
    refused = [line for line in body.decode().splitlines() if line.startswith("pipeline_dashboard_unauthorized_total")]
    assert refused and float(refused[0].split()[-1]) >= 4 * len(paths)


def test_aggregates_are_served_with_the_mean_of_their_totals(pipeline: Pipeline) -> None:
    # The bridge $inc's count and sum and stores no mean: the page divides them.
    dashboard = pipeline.start_dashboard()
    sensor = pipeline.sensor_id(1)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    pipeline.db[contract.COLLECTION_AGGREGATES].insert_one(
        {"_id": f"{sensor}|{contract.iso(minute)}", "sensor": sensor, "minute": minute}
        | {"count": 4, "sum": 10.0, "min": 1.0, "max": 4.0}
    )
    found = api(pipeline, dashboard, f"/api/aggregates/{sensor}?minutes=60")
    assert found == {
        "sensor": sensor,
        "minutes": 60,
        "resolution": "minute",
        "rows": [{"start": contract.iso(minute), "count": 4, "mean": 2.5, "min": 1.0, "max": 4.0}],
    }


def test_api_shows_a_live_sensor_its_forecast_and_anomaly(pipeline: Pipeline, model_path: Path) -> None:
    dashboard = start_all(pipeline, model_path)
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    readings = publish_series(pipeline, sensor)
    long_bad = b'{"id": "x", "sensor": "%s", "note": "%s"}' % (sensor.encode(), b"y" * 400)
    assert publish(pipeline.stack.env, sensor, topic, [b"not json at all", long_bad]) == [0, 0]

    series = wait_scored(pipeline, dashboard, sensor)
    points = series["points"]
    assert [p["id"] for p in points] == [r.id for r in readings], "every reading, oldest first"
    assert [p["v"] for p in points] == [r.v for r in readings]
    assert all(p["yhat"] == LEVEL and p["yhat_lower"] == LEVEL - WIDTH for p in points)
    assert all(p["yhat_upper"] == LEVEL + WIDTH for p in points)
    assert [p["id"] for p in points if p["anomaly"]] == [readings[OUTLIER_AT].id]
    assert series["anomalies"] == 1

    (row,) = [s for s in api(pipeline, dashboard, "/api/sensors") if s["sensor"] == sensor]
    assert row["state"] == "live"
    assert row["last_value"] == readings[-1].v
    assert row["last_ts"] == contract.iso(readings[-1].ts)
    assert row["interval_s"] == 10.0
    assert row["per_minute"] == READINGS / 5, "every reading arrived within the last 5 minutes"

    alerts = [a for a in api(pipeline, dashboard, "/api/alerts?limit=500") if a["sensor"] == sensor]
    assert [(a["id"], a["v"]) for a in alerts] == [(readings[OUTLIER_AT].id, OUTLIER)]

    rejections = wait_for(
        lambda: [r for r in api(pipeline, dashboard, "/api/rejections?limit=500") if r["topic"] == topic][:2],
        60,
        "two rejections",
        pipeline.logs,
    )
    by_payload = {r["payload"][:10]: r for r in rejections}
    assert by_payload["not json a"]["reason"].startswith("payload is not JSON")
    long = by_payload[long_bad.decode()[:10]]
    assert long["truncated"] and len(long["payload"]) <= 161 and long["size"] == len(long_bad)
    assert "field 'ts' is missing" in long["reason"]

    # Per-minute aggregates come from the bridge's `aggregates` collection; a day, from its hourly rollups.
    def aggregated(minutes: int) -> list[dict[str, Any]] | None:
        found = api(pipeline, dashboard, f"/api/aggregates/{sensor}?minutes={minutes}")["rows"]
        return found if sum(m["count"] for m in found) == READINGS else None

    minutes = wait_for(lambda: aggregated(60), 60, f"aggregates of {READINGS} readings", pipeline.logs)
    assert max(m["max"] for m in minutes) == OUTLIER
    assert [m["start"] for m in minutes] == sorted(m["start"] for m in minutes)
    hours = wait_for(lambda: aggregated(24 * 60), 60, "hourly rollups of every reading", pipeline.logs)
    assert max(h["max"] for h in hours) == OUTLIER and len(hours) <= 2
    nothing = api(pipeline, dashboard, f"/api/aggregates/{pipeline.sensor_id('none')}")
    assert nothing == {"sensor": pipeline.sensor_id("none"), "minutes": 60, "resolution": "minute", "rows": []}

    # The page's CSV download: every reading with its forecast, oldest first.
    code, headers, body = get(dashboard, f"/api/sensors/{sensor}/readings.csv?minutes=60", login(pipeline))
    assert code == 200 and headers["content-type"].startswith("text/csv")
    assert f'filename="{sensor}_' in headers["content-disposition"]
    header, *rows = list(csv.reader(io.StringIO(body.decode())))
    assert header == ["id", "sensor", "ts", "v", "yhat", "yhat_lower", "yhat_upper", "anomaly"]
    assert [row[0] for row in rows] == [r.id for r in readings]
    assert [float(row[3]) for row in rows] == [r.v for r in readings]
    assert {row[4] for row in rows} == {str(LEVEL)} and [r[0] for r in rows if r[7] == "True"] == [
        readings[OUTLIER_AT].id
    ]


def test_browser_shows_the_sensor_chart_band_and_anomaly(pipeline: Pipeline, model_path: Path) -> None:
    dashboard = start_all(pipeline, model_path)
    sensor = pipeline.sensor_id(1)
    topic = contract.readings_topic(sensor)
    publish_series(pipeline, sensor, quiet_s=120)
    bad = b'{"id": "r-1", "sensor": "%s", "ts": "2026-01-01T00:00:00Z", "v": "high"}' % sensor.encode()
    assert publish(pipeline.stack.env, sensor, topic, [bad]) == [0]
    wait_scored(pipeline, dashboard, sensor)
    # The bridge writes its minutes every 2 s, its hours and days every 30 s.
    path = f"/api/aggregates/{sensor}?minutes=60"
    wait_for(lambda: api(pipeline, dashboard, path)["rows"], 60, "the sensor's minutes", pipeline.logs)
    user, password = login(pipeline)
    url = f"http://{user}:{password}@127.0.0.1:{dashboard.env['DASHBOARD_PORT']}/?sensor={sensor}"

    page = Elements(chromium(url, "--dump-dom"))
    assert page.find("tr", data_sensor=sensor, data_state="live"), "the sensor's row, live"
    (chart,) = page.find("div", id="chart")
    assert chart["data-sensor"] == sensor
    assert chart["data-points"] == str(READINGS) and chart["data-scored"] == str(READINGS)
    assert chart["data-anomalies"] == "1" and chart["data-band"] == "true"
    assert chart["data-quiet-spells"] == "1", "the lines break where the sensor was quiet for two minutes"
    assert page.find("canvas"), "uPlot drew the charts"
    assert page.find("li", data_sensor=sensor), "the anomaly in the alerts list"
    assert page.find("li", data_topic=topic), "the rejected message in its list"
    assert page.find("li", data_service="server", data_status="up")
    assert page.find("li", data_service="model_analysis", data_status="up")
    (aggregates,) = page.find("div", id="aggregates")
    assert int(aggregates["data-points"] or 0) >= 1 and aggregates["data-resolution"] == "minute"
    (download,) = page.find("a", id="download")
    assert download["href"] == f"/api/sensors/{sensor}/readings.csv?minutes=60"

    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    chromium(url, f"--screenshot={screenshot}", "--hide-scrollbars")
    assert screenshot.stat().st_size > 20_000, "the screenshot is blank"

    # A month's range is drawn from the daily rollups, and the download follows the range.
    path = f"/api/aggregates/{sensor}?minutes={30 * 24 * 60}"
    wait_for(lambda: api(pipeline, dashboard, path)["rows"], 60, "the sensor's days", pipeline.logs)
    month = Elements(chromium(f"{url}&minutes={30 * 24 * 60}", "--dump-dom"))
    (aggregates,) = month.find("div", id="aggregates")
    assert aggregates["data-resolution"] == "day" and aggregates["data-points"] in ("1", "2"), "today (and yesterday)"
    (download,) = month.find("a", id="download")
    assert download["href"] == f"/api/sensors/{sensor}/readings.csv?minutes={30 * 24 * 60}"


def test_the_model_panel_shows_the_serving_model_its_record_and_a_rescored_one_beside_it(
    pipeline: Pipeline, model_path: Path, tmp_path: Path
) -> None:
    dashboard = start_all(pipeline, model_path)
    sensor = pipeline.sensor_id(1)
    readings = publish_series(pipeline, sensor)
    wait_scored(pipeline, dashboard, sensor)
    serving = load_model(model_path).identity
    # The trainer kept the constant model (a decision with both holdout scores, and a reason to be shown as text);
    # rescore set another model's forecasts beside the live ones.
    holdout = {"n": 240, "mae": 2.5, "coverage": 0.96, "mean_width": 10.0}
    Trainer(cast(TrainerSettings, None), pipeline.db).record(
        {
            "sensor": sensor,
            "model": {"name": f"{sensor}-challenger", "hash": "00000000c0ffee00"},
            "incumbent": {**serving.model_dump(), "source": "default"},
            "metrics": {"challenger": {**holdout, "mae": 2.45}, "incumbent": holdout},
            "promoted": False,
            "reason": "<img src=x onerror=alert(1)> holdout MAE 2.45 is not 5 % below 2.5",
        }
    )
    other = tmp_path / "lower.joblib"
    joblib.dump({"model": ConstantModel(level=LEVEL - 2, width=2 * WIDTH), "metadata": {"name": "lower"}}, other)
    lower = load_model(other)
    since = readings[0].ts.replace(second=0, microsecond=0)
    run = rescore(pipeline.db, lower, sensor, since, datetime.now(UTC) + timedelta(minutes=1))
    assert run["scored"] == READINGS, run

    def live_accuracy() -> dict[str, Any] | None:
        answer = api(pipeline, dashboard, f"/api/sensors/{sensor}/model")
        return answer if (answer["live"] or {}).get("n") == READINGS else None

    answer = wait_for(live_accuracy, 60, "the serving model's running accuracy", pipeline.logs)
    assert answer["serving"]["hash"] == serving.hash and answer["serving"]["name"] == serving.name
    assert answer["backtest"]["mae"] == 2.5 and answer["backtest"]["role"] == "incumbent"
    assert [d["promoted"] for d in answer["history"]] == [False]
    assert answer["weekly"]["forecast"]["n"] == READINGS and answer["weekly"]["naive"]["n"] == 0
    assert answer["weekly"]["text"].endswith("weekly naive: no reading a week earlier")
    assert [r["model"]["hash"] for r in answer["rescored"]] == [lower.identity.hash]
    bad = get(dashboard, f"/api/sensors/{sensor}/model?compare=%3Cscript%3E", login(pipeline))
    assert bad[0] == 422, "compare takes a model hash only"
    compared = api(pipeline, dashboard, f"/api/sensors/{sensor}/model?compare={lower.identity.hash}")["comparison"]
    assert len(compared["points"]) == READINGS and {p["model"][0] for p in compared["points"]} == {LEVEL - 2}

    user, password = login(pipeline)
    url = f"http://{user}:{password}@127.0.0.1:{dashboard.env['DASHBOARD_PORT']}/?sensor={sensor}"
    url += f"&compare={lower.identity.hash}"
    page = Elements(chromium(url, "--dump-dom"))
    (panel,) = page.find("div", id="model-panel")
    assert panel["data-sensor"] == sensor and panel["data-serving"] == serving.hash
    assert (panel["data-history"], panel["data-rescored"], panel["data-compared"]) == ("1", "1", str(READINGS))
    assert page.find("tr", data_promoted="false"), "the trainer's decision in the table"
    assert not page.find("img"), "a reason is shown as text, never as HTML"
    (chart,) = page.find("div", id="compare-chart")
    assert chart["data-model"] == lower.identity.hash and chart["data-points"] == str(READINGS)
    screenshot = ARTIFACTS / "dashboard-model.png"
    screenshot.unlink(missing_ok=True)
    chromium(url, f"--screenshot={screenshot}", "--hide-scrollbars", "--window-size=1400,2000")
    assert screenshot.stat().st_size > 20_000, "the screenshot is blank"


def test_health_shows_services_up_and_their_rates(pipeline: Pipeline, model_path: Path) -> None:
    dashboard = start_all(pipeline, model_path, more_services=f"gone=http://127.0.0.1:{free_port()}")

    before = {s["name"]: s for s in api(pipeline, dashboard, "/api/health")}
    assert [before[n]["status"] for n in ("server", "model_analysis", "gone")] == ["up", "up", "down"]
    for name in ("server", "model_analysis"):
        assert before[name]["up"] and before[name]["checks"] and all(before[name]["checks"].values()), before[name]
    assert before["gone"]["error"].startswith("/readyz")

    publish_series(pipeline, pipeline.sensor_id(1))
    wait_scored(pipeline, dashboard, pipeline.sensor_id(1))

    def rated() -> dict[str, dict[str, Any]] | None:
        # A rate needs two samples of each service's counters at least a second apart
        # (each service is probed on its own, so one may have its rate before the other).
        found = {s["name"]: s for s in api(pipeline, dashboard, "/api/health")}
        rates = (found["server"]["received_per_s"], found["model_analysis"]["scored_per_s"])
        return found if None not in rates else None

    after = wait_for(rated, 10, "a rate", pipeline.logs)
    assert after["server"]["received_total"] - (before["server"]["received_total"] or 0) == READINGS
    assert after["model_analysis"]["scored_total"] - (before["model_analysis"]["scored_total"] or 0) == READINGS
    assert after["server"]["received_per_s"] > 0 and after["model_analysis"]["scored_per_s"] > 0
    assert after["model_analysis"]["consumer_lag"] is not None
