"""The FastAPI app: the page, its static files, the read-only JSON API, and health/metrics.

Everything is behind HTTP basic auth (DASHBOARD_USERNAME / DASHBOARD_PASSWORD)
except /healthz, /readyz and /metrics, which Compose healthchecks and
Prometheus call without credentials; they say nothing about the data.
The routes are plain ``def``: FastAPI runs them in its thread pool, where the
blocking pymongo and urllib calls belong.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pymongo.errors import PyMongoError

from Dashboard import metrics
from Dashboard.firing import Alertmanager, load_runbooks
from Dashboard.probe import ServiceProbe
from Dashboard.queries import MAX_RANGE, RAW_UP_TO, Reader
from Dashboard.settings import Settings
from pipeline import contract, health

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Probes for Compose and Prometheus: no credentials, no data.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REALM = 'Basic realm="sensor pipeline", charset="UTF-8"'

#: Raw points: at most RAW_UP_TO; a chart's range (rollups), and a download: at most MAX_RANGE.
Minutes = Annotated[int, Query(ge=1, le=RAW_UP_TO // timedelta(minutes=1))]
RangeMinutes = Annotated[int, Query(ge=1, le=MAX_RANGE // timedelta(minutes=1))]
#: The columns of a CSV download, in order.
CSV_COLUMNS = ("id", "sensor", "ts", "v", "yhat", "yhat_lower", "yhat_upper", "anomaly")
Limit = Annotated[int, Query(ge=1, le=500)]
#: A model's content hash (16 hex digits as Models_analysis names them; a little room for other namings).
ModelHash = Annotated[str | None, Query(pattern=r"^[0-9A-Za-z_.-]{1,64}$")]


def credentials_match(header: str | None, username: str, password: str) -> bool:
    """Whether an ``Authorization: Basic ...`` header carries this login (compared in constant time)."""
    if not header or header[:6].lower() != "basic ":
        return False
    try:
        given_user, _, given_password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared, always: no early exit tells which of the two was wrong.
    user_ok = secrets.compare_digest(given_user.encode(), username.encode())
    password_ok = secrets.compare_digest(given_password.encode(), password.encode())
    return user_ok & password_ok


def csv_lines(sensor: str, points: Iterator[dict[str, Any]], every: int = 1000) -> Iterator[str]:
    """The header at once (so a download starts before the first lookup), then the points as CSV text,
    ``every`` rows at a time; an empty field is a missing forecast."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    for count, point in enumerate(points, start=1):
        writer.writerow([sensor if column == "sensor" else point[column] for column in CSV_COLUMNS])
        if count % every == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def create_app(
    settings: Settings,
    reader: Reader,
    probe: ServiceProbe,
    alertmanager: Alertmanager | None = None,
    runbooks: Mapping[str, str] | None = None,
) -> FastAPI:
    """The dashboard's ASGI app, reading from ``reader``, asking ``probe`` about the services and
    ``alertmanager`` (by default the one DASHBOARD_ALERTMANAGER_URL names) for the alerts firing now.

    ``runbooks`` (by default docs/alerts.md's) are served at /runbooks/<anchor>, where the page links each alert.
    """
    if alertmanager is None:
        alertmanager = Alertmanager(settings.DASHBOARD_ALERTMANAGER_URL)
    if runbooks is None:
        runbooks = load_runbooks()
    # No /docs: Swagger UI loads from a CDN, and users' networks may be closed.
    app = FastAPI(title="Sensor pipeline dashboard", docs_url=None, redoc_url=None)
    username = settings.DASHBOARD_USERNAME
    password = settings.DASHBOARD_PASSWORD.get_secret_value()

    @app.middleware("http")
    async def require_login(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # A middleware, not a dependency, so static files and unknown paths are covered too.
        given = request.headers.get("authorization")
        if request.url.path in OPEN_PATHS or credentials_match(given, username, password):
            return await call_next(request)
        metrics.UNAUTHORIZED.inc()
        return JSONResponse({"error": "login required"}, status_code=401, headers={"WWW-Authenticate": REALM})

    @app.exception_handler(PyMongoError)
    async def mongo_unavailable(_request: Request, error: PyMongoError) -> JSONResponse:
        logger.warning("MongoDB query failed: %s", error)
        return JSONResponse({"error": "MongoDB is not answering; retrying on the next poll"}, status_code=503)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/sensors")
    def sensors() -> list[dict[str, Any]]:
        """Every sensor: last reading, readings per minute over 5 minutes, and live/stale/silent."""
        with metrics.QUERY_SECONDS.labels("sensors").time():
            return reader.sensors()

    @app.get("/api/sensors/{sensor}/series")
    def series(sensor: contract.SensorId, minutes: Minutes = 60) -> dict[str, Any]:
        """The sensor's readings with their forecast (yhat, interval, anomaly) over the last ``minutes``."""
        with metrics.QUERY_SECONDS.labels("series").time():
            return reader.series(sensor, minutes)

    @app.get("/api/sensors/{sensor}/model")
    def model(sensor: contract.SensorId, compare: ModelHash = None) -> dict[str, Any]:
        """The model serving the sensor: its running accuracy, the trainer's latest decisions with their holdout
        scores, the last hour's forecast MAE against the weekly naive, and the models the sensor was re-scored
        with; ``compare=<hash>`` adds that model's re-scored forecasts beside the live ones."""
        with metrics.QUERY_SECONDS.labels("model").time():
            return reader.model(sensor, compare)

    @app.get("/api/aggregates/{sensor}")
    def aggregates(sensor: contract.SensorId, minutes: RangeMinutes = 60) -> dict[str, Any]:
        """Count/mean/min/max of the sensor's readings per minute (up to 3 h), hour (up to 14 days) or day."""
        with metrics.QUERY_SECONDS.labels("aggregates").time():
            return reader.aggregates(sensor, minutes)

    @app.get("/api/sensors/{sensor}/readings.csv")
    def download(sensor: contract.SensorId, minutes: RangeMinutes = 60) -> StreamingResponse:
        """The sensor's readings of the last ``minutes`` with their forecasts, as CSV, streamed a minute at a time."""
        until = datetime.now(UTC)
        since = until - timedelta(minutes=minutes)
        name = f"{sensor}_{since:%Y%m%dT%H%M}_{until:%Y%m%dT%H%M}.csv"
        return StreamingResponse(
            csv_lines(sensor, reader.points(sensor, since, until)),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/api/alerts")
    def alerts(limit: Limit = 50) -> list[dict[str, Any]]:
        """The latest anomalies, newest first."""
        with metrics.QUERY_SECONDS.labels("alerts").time():
            return reader.alerts(limit)

    @app.get("/api/rejections")
    def rejections(limit: Limit = 50) -> list[dict[str, Any]]:
        """The latest rejected messages with their reasons, newest first."""
        with metrics.QUERY_SECONDS.labels("rejections").time():
            return reader.latest_rejections(limit)

    @app.get("/api/health")
    def services_health() -> list[dict[str, Any]]:
        """Each service in DASHBOARD_SERVICES: up/not_ready/down, its checks, messages per second, consumer lag."""
        with metrics.QUERY_SECONDS.labels("health").time():
            return probe.check_all()

    @app.get("/api/firing")
    def firing() -> dict[str, Any]:
        """The alerts firing now on Alertmanager (not silenced, not inhibited), the most severe first.

        ``status`` is ``ok``, ``unreachable`` (``error`` says why; ``alerts`` is then empty
        and means nothing) or ``not_configured`` (DASHBOARD_ALERTMANAGER_URL is empty).
        """
        with metrics.QUERY_SECONDS.labels("firing").time():
            return alertmanager.firing()

    @app.get("/runbooks/{name}", response_class=PlainTextResponse, include_in_schema=False)
    def runbook(name: str) -> PlainTextResponse:
        """The runbook of one alert (its section of docs/alerts.md), as text."""
        text = runbooks.get(name.lower())
        if text is None:
            return PlainTextResponse(f"no runbook named {name[:64]!r} (docs/alerts.md)", status_code=404)
        return PlainTextResponse(text)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        code, body = health.liveness(lambda: True)
        return JSONResponse(body, status_code=code)

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        code, body = health.readiness({"mongodb": reader.ping})
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = health.metrics()
        return Response(body, media_type=content_type)

    return app
