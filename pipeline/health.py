"""Health and metrics over HTTP: ``/healthz`` (alive), ``/readyz`` (connected), ``/metrics`` (Prometheus).

Each service starts one :class:`HealthServer` on HEALTH_PORT with its own
readiness checks; Compose healthchecks and Prometheus use it. A service that
already serves HTTP (the dashboard) answers the same three paths with
:func:`liveness`, :func:`readiness` and :func:`metrics`.

Readiness is a metric too: ``pipeline_ready{check}`` is 1 or 0 for each check
of ``/readyz``. The checks a :class:`HealthServer` is given, or that
:func:`readiness` has evaluated, are watched (:func:`watch`): :func:`metrics`
evaluates them again before every scrape, so what Prometheus reads is the
checks' answer at that moment, whether anyone asked ``/readyz`` or not.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from pipeline.metrics import READY

logger = logging.getLogger(__name__)

Check = Callable[[], bool]

#: The checks exported as pipeline_ready{check}, by name (one process, one set of checks).
_watched: dict[str, Check] = {}
_watched_lock = threading.Lock()


class Dependency:
    """Whether a server the service needs answered its last request (set by the code that talks to it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._up = threading.Event()
        #: Why it is down, when the code that saw it said (shown by /readyz).
        self.why: str | None = None

    def up(self) -> None:
        """The last request succeeded."""
        self._up.set()
        self.why = None

    def down(self, why: str | None = None) -> None:
        """The last request failed (``why``, for people, when known)."""
        self._up.clear()
        self.why = why

    def __call__(self) -> bool:
        return self._up.is_set()


def liveness(alive: Check) -> tuple[int, dict[str, object]]:
    """The status code and JSON body of ``/healthz``."""
    ok = alive()
    return (200 if ok else 503), {"status": "ok" if ok else "failing"}


def watch(ready: Mapping[str, Check]) -> None:
    """Export ``ready``'s checks as ``pipeline_ready{check}``, evaluated again at every :func:`metrics` call."""
    with _watched_lock:
        _watched.update(ready)


def evaluate(ready: Mapping[str, Check]) -> dict[str, bool]:
    """Each check's answer (one that raises is failing), also set as ``pipeline_ready{check}``."""
    results: dict[str, bool] = {}
    for name, check in ready.items():
        try:
            results[name] = bool(check())
        except Exception as error:  # noqa: BLE001 - a check that cannot answer is not passing
            logger.debug("readiness check %s raised %r", name, error)
            results[name] = False
        READY.labels(name).set(1 if results[name] else 0)
    return results


def readiness(ready: Mapping[str, Check]) -> tuple[int, dict[str, object]]:
    """The status code and JSON body of ``/readyz``: every check, whether all pass, and why one fails.

    The checks are watched from then on (:func:`watch`): ``pipeline_ready`` follows them at each scrape.
    """
    watch(ready)
    checks = evaluate(ready)
    ok = all(checks.values())
    body: dict[str, object] = {"status": "ready" if ok else "not ready", "checks": checks}
    why = {name: getattr(ready[name], "why", None) for name, passed in checks.items() if not passed}
    if any(why.values()):
        body["why"] = {name: reason for name, reason in why.items() if reason}
    return (200 if ok else 503), body


def metrics() -> tuple[bytes, str]:
    """The body and content type of ``/metrics`` (this process's Prometheus registry), readiness evaluated now."""
    with _watched_lock:
        watched = dict(_watched)
    evaluate(watched)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class HealthServer:
    """A tiny HTTP server in a daemon thread."""

    def __init__(self, port: int, ready: Mapping[str, Check], alive: Check = lambda: True) -> None:
        self.port = port
        self.ready = dict(ready)
        watch(self.ready)
        self.alive = alive
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        """Serve on all interfaces (a container's port); port 0 means: no server."""
        if not self.port:
            return
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, *metrics())
                elif path == "/healthz":
                    self._json(*liveness(owner.alive))
                elif path == "/readyz":
                    self._json(*readiness(owner.ready))
                else:
                    self._json(404, {"error": f"no {path}; try /healthz, /readyz or /metrics"})

            def _json(self, code: int, body: object) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the http.server API
                logger.debug("health %s", format % args)

        self._server = ThreadingHTTPServer(("0.0.0.0", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        logger.info("health and metrics on :%d (/healthz, /readyz, /metrics)", self.port)

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
