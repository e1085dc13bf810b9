"""One isolated pipeline inside the benchmarks' stack (:class:`localstack.namespace.Namespace`, the tests' too).

:meth:`bench.common.Bench.namespace` makes one; its services are stopped,
sessions and all, when the block of :meth:`Namespace.running` ends, so the next
benchmark on the same stack sees none of its readings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from localstack import namespace
from localstack.services import ServiceProcess

if TYPE_CHECKING:
    from bench.common import Bench


class Namespace(namespace.Namespace):
    """A namespace of the benchmarks' stack, its logs under the benchmark's log folder."""

    def __init__(self, bench: Bench, name: str) -> None:
        super().__init__(bench.env, name, bench.log_dir / name)
        self.bench = bench

    def start(self, name: str, module: str, env: dict[str, str]) -> ServiceProcess:
        """The service with the benchmark's ``--service-env`` settings over ``env``."""
        return super().start(name, module, {**env, **self.bench.service_env})

    @contextlib.contextmanager
    def running(self) -> Iterator[Namespace]:
        """Stop everything this namespace started when the block ends, however it ends."""
        try:
            yield self
        finally:
            self.stop_all()
            self.processes.clear()
