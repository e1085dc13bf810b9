"""bench.machine counts only its own stack: a process is counted when it descends from the benchmark."""

from __future__ import annotations

import subprocess
import sys
import time

from hypothesis import given
from hypothesis import strategies as st

from bench import machine


def test_descent_follows_parents_and_stops_at_a_cycle_or_an_unknown_pid() -> None:
    found = {10: (1, "", ""), 11: (10, "", ""), 12: (11, "", ""), 20: (1, "", ""), 30: (31, "", ""), 31: (30, "", "")}
    assert machine._descends_from(12, 10, found) and machine._descends_from(11, 10, found)
    assert not machine._descends_from(20, 10, found), "another stack's process, under init"
    assert not machine._descends_from(10, 10, found), "not its own descendant"
    assert not machine._descends_from(30, 10, found), "a cycle ends"
    assert not machine._descends_from(99, 10, found), "gone"


@given(st.dictionaries(st.integers(2, 50), st.integers(0, 50), max_size=40), st.integers(2, 50), st.integers(0, 50))
def test_descent_always_ends_and_is_true_only_with_root_on_the_parent_chain(
    parents: dict[int, int], pid: int, root: int
) -> None:
    found = {p: (parent, "", "") for p, parent in parents.items()}
    chain, at = [], pid
    while at in found and at not in chain:
        chain.append(at)
        at = found[at][0]
        if at == root:
            break
    expected = at == root and bool(chain)
    assert machine._descends_from(pid, root, found) is expected


def test_a_child_is_counted() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1: pass", "-m Server"]
    )
    try:
        time.sleep(0.6)
        mine = machine._cpu_seconds_by_group()
        assert mine.get("bridge", 0.0) > 0.1, mine
    finally:
        child.wait()
