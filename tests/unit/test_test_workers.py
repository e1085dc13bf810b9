"""What the README says of how `make test` runs: TEST_WORKERS workers, each with stacks on ports of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from localstack.cluster import kafka_nodes
from localstack.config import REPO_ROOT
from localstack.testing import WORKER_PORT_STRIDE, stack_ports, worker_port_base
from tests.helpers import CLUSTER_STACK_OFFSET, TLS_CLUSTER_STACK_OFFSET, TLS_STACK_OFFSET


def ports_of_worker(base: int, worker: str | None) -> set[int]:
    """Every port the stacks of one worker listen on: its own stack, the TLS one and the two three-broker clusters."""
    own = worker_port_base(base, worker)
    bases = (own, own + TLS_STACK_OFFSET, own + CLUSTER_STACK_OFFSET, own + TLS_CLUSTER_STACK_OFFSET)
    ports: set[int] = set()
    for stack_base in bases:
        stack = stack_ports(stack_base)
        if len({int(p) for p in stack.values()} & ports):
            raise AssertionError(f"the stack at {stack_base} shares a port with another of the worker's")
        ports |= {int(p) for p in stack.values()}
    for stack_base in (own + CLUSTER_STACK_OFFSET, own + TLS_CLUSTER_STACK_OFFSET):
        first, controller = (int(stack_ports(stack_base)[k]) for k in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT"))
        for node in kafka_nodes(3, first, controller):
            added = {node.port, node.controller_port} - {first, controller}
            if added & ports:
                raise AssertionError(f"kafka node {node.node_id} of the cluster at {stack_base} shares a port")
            ports |= added
    return ports


def test_outside_xdist_and_on_the_first_worker_the_base_is_the_one_given() -> None:
    assert worker_port_base(21000, None) == worker_port_base(21000, "gw0") == 21000
    assert worker_port_base(21000, "gw1") == 21000 + WORKER_PORT_STRIDE == 23000
    assert worker_port_base(30000, "gw3") == 36000


@given(st.integers(1024, 50_000))
@example(21000)
def test_the_stacks_of_different_workers_never_share_a_port(base: int) -> None:
    workers = [ports_of_worker(base, f"gw{n}") for n in range(4)]
    for n, ports in enumerate(workers):
        for other in workers[n + 1 :]:
            assert not ports & other
        assert max(ports) < 65536


@pytest.mark.parametrize("workers", ["1", "3"])
def test_make_test_runs_the_suite_on_test_workers_workers_grouped_by_module_where_marked(workers: str) -> None:
    commands = subprocess.run(
        ["make", "-n", "test", f"TEST_WORKERS={workers}"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert f"-m pytest -n {workers} --dist loadgroup" in commands


def test_loadgroup_really_keeps_a_group_on_one_worker(tmp_path: Path) -> None:
    """The pinned pytest and pytest-xdist group as README says: pytest 9.2 made xdist 3.8 spread a group silently."""
    grouped = "import os, pytest\npytestmark = pytest.mark.xdist_group('stack')\n"
    for module in ("test_one.py", "test_two.py"):
        record = f"open({str(tmp_path / 'ran')!r}, 'a').write(os.environ['PYTEST_XDIST_WORKER'] + ' grouped\\n')"
        tests = "".join(f"def test_{n}():\n    {record}\n" for n in range(6))
        (tmp_path / module).write_text(grouped + tests)
    (tmp_path / "test_free.py").write_text("import os\n" + "".join(f"def test_{n}():\n    pass\n" for n in range(12)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    workers = (tmp_path / "ran").read_text().split()
    assert len(workers) == 24, "every grouped test ran"
    assert len(set(workers[0::2])) == 1, f"the group was spread over workers: {sorted(set(workers[0::2]))}"
