"""A throwaway certificate authority and one server certificate for every server, made with openssl.

``python -m localstack certs DIR`` writes them; the local stack reads them from
``STACK_TLS_DIR`` and Compose from ``./tls`` (docker-compose.tls.yml). One
certificate serves every server: its names are the Compose service names (the Kafka
cluster's three brokers too), ``localhost`` and 127.0.0.1, so each client checks the host name it connects to. Files:

    ca.crt, ca.key        the CA (give ca.crt to the clients: *_TLS_CA_FILE)
    server.crt, server.key the servers' certificate and key (PEM; Mosquitto, FerretDB, mongo-express, the page)
    server.pem            the two in one file (mongod's --tlsCertificateKeyFile)
    kafka.p12             the same as a PKCS#12 keystore for Kafka, with its password in kafka.password

For testing and trying things out: a real deployment uses certificates from its own CA.
The keys are readable by every user (0644) because the containers run as users
of their own; keep the folder private to you (its parent directory).
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from localstack.config import StackError

#: The names in the server certificate: every Compose service a client connects to, and this machine.
SERVER_NAMES = ("localhost", "mosquitto", "kafka", "kafka-2", "kafka-3", "mongo", "mongo-express", "dashboard")
SERVER_IPS = ("127.0.0.1",)
#: The files a TLS folder must hold.
TLS_FILES = ("ca.crt", "server.crt", "server.key", "server.pem", "kafka.p12", "kafka.password")


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, check=False, timeout=120)
    if result.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {result.stderr.decode(errors='replace').strip()[-500:]}")


def make_certificates(directory: Path, *, days: int = 825, names: tuple[str, ...] = SERVER_NAMES) -> Path:
    """Write a new CA and a server certificate signed by it into ``directory``; returns the CA's certificate.

    Existing files there are replaced.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    alt = ",".join([*(f"DNS:{n}" for n in names), *(f"IP:{ip}" for ip in SERVER_IPS)])
    ext.write_text(
        f"subjectAltName={alt}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        # clientAuth too: the Kafka broker shows the same certificate to its controller.
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", "/CN=sensor-pipeline test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(ca),
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=sensor-pipeline", "-keyout", str(key), "-out", str(csr)
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", str(days), "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    (directory / "server.pem").write_text(cert.read_text() + key.read_text())
    password = secrets.token_urlsafe(18)
    (directory / "kafka.password").write_text(password)
    _openssl(
        "pkcs12", "-export", "-inkey", str(key), "-in", str(cert), "-certfile", str(ca), "-name", "kafka",
        "-out", str(directory / "kafka.p12"), "-passout", f"pass:{password}",
    )  # fmt: skip
    for leftover in (csr, ext, directory / "ca.srl"):
        leftover.unlink(missing_ok=True)
    directory.chmod(0o755)
    for name in TLS_FILES:
        (directory / name).chmod(0o644)
    ca_key.chmod(0o600)  # only needed to sign more certificates
    return ca


def missing_files(directory: Path) -> list[str]:
    """The files of :data:`TLS_FILES` that ``directory`` lacks."""
    return [name for name in TLS_FILES if not (directory / name).is_file()]
