"""A network namespace for one service, and a silent network partition between it and one server.

The local stack's servers listen on 127.0.0.1 and Kafka advertises
``127.0.0.1:<port>``, so a service moved into a namespace of its own must still
find every server at 127.0.0.1 and the same ports. :class:`Namespace` does that
with veth pairs and small TCP forwarders (this module run as
``python -m tests.netns forward ...``, so nothing beyond iproute2 is needed):

    service --127.0.0.1:P--> forwarder (in the namespace) --veth--> forwarder (host) --127.0.0.1:P--> server

The ports in ``ports`` go over one veth pair straight to the host; those in
``cut_ports`` go through a third namespace that routes between two more pairs.
:meth:`Namespace.cut` makes that router drop every packet, both ways (a
``pfifo`` queue of length 0 on each of its interfaces: this kernel has no tc
classifiers, netem or iptables), without closing a socket or sending a reset:
to the service it is a switch that died. :meth:`Namespace.heal` removes the
queues. ``reverse_ports`` are the service's own ports (its /readyz), forwarded
from the host's 127.0.0.1 into the namespace, so callers probe them as usual.

Needs root (``ip netns``, ``ip link``, ``tc``). Names start with ``sp-`` and
addresses are in 10.233.0.0/24; :meth:`Namespace.close` removes everything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from localstack.services import _PREFIXES, ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
SUBNET = ipaddress.ip_network("10.233.0.0/24")


def available() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, ip link, tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    return f"needs {', '.join(missing)} (iproute2)" if missing else None


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def _used_addresses() -> set[str]:
    """Addresses of SUBNET the host has, or routes to (a namespace left by a killed run keeps both)."""
    out = "".join(
        subprocess.run(["ip", "-o", "-4", *what], capture_output=True, text=True, check=True).stdout
        for what in (("addr", "show"), ("route", "show"))
    )
    return {word.split("/")[0] for line in out.splitlines() for word in line.split() if word.startswith("10.233.")}


def _mac(device: str, namespace: str | None = None) -> str:
    where = ("-n", namespace) if namespace else ()
    out = subprocess.run(
        ["ip", *where, "-j", "link", "show", "dev", device], capture_output=True, text=True, check=True
    )
    return str(json.loads(out.stdout)[0]["address"])


@dataclass
class Link:
    """One veth pair between two namespaces (None: the host's), with a /30 of :data:`SUBNET`."""

    a_ns: str | None
    a_if: str
    a_ip: str
    b_ns: str | None
    b_if: str
    b_ip: str

    def create(self) -> None:
        _run("ip", "link", "add", self.a_if, "type", "veth", "peer", "name", self.b_if)
        for ns, device, ip in ((self.a_ns, self.a_if, self.a_ip), (self.b_ns, self.b_if, self.b_ip)):
            if ns:
                _run("ip", "link", "set", device, "netns", ns)
            _run("ip", *_in(ns), "addr", "add", f"{ip}/30", "dev", device)
            _run("ip", *_in(ns), "link", "set", device, "up")
        # Each end knows the other's MAC address for good: no ARP is needed while the path is cut,
        # so no end learns "no route to host" from a failed lookup.
        for ns, device, peer_ip, peer_ns, peer_device in (
            (self.a_ns, self.a_if, self.b_ip, self.b_ns, self.b_if),
            (self.b_ns, self.b_if, self.a_ip, self.a_ns, self.a_if),
        ):
            mac = _mac(peer_device, peer_ns)
            _run("ip", *_in(ns), "neigh", "replace", peer_ip, "lladdr", mac, "dev", device, "nud", "permanent")


def _in(ns: str | None) -> tuple[str, ...]:
    return ("-n", ns) if ns else ()


@dataclass
class Namespace:
    """A network namespace whose 127.0.0.1 reaches the host's ``ports`` directly and ``cut_ports`` through a router.

    The packets to and from ``cut_ports`` are forwarded by a namespace of their
    own (the router, ``<name>r``), and :meth:`cut` drops them there: the ends
    see packets lost on the way, as behind a failed switch. Dropped on an end's
    own interface instead, the kernel would give up on the connection after
    about 8 s ("Connection timed out"), which no real partition does.
    """

    ports: list[int]
    cut_ports: list[int]
    reverse_ports: list[int] = field(default_factory=list)
    log_dir: Path = field(default_factory=lambda: ROOT / "artifacts" / "logs")
    name: str = field(default_factory=lambda: f"sp-{secrets.token_hex(3)}")
    links: list[Link] = field(default_factory=list)
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    is_cut: bool = False

    @property
    def router(self) -> str:
        return f"{self.name}r"

    def open(self) -> Namespace:
        """Make the namespaces, the links and the forwarders; undone by :meth:`close` even if this fails."""
        for ns in (self.name, self.router):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        used = _used_addresses()
        blocks = [b for b in SUBNET.subnets(new_prefix=30) if not {str(h) for h in b.hosts()} & used]
        if len(blocks) < 3:
            raise RuntimeError(f"no free /30 left in {SUBNET}: remove stale sp- links (ip -o addr | grep 10.233.)")
        (h0, n0), (r1, n1), (h1, r2) = ([str(h) for h in b.hosts()] for b in secrets.SystemRandom().sample(blocks, 3))
        name, router = self.name, self.router
        self.links = [
            Link(None, f"{name}-h0", h0, name, f"{name}-n0", n0),  # direct
            Link(router, f"{name}-r1", r1, name, f"{name}-n1", n1),  # namespace <-> router
            Link(router, f"{name}-r2", r2, None, f"{name}-h1", h1),  # router <-> host
        ]
        for link in self.links:
            link.create()
        _run("ip", "netns", "exec", router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        _run("ip", "-n", name, "route", "add", f"{h1}/32", "via", r1)
        _run("ip", "route", "add", f"{n1}/32", "via", r2, "dev", f"{name}-h1")
        # Host side: each path's address -> the server on 127.0.0.1; and the service's own ports inward.
        self._forwarder(
            "host",
            [f"{h0}:{p}=127.0.0.1:{p}" for p in self.ports]
            + [f"{h1}:{p}=127.0.0.1:{p}" for p in self.cut_ports]
            + [f"127.0.0.1:{p}={n0}:{p}" for p in self.reverse_ports],
        )
        # Namespace side: 127.0.0.1 -> the host side, directly or through the router.
        self._forwarder(
            "netns",
            [f"127.0.0.1:{p}={h0}:{p}" for p in self.ports] + [f"127.0.0.1:{p}={h1}:{p}" for p in self.cut_ports],
            prefix=("ip", "netns", "exec", name),
        )
        return self

    def _forwarder(self, side: str, routes: list[str], prefix: Iterable[str] = ()) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ready = self.log_dir / f"forwarder-{self.name}-{side}.ready"
        ready.unlink(missing_ok=True)
        with (self.log_dir / f"forwarder-{side}.log").open("ab") as log:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "tests.netns", "forward", str(ready), *routes],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.forwarders.append(process)
        for _ in range(200):
            if ready.exists() or process.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"], check=False)
        ready.unlink(missing_ok=True)
        if process.poll() is not None:
            raise RuntimeError(f"the {side} forwarder exited with {process.returncode}: see {log.name}")

    def _queues(self, command: str) -> None:
        args = ("root", "pfifo", "limit", "0") if command == "add" else ("root",)
        for device in (f"{self.name}-r1", f"{self.name}-r2"):
            _run("tc", "-n", self.router, "qdisc", command, "dev", device, *args)

    def cut(self) -> None:
        """Drop every packet between the namespace and ``cut_ports``, both ways, silently (in the router)."""
        self._queues("add")
        self.is_cut = True

    def heal(self) -> None:
        """Let the packets through again."""
        self._queues("del")
        self.is_cut = False

    def close(self) -> None:
        """Stop the forwarders, remove the links and the namespace (whatever exists of them)."""
        for process in self.forwarders:
            if process.poll() is None:
                process.kill()
                process.wait()
        for link in self.links:
            subprocess.run(["ip", *_in(link.a_ns), "link", "del", link.a_if], capture_output=True, check=False)
        for ns in (self.name, self.router):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@dataclass
class NamespacedService(ServiceProcess):
    """A service run inside a namespace (``ip netns exec`` execs it, so the pid is the service's own)."""

    namespace: str = ""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, sys.executable, "-m", self.module],
                cwd=ROOT,
                env={**{k: v for k, v in os.environ.items() if not k.startswith(_PREFIXES)}, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(listen: str, target: str) -> asyncio.Server:
    listen_host, listen_port = listen.rsplit(":", 1)
    target_host, target_port = target.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    return await asyncio.start_server(handle, listen_host, int(listen_port), reuse_address=True)


async def _forward(ready: Path, routes: list[str]) -> None:
    servers = [await _serve(*route.split("=", 1)) for route in routes]
    ready.touch()
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    # python -m tests.netns forward READY_FILE LISTEN_HOST:PORT=TARGET_HOST:PORT ...
    if len(sys.argv) < 3 or sys.argv[1] != "forward":
        sys.exit("usage: python -m tests.netns forward READY_FILE LISTEN_HOST:PORT=TARGET_HOST:PORT ...")
    asyncio.run(_forward(Path(sys.argv[2]), sys.argv[3:]))
