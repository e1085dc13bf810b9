"""TLS checks shared by every service: certificate files that load, servers whose certificates verify.

A service with TLS switched on (a ``*_TLS_CA_FILE`` set) checks, once at start
(:func:`pipeline.settings.load`), that each server it will talk to shows a
certificate that CA signed for the host name it connects to. If one does not,
the service stops at once with the variable's name and the reason
(``certificate verify failed: ...``) instead of retrying a connection that can
never succeed. A server that cannot be reached yet is no verdict: the service
starts and its clients retry, as without TLS.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

#: How long the start-up check waits for one server's TCP connection and handshake.
CHECK_TIMEOUT_S = 5.0


def ca_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a CA file (no PEM certificate in it), or None."""
    try:
        context = ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as error:
        return f"holds no PEM certificate that loads ({_reason(error)})"
    if not context.get_ca_certs():
        return "holds no CA certificate"
    return None


def key_pair_problem(cert: Path, key: Path) -> str | None:
    """Why ``cert`` and ``key`` are not a certificate and its private key (PEM), or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError, ValueError) as error:
        return f"the certificate and key do not load as a pair ({_reason(error)})"
    return None


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return str(error) or type(error).__name__


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``host`` or ``[v6]:port`` as (host, port)."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else default_port
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host:
        return host, int(port)
    return address, default_port


def mongo_hosts(uri: str) -> list[tuple[str, int]]:
    """The hosts of a ``mongodb://`` URI (none for ``mongodb+srv://``, whose hosts come from DNS)."""
    if not uri.startswith("mongodb://"):
        return []
    rest = uri.removeprefix("mongodb://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = netloc.rpartition("@")[2]
    return [split_host_port(h, 27017) for h in hosts.split(",") if h.strip()]


def verify_problem(
    variable: str, ca_file: Path, host: str, port: int, timeout_s: float = CHECK_TIMEOUT_S
) -> str | None:
    """Why the server at host:port fails TLS verification against ``ca_file``, naming ``variable``; None if it
    passes or cannot be reached now."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as error:
        return (
            f"{variable}: the certificate of {host}:{port} does not verify against {ca_file}: "
            f"certificate verify failed: {error.verify_message}"
        )
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return None  # a handshake cut short (a server still starting, or one that hung up): the clients retry
    except ssl.SSLError as error:
        # Something came back that is no TLS handshake: most often a server answering in the clear.
        return f"{variable}: the TLS handshake with {host}:{port} failed ({error.reason}): does it speak TLS?"
    except OSError:
        return None  # unreachable now: the clients retry
