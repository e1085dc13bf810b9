"""A stop signal that arrives while a service is already exiting by itself does not kill it."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, os, signal, sys, time
def late_stop():
    # Runs after the service's own exit functions (registered later, run first): the stop signal
    # a test harness sends just as the service finishes on its own.
    print("ignored" if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN else "handled", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
atexit.register(late_stop)
from pipeline import lifecycle
lifecycle.stop_event()
sys.exit(3)
"""


def test_a_sigterm_during_exit_leaves_the_services_own_exit_code() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "ignored", done.stderr
    assert done.returncode == 3, "exited with its own code, not killed by the signal (-15)"


def test_a_sigterm_while_running_still_stops_it_cleanly() -> None:
    script = (
        "import os, signal\nfrom pipeline import lifecycle\nstop = lifecycle.stop_event()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\nassert stop.wait(5)\nprint('drained', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "drained"), done.stderr
