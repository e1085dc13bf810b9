"""Alertmanager without Docker: Debian's binary, started the way Compose starts the official image.

Compose runs ``monitoring/alertmanager/entrypoint.sh`` in ``prom/alertmanager``:
it renders ``monitoring/alertmanager.yml`` with ``ALERT_WEBHOOK_URL`` and execs
Alertmanager. :class:`Alertmanager` runs that same script with Debian's
``prometheus-alertmanager`` (``localstack/install.sh``) in its place, so a test
exercises the entry point and the configuration Compose uses::

    manager = Alertmanager(workdir, port=19093, webhook_url="http://127.0.0.1:8999/hook", log_path=log)
    manager.start()  # waits for /-/ready; AlertingError with the log's tail if it does not come
    ...  # Prometheus sends alerts to manager.url (alerting: alertmanagers: 127.0.0.1:19093)
    manager.stop()
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "monitoring" / "alertmanager.yml"
ENTRYPOINT = ROOT / "monitoring" / "alertmanager" / "entrypoint.sh"
#: Debian names the binary after its package; upstream's release calls it ``alertmanager``.
BINARIES = ("prometheus-alertmanager", "alertmanager")


class AlertingError(RuntimeError):
    """Alertmanager is missing, or did not start."""


def alertmanager_binary() -> str:
    """The Alertmanager executable on PATH."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    raise AlertingError(
        "no Alertmanager binary (prometheus-alertmanager): run `bash localstack/install.sh` "
        "(Debian's prometheus-alertmanager package)"
    )


@dataclass
class Alertmanager:
    """One Alertmanager on 127.0.0.1:``port``, its data and rendered configuration in ``workdir``."""

    workdir: Path
    port: int
    webhook_url: str
    log_path: Path
    #: The configuration template; a test may pass a copy with shorter timings.
    template: Path = TEMPLATE
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        """The configuration the entry point rendered (it holds the webhook URL)."""
        return self.workdir / "run" / "alertmanager.yml"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start it through the entry point and wait until it answers ``/-/ready``."""
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "ALERT_WEBHOOK_URL": self.webhook_url,
            "ALERTMANAGER_TEMPLATE": str(self.template),
            "ALERTMANAGER_CONFIG": str(self.config),
            "ALERTMANAGER_BIN": alertmanager_binary(),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "sh",
                    str(ENTRYPOINT),
                    f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--web.external-url={self.url}",
                    # One Alertmanager: no cluster, so nothing listens on 9094.
                    "--cluster.listen-address=",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AlertingError(f"alertmanager exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise AlertingError(f"alertmanager not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
