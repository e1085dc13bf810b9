"""The pipeline's Python services as processes, the way Compose runs them as containers.

Each service is ``python -m <package>`` from the repo root with the same
environment variables Compose gives it; its output goes to a log file. Used by
``python -m localstack run`` and by the end-to-end and fault tests.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from localstack.config import sensor_accounts

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

#: Variables of the calling environment that a service must not inherit: the
#: service gets exactly what its env says, as in a container.
_PREFIXES = (
    "MQTT_",
    "KAFKA_",
    "MONGO_",
    "SENSOR_",
    "MODEL_",
    "TRAINER_",
    "SERVER_",
    "DASHBOARD_",
    "LOG_LEVEL",
    "HEALTH_PORT",
)

#: Health and metrics ports of `run_pipeline`'s processes (sensor i gets SENSOR_HEALTH_PORT + i; bridge and
#: model replica i > 1 get REPLICA_HEALTH_PORT + 2i and + 2i + 1).
SERVER_HEALTH_PORT = 8010
MODEL_HEALTH_PORT = 8011
REPLICA_HEALTH_PORT = 8040
TRAINER_HEALTH_PORT = 8012
#: Where `make run`'s trainer writes per-sensor models and its model service reads them (MODEL_TRAINED_PATH).
TRAINED_MODELS = ROOT / ".stack" / "trained-models"
SENSOR_HEALTH_PORT = 8020


@dataclass
class ServiceProcess:
    """One running service: ``python -m module`` with its own environment and log file."""

    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the process (its own session, so a terminal's Ctrl+C reaches us first)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(_PREFIXES)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env={**base, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once it has ended."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait for a clean stop, SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0fs; killing it", self.name, timeout_s)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to end by itself; returns its exit code."""
        assert self.process is not None
        return self.process.wait(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service's log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


#: Set by the stack on a Kafka cluster (KAFKA_BROKERS=3): the replication of the topics the services create.
_REPLICATION = ("KAFKA_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS")


def _copy(stack_env: Mapping[str, str], *names: str) -> dict[str, str]:
    """The variables of ``names`` that ``stack_env`` has (the TLS ones only when TLS is on)."""
    return {name: stack_env[name] for name in names if name in stack_env}


def _mongo(stack_env: Mapping[str, str]) -> dict[str, str]:
    """What a service that reads or writes MongoDB needs of the stack: the URI, the database, the CA."""
    return {
        "MONGO_URI": stack_env["MONGO_URI"],
        "MONGO_DATABASE": stack_env["MONGO_DATABASE"],
        **_copy(stack_env, "MONGO_TLS_CA_FILE"),
    }


def _kafka_login(stack_env: Mapping[str, str], user: str) -> dict[str, str]:
    """KAFKA_SASL_USERNAME/PASSWORD from the stack's KAFKA_<user>_USERNAME/PASSWORD, when Kafka wants logins."""
    if f"KAFKA_{user}_PASSWORD" not in stack_env:
        return {}
    return {
        "KAFKA_SASL_USERNAME": stack_env[f"KAFKA_{user}_USERNAME"],
        "KAFKA_SASL_PASSWORD": stack_env[f"KAFKA_{user}_PASSWORD"],
    }


def server_env(stack_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The bridge's environment: the server's MQTT user, Kafka, MongoDB (and TLS, when the stack has it)."""
    env = _common(stack_env)
    env.update(MQTT_USERNAME=stack_env["MQTT_SERVER_USERNAME"], MQTT_PASSWORD=stack_env["MQTT_SERVER_PASSWORD"])
    env.update(_mongo(stack_env), **_kafka_login(stack_env, "SERVER"))
    env.update(overrides)
    return env


def sensor_env(stack_env: Mapping[str, str], sensor_id: str, **overrides: str) -> dict[str, str]:
    """A sensor's environment: its own id, and its own MQTT user if MQTT_SENSOR_ACCOUNTS has one, else the fleet's."""
    own = sensor_accounts(stack_env.get("MQTT_SENSOR_ACCOUNTS", ""))
    username, password = (
        (sensor_id, own[sensor_id])
        if sensor_id in own
        else (stack_env["MQTT_SENSOR_USERNAME"], stack_env["MQTT_SENSOR_PASSWORD"])
    )
    env = {
        "MQTT_HOST": stack_env["MQTT_HOST"],
        "MQTT_PORT": stack_env["MQTT_PORT"],
        "MQTT_USERNAME": username,
        "MQTT_PASSWORD": password,
        "SENSOR_ID": sensor_id,
        **_copy(stack_env, "MQTT_TLS_CA_FILE"),
    }
    if "SENSOR_SPOOL_DIR" in stack_env:
        env["SENSOR_SPOOL_DIR"] = stack_env["SENSOR_SPOOL_DIR"]
    env.update(overrides)
    return env


def model_env(stack_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The model service's environment: Kafka and the model file."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack_env["KAFKA_BOOTSTRAP_SERVERS"],
        "MODEL_PATH": str(ROOT / "models/default.joblib"),
        **_copy(stack_env, "KAFKA_TLS_CA_FILE", *_REPLICATION),
        **_kafka_login(stack_env, "MODEL"),
    }
    env.update(overrides)
    return env


def trainer_env(stack_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The trainer's environment: MongoDB (its history), the model files it compares with and where it writes."""
    env = {
        **_mongo(stack_env),
        "MODEL_PATH": str(ROOT / "models/default.joblib"),
        "MODEL_TRAINED_PATH": str(TRAINED_MODELS),
    }
    env.update(overrides)
    return env


def dashboard_env(stack_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The dashboard's environment: MongoDB, and mongo-express's login (the page uses the same one)."""
    env = {
        **_mongo(stack_env),
        "DASHBOARD_USERNAME": stack_env.get("MONGO_EXPRESS_USERNAME", "admin"),
        "DASHBOARD_PASSWORD": stack_env["MONGO_EXPRESS_PASSWORD"],
        **_copy(stack_env, "DASHBOARD_TLS_CERT_FILE", "DASHBOARD_TLS_KEY_FILE"),
    }
    env.update(overrides)
    return env


def _common(stack_env: Mapping[str, str]) -> dict[str, str]:
    return {
        "MQTT_HOST": stack_env["MQTT_HOST"],
        "MQTT_PORT": stack_env["MQTT_PORT"],
        "KAFKA_BOOTSTRAP_SERVERS": stack_env["KAFKA_BOOTSTRAP_SERVERS"],
        **_copy(stack_env, "MQTT_TLS_CA_FILE", "KAFKA_TLS_CA_FILE", *_REPLICATION),
    }


def replica_health_ports(replica: int) -> tuple[int, int]:
    """HEALTH_PORT of bridge replica ``replica`` and of model replica ``replica`` (1: 8010 and 8011, as before)."""
    if replica == 1:
        return SERVER_HEALTH_PORT, MODEL_HEALTH_PORT
    return REPLICA_HEALTH_PORT + 2 * replica, REPLICA_HEALTH_PORT + 2 * replica + 1


def _replicas(stack_env: Mapping[str, str], log_dir: Path, bridges: int, models: int) -> list[ServiceProcess]:
    """``bridges`` bridges (client ids bridge-1, bridge-2, ...: one shared subscription) and ``models``
    model services (one consumer group); replica 1 keeps the names and ports of a single one."""
    services = []
    for i in range(1, bridges + 1):
        name = "server" if i == 1 else f"server-{i}"
        env = server_env(stack_env, HEALTH_PORT=str(replica_health_ports(i)[0]), MQTT_CLIENT_ID=f"bridge-{i}")
        services.append(ServiceProcess(name, "Server", env, log_dir / f"{name}.log"))
    for i in range(1, models + 1):
        name = "model_analysis" if i == 1 else f"model_analysis-{i}"
        env = model_env(
            stack_env,
            HEALTH_PORT=str(replica_health_ports(i)[1]),
            MODEL_TRAINED_PATH=str(TRAINED_MODELS),
            KAFKA_CLIENT_ID=f"model-{i}",
        )
        services.append(ServiceProcess(name, "Models_analysis", env, log_dir / f"{name}.log"))
    return services


def run_pipeline(stack_env: Mapping[str, str], log_dir: Path, sensors: int, bridges: int = 1, models: int = 1) -> int:
    """Run ``bridges`` bridges, ``models`` model services, ``sensors`` sensors, the dashboard and the trainer
    until Ctrl+C or SIGTERM."""
    services = _replicas(stack_env, log_dir, bridges, models)
    replicas = len(services)
    services += [
        ServiceProcess(
            f"sensor-{i}",
            "Data_collection",
            sensor_env(stack_env, f"sensor-{i}", HEALTH_PORT=str(SENSOR_HEALTH_PORT + i)),
            log_dir / f"sensor-{i}.log",
        )
        for i in range(1, sensors + 1)
    ]
    # The page reads MongoDB and asks the bridge and the model service for their
    # health; it logs in with mongo-express's credentials, which `make run` loads from .env.
    dashboard_port = os.environ.get("DASHBOARD_PORT", "8080")
    login = {k: os.environ[k] for k in ("MONGO_EXPRESS_USERNAME", "MONGO_EXPRESS_PASSWORD") if k in os.environ}
    dashboard = ServiceProcess(
        "dashboard",
        "Dashboard",
        dashboard_env(
            {**login, **stack_env},
            DASHBOARD_PORT=dashboard_port,
            # This stack runs no Alertmanager; one of yours, if given (the page says "not configured" otherwise).
            DASHBOARD_ALERTMANAGER_URL=os.environ.get("DASHBOARD_ALERTMANAGER_URL", ""),
            DASHBOARD_SERVICES=",".join(
                f"{s.name}=http://127.0.0.1:{s.env['HEALTH_PORT']}" for s in services[:replicas]
            ),
        ),
        log_dir / "dashboard.log",
    )
    # Continuous training (Models_analysis.trainer): a challenger per sensor with enough history.
    trainer = ServiceProcess(
        "trainer",
        "Models_analysis.trainer",
        trainer_env(stack_env, HEALTH_PORT=str(TRAINER_HEALTH_PORT)),
        log_dir / "trainer.log",
    )
    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for service in [*services, dashboard, trainer]:
        service.start()
    scheme = "https" if "DASHBOARD_TLS_CERT_FILE" in stack_env else "http"
    logger.info("the live page: %s://127.0.0.1:%s/ (mongo-express's login)", scheme, dashboard_port)
    code = 0
    try:
        while not stopping:
            time.sleep(0.5)
            for service in [*services, dashboard, trainer]:
                if not service.alive:
                    logger.error(
                        "%s exited with %s; its log ends:\n%s", service.name, service.returncode, service.log_tail()
                    )
                    stopping, code = True, 1
    finally:
        # The page and the trainer first (they only read, and write model files atomically), the
        # sensors, then the bridge (it drains what they sent), then the model.
        for service in [dashboard, trainer, *services[replicas:], *services[:replicas]]:
            service.stop()
    return code
