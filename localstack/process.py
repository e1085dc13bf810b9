"""Process handling: launch a server in its own session, record it, signal its group, wait until it is gone.

Nothing here knows about a particular server. A running server is described by
its *record*, a small JSON file (``<state_dir>/run/<server>.json``) with its pid,
process group, start time (so a reused pid is not mistaken for it), ports and the
log offset of its launch. Every function reads ``/proc`` afresh, so a stack can be
inspected and stopped from another process than the one that started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from localstack.config import StackError

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- /proc


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None if there is no such process."""
    return _stat_fields(f"/proc/{pid}/stat")


def _stat_fields(path: str) -> list[str] | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def _live(pid: int, fields: list[str]) -> bool:
    """Whether a process still runs: not a zombie, or a zombie leader whose other threads still exit.

    A multi-threaded process (the JVM) killed by SIGKILL can show its main thread
    as a zombie while other threads still hold its sockets and files.
    """
    if fields[0] not in ("Z", "X"):
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any((t := _stat_fields(f"/proc/{pid}/task/{tid}/stat")) and t[0] not in ("Z", "X") for tid in tasks)


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of its stat), or None."""
    fields = proc_stat(pid)
    return fields[19] if fields else None


def proc_alive(pid: int, started: str | None = None) -> bool:
    """Whether ``pid`` runs and, if given, started at ``started`` (so it is not a reused pid)."""
    fields = proc_stat(pid)
    if fields is None or not _live(pid, fields):
        return False
    return started is None or fields[19] == started


def group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = proc_stat(pid)
        if fields is not None and fields[2] == str(pgid) and _live(pid, fields):
            members.append(pid)
    return members


# --------------------------------------------------------------------------- the machine


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def find_executable(name: str, *extra: str) -> str | None:
    """``name`` on PATH, else the first of ``extra`` that exists (e.g. /usr/sbin for mosquitto)."""
    found = shutil.which(name)
    if found:
        return found
    return next((p for p in extra if os.access(p, os.X_OK)), None)


def base_env() -> dict[str, str]:
    """A minimal environment for a server: it must not inherit the caller's secrets."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "JAVA_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    return env


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ("" if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def log_contains(path: Path, offset: int, needle: str) -> bool:
    """Whether ``needle`` appears in the file after byte ``offset``."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return needle.encode() in handle.read()
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory/.lock``: serialises start and stop between processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- one server's process


def launch(command: list[str], *, cwd: Path, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session and process group, output appended to ``log``.

    Its own session: a terminal's Ctrl+C (or pytest's) does not reach the server,
    and the whole group can be signalled at once.
    """
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


def write_record(path: Path, process: subprocess.Popen[bytes], **extra: Any) -> dict[str, Any]:
    """Record a launched process (atomically) and return the record."""
    record = {
        "pid": process.pid,
        "pgid": process.pid,  # session leader: its pid is the group id
        "start_time": start_time(process.pid),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return record


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` if its process still runs; None otherwise (a stale record is removed)."""
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if proc_alive(record["pid"], record.get("start_time")):
        return record
    path.unlink(missing_ok=True)
    return None


def signal_group(record: dict[str, Any], sig: signal.Signals) -> bool:
    """Send ``sig`` to the recorded process group; False if it no longer exists."""
    try:
        os.killpg(record["pgid"], sig)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(
    pgid: int, deadline: float, *, escalate: bool, name: str, poll: Callable[[], object] = lambda: None
) -> None:
    """Wait until process group ``pgid`` is empty; SIGKILL it at ``deadline`` if ``escalate``.

    ``poll`` runs on every round (the caller reaps the processes it launched).
    Raises :class:`StackError` if the group survives SIGKILL.
    """
    while group_members(pgid):
        poll()
        if time.monotonic() > deadline:
            if not escalate:
                raise StackError(f"{name} (process group {pgid}) survived SIGKILL")
            logger.warning("%s did not stop in time; sending SIGKILL", name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            deadline, escalate = time.monotonic() + 30.0, False
        time.sleep(0.1)
    poll()
    # A server launched by another (finished) process is reaped by init, a moment
    # later: wait briefly so `pgrep` right after a stop shows no zombie.
    settle = time.monotonic() + 2.0
    while proc_stat(pgid) is not None and time.monotonic() < settle:
        time.sleep(0.05)
