"""Entry point: `python -m Dashboard` serves the live page on DASHBOARD_PORT until SIGTERM."""

from __future__ import annotations

import logging

import uvicorn

from Dashboard.app import create_app
from Dashboard.firing import Alertmanager
from Dashboard.probe import ServiceProbe
from Dashboard.queries import Reader
from Dashboard.settings import Settings
from pipeline import health, lifecycle, logs, settings
from pipeline.mongo import mongo_client

logger = logging.getLogger("Dashboard")


def main() -> int:
    """Serve until SIGTERM or SIGINT: uvicorn finishes the requests in hand, then the clients close."""
    config = settings.load(Settings)
    logs.setup(config.LOG_LEVEL, "dashboard")
    # uvicorn handles SIGTERM while it serves, then raises it again once it has drained: landing in
    # the one handler every service uses makes that a normal exit (code 0). A signal before uvicorn
    # starts means: do not start.
    stopped = lifecycle.stop_event()
    # The one client every service builds (MONGO_URI checked at start, its options, MONGO_TLS_CA_FILE).
    client = mongo_client(
        config, tz_aware=True, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000, appname="pipeline-dashboard"
    )
    probe = ServiceProbe(config.services)
    reader = Reader(client[config.MONGO_DATABASE])
    # pipeline_ready{check="mongodb"} at every scrape, not only after a /readyz call.
    health.watch({"mongodb": reader.ping})
    alertmanager = Alertmanager(config.DASHBOARD_ALERTMANAGER_URL)
    app = create_app(config, reader, probe, alertmanager)
    logger.info(
        "dashboard on :%d, database %s, services: %s, alerts from: %s",
        config.DASHBOARD_PORT,
        config.MONGO_DATABASE,
        ", ".join(config.services) or "none (DASHBOARD_SERVICES is empty)",
        config.DASHBOARD_ALERTMANAGER_URL or "none (DASHBOARD_ALERTMANAGER_URL is empty)",
    )
    certificate, key = config.tls_files()
    try:
        if not stopped.is_set():
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="0.0.0.0",
                    port=config.DASHBOARD_PORT,
                    log_config=None,  # our logging setup, to stdout
                    access_log=config.LOG_LEVEL == "DEBUG",  # the page polls every few seconds
                    timeout_graceful_shutdown=10,
                    ssl_certfile=certificate,  # HTTPS when both are set
                    ssl_keyfile=key,
                )
            )
            server.run()  # exits with 3 (SystemExit) when it cannot bind the port, after logging why
    finally:
        probe.close()
        client.close()
        logger.info("dashboard stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
