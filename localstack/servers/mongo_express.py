"""mongo-express 1.0.0 (npm, ``localstack/mongo-express/``), configured by ``ME_CONFIG_*`` variables.

As Compose's ``mongo-express`` service: the application user, admin views off,
basic auth. The database URL goes without credentials (``preload.js`` passes
them as driver options), because mongo-express prints its whole URL when it
cannot connect.
"""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from localstack.config import PACKAGE_DIR, StackError, component_versions
from localstack.process import base_env, find_executable
from localstack.servers.base import Server


class MongoExpress(Server):
    name = "mongo-express"
    ready_timeout = 60.0
    # 1.0.0 exits if it cannot reach the database at startup.
    after = ("ferretdb",)

    @property
    def port(self) -> int:
        return self.config.mongo_express_port

    @property
    def ports(self) -> dict[str, int]:
        return {"MONGO_EXPRESS_PORT": self.config.mongo_express_port}

    @property
    def app_dir(self) -> Path:
        version = component_versions()["mongo-express"]
        return self.config.cache_dir / f"mongo-express-{version}" / "node_modules" / "mongo-express"

    def prepare(self, log: IO[bytes]) -> None:
        if not (self.app_dir / "app.js").exists():
            raise StackError(f"mongo-express: {self.app_dir} is missing; run `bash localstack/install.sh`")
        if find_executable("node", "/usr/bin/nodejs") is None:
            raise StackError("mongo-express: node is not installed; run `bash localstack/install.sh`")
        self.config.data_dir(self.name).mkdir(parents=True, exist_ok=True)

    @property
    def cwd(self) -> Path:
        return self.app_dir

    def command(self) -> list[str]:
        node = find_executable("node", "/usr/bin/nodejs") or "node"
        return [node, "-r", str(PACKAGE_DIR / "mongo-express" / "preload.js"), str(self.app_dir / "app.js")]

    def env(self) -> dict[str, str]:
        parts = urllib.parse.urlsplit(self.config.mongo_uri)
        netloc = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        return {
            **base_env(),
            "NODE_ENV": "production",
            "ME_CONFIG_MONGODB_URL": url,
            "LOCALSTACK_MONGO_USERNAME": urllib.parse.unquote(parts.username or ""),
            "LOCALSTACK_MONGO_PASSWORD": urllib.parse.unquote(parts.password or ""),
            # The app user is no admin: show only the URL's database (no listDatabases, no serverStatus).
            "ME_CONFIG_MONGODB_ENABLE_ADMIN": "false",
            "ME_CONFIG_BASICAUTH_USERNAME": self.config.mongo_express_username,
            "ME_CONFIG_BASICAUTH_PASSWORD": self.config.mongo_express_password,
            "ME_CONFIG_SITE_COOKIESECRET": self.config.mongo_express_cookie_secret,
            "ME_CONFIG_SITE_SESSIONSECRET": self.config.mongo_express_session_secret,
            "VCAP_APP_HOST": "127.0.0.1",
            "PORT": str(self.config.mongo_express_port),
            **self._tls_env(),
        }

    def _tls_env(self) -> dict[str, str]:
        """With TLS: the database over TLS (checked against the CA) and the pages over HTTPS, as in Compose."""
        if not self.config.tls:
            return {}
        database = {
            # Driver options, not URL parameters: mongo-express passes ssl=false unless told, and options win.
            "ME_CONFIG_MONGODB_SSL": "true",
            "ME_CONFIG_MONGODB_SSLVALIDATE": "true",
            "ME_CONFIG_MONGODB_CA_FILE": str(self.config.tls_file("ca.crt")),
        }
        return {
            **(database if self.config.uses_ferretdb else {}),  # an external MONGO_URI carries its own TLS options
            "ME_CONFIG_SITE_SSL_ENABLED": "true",
            "ME_CONFIG_SITE_SSL_CRT_PATH": str(self.config.tls_file("server.crt")),
            "ME_CONFIG_SITE_SSL_KEY_PATH": str(self.config.tls_file("server.key")),
        }

    @property
    def url(self) -> str:
        """Its address: https with TLS."""
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://127.0.0.1:{self.config.mongo_express_port}/"

    def probe(self) -> bool:
        request = urllib.request.Request(self.url)
        token = f"{self.config.mongo_express_username}:{self.config.mongo_express_password}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
        try:
            context = (
                ssl.create_default_context(cafile=str(self.config.tls_file("ca.crt"))) if self.config.tls else None
            )
            with urllib.request.urlopen(request, timeout=3, context=context) as response:
                return response.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise StackError(
                    f"mongo-express on port {self.port} rejects MONGO_EXPRESS_USERNAME/MONGO_EXPRESS_PASSWORD"
                ) from None
            return False
        except (urllib.error.URLError, OSError):
            return False
