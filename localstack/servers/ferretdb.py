"""FerretDB: the MongoDB wire protocol on SQLite, built by install.sh (``localstack/ferretdb/``).

Compose runs the real MongoDB instead; FerretDB has no configuration file, so
everything is on its command line (and the password in its environment).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import IO, Any

from localstack.config import StackError, component_versions
from localstack.process import base_env
from localstack.servers.base import Server

#: SQLite's statement journals (each insert's undo, should one document of a batch fail) kept in memory, not
#: spilled to a temporary file: measured (pprof, 1,000 readings/s) 11 % of FerretDB's CPU went to writing them.
#: It changes no durability: a statement journal is never read after a crash; the WAL and its fsync are unchanged.
SQLITE_QUERY = "_pragma=temp_store(memory)"


class FerretDB(Server):
    name = "ferretdb"
    ready_timeout = 30.0

    @property
    def port(self) -> int:
        return self.config.mongo_port

    @property
    def ports(self) -> dict[str, int]:
        return {"MONGO_PORT": self.config.mongo_port}

    @property
    def binary(self) -> Path:
        version = component_versions()["ferretdb"]
        return self.config.cache_dir / f"ferretdb-{version}" / "ferretdb"

    def prepare(self, log: IO[bytes]) -> None:
        if not self.binary.exists():
            raise StackError(f"ferretdb: {self.binary} is missing; run `bash localstack/install.sh`")
        (self.config.data_dir(self.name) / "sqlite").mkdir(parents=True, exist_ok=True)
        (self.config.data_dir(self.name) / "state").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        data = self.config.data_dir(self.name)
        # The folder must end with '/'. FerretDB adds its own pragmas (WAL, busy_timeout, auto_vacuum) to these.
        sqlite_url = "file:" + urllib.parse.quote(str(data / "sqlite")) + "/?" + SQLITE_QUERY
        return [
            str(self.binary),
            "--handler=sqlite",
            f"--sqlite-url={sqlite_url}",
            *self._listeners(),
            f"--state-dir={data / 'state'}",
            "--debug-addr=-",  # its HTTP debug server would clash between parallel stacks
            "--telemetry=disable",
            "--log-level=info",
            # Real SCRAM authentication. Without it FerretDB 1.x with SQLite accepts
            # any user and password (PLAIN is never checked).
            "--test-enable-new-auth",
            f"--setup-database={self.config.mongo_database}",
            f"--setup-username={self.config.mongo_app_username}",
        ]

    def _listeners(self) -> list[str]:
        """Plain TCP, or with TLS only a TLS listener (an empty --listen-addr turns plain TCP off).

        No --listen-tls-ca-file: with one, FerretDB would demand a client certificate.
        """
        address = f"127.0.0.1:{self.config.mongo_port}"
        if not self.config.tls:
            return [f"--listen-addr={address}"]
        return [
            "--listen-addr=",
            f"--listen-tls={address}",
            f"--listen-tls-cert-file={self.config.tls_file('server.crt')}",
            f"--listen-tls-key-file={self.config.tls_file('server.key')}",
        ]

    def client_options(self) -> dict[str, Any]:
        """pymongo's options for this server: TLS with the stack's CA, when TLS is on."""
        return {"tls": True, "tlsCAFile": str(self.config.tls_file("ca.crt"))} if self.config.tls else {}

    def env(self) -> dict[str, str]:
        # The password goes by environment (kong reads FERRETDB_*), not argv, so `ps` does not show it.
        return {**base_env(), "FERRETDB_SETUP_PASSWORD": self.config.mongo_app_password, "DO_NOT_TRACK": "1"}

    def probe(self) -> bool:
        from pymongo import MongoClient
        from pymongo.errors import OperationFailure, PyMongoError

        client: MongoClient[dict[str, Any]] = MongoClient(
            self.config.mongo_uri, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500, **self.client_options()
        )
        try:
            client[self.config.mongo_database].command("ping")
            return True
        except OperationFailure as exc:
            if exc.code == 18:  # AuthenticationFailed
                raise StackError(
                    "ferretdb rejected MONGO_APP_USERNAME/MONGO_APP_PASSWORD. FerretDB creates the user "
                    "only when the database is new, so the data in "
                    f"{self.config.data_dir(self.name)} was set up with other credentials: "
                    "use those again, or delete that directory (its data is lost)"
                ) from None
            return False
        except PyMongoError:
            return False
        finally:
            client.close()
