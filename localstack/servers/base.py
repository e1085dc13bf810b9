"""What the stack needs to know about a server: how to configure, run and probe it."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from localstack.config import StackConfig
from localstack.process import base_env


class Server:
    """One server. Each module of :mod:`localstack.servers` fills in the details for one."""

    name: str = ""
    #: Seconds from launch until it must answer.
    ready_timeout: float = 60.0
    #: Servers that must answer before this one is launched.
    after: tuple[str, ...] = ()
    #: A log line that must appear before the probe is tried (None: probe at once).
    started_marker: str | None = None

    def __init__(self, config: StackConfig) -> None:
        self.config = config

    @property
    def port(self) -> int:
        """The main port (the one ``status`` shows)."""
        raise NotImplementedError

    @property
    def ports(self) -> dict[str, int]:
        """Every port it listens on, by environment variable name."""
        raise NotImplementedError

    def prepare(self, log: IO[bytes]) -> None:
        """Render configuration and initialise data before a launch; ``log`` is its open log file.

        Raises :class:`localstack.config.StackError` when it cannot run (e.g. not installed).
        """

    def command(self) -> list[str]:
        """The command line (no secrets: it is visible in ``ps``)."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Environment of the process (secrets go here rather than on the command line)."""
        return base_env()

    @property
    def cwd(self) -> Path:
        """Working directory of the process."""
        return self.config.data_dir(self.name)

    def probe(self) -> bool:
        """One readiness check: True when it really answers; StackError when it never will."""
        raise NotImplementedError
