"""The dashboard's settings (environment variables of the same names)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from pipeline.settings import CommonSettings, HttpsSettings, MongoSettings

_SERVICE = re.compile(r"^[A-Za-z0-9_-]{1,64}=https?://[^\s,]+$")
#: A base URL: scheme, host, optional port and path; no login, query or fragment.
_BASE_URL = re.compile(r"^https?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?(/[^\s?#@]*)?$")


class Settings(CommonSettings, MongoSettings, HttpsSettings):
    """What the dashboard reads from its environment.

    HEALTH_PORT (from CommonSettings) is not used: the dashboard answers
    /healthz, /readyz and /metrics on DASHBOARD_PORT, beside the page.
    """

    #: Port of the page, its JSON API, and /healthz, /readyz, /metrics.
    DASHBOARD_PORT: int = Field(8080, ge=1, le=65535)
    #: HTTP basic auth; Compose and the local stack give it mongo-express's login.
    DASHBOARD_USERNAME: str = Field(min_length=1)
    DASHBOARD_PASSWORD: SecretStr = Field(min_length=1)
    #: The services whose health the page shows: comma-separated ``name=url``,
    #: the url being the base of the service's /readyz and /metrics, e.g.
    #: ``server=http://server:8000,model_analysis=http://model_analysis:8000``.
    DASHBOARD_SERVICES: str = ""
    #: Alertmanager's base URL (``http://alertmanager:9093``): the page shows the
    #: alerts firing there. Empty: no alerting, and the page says so.
    DASHBOARD_ALERTMANAGER_URL: str = ""

    @field_validator("DASHBOARD_SERVICES")
    @classmethod
    def _name_equals_url(cls, value: str) -> str:
        for entry in _entries(value):
            if not _SERVICE.match(entry):
                raise ValueError(f"{entry[:80]!r} is not name=http(s)://host:port")
        return value

    @field_validator("DASHBOARD_ALERTMANAGER_URL")
    @classmethod
    def _base_url(cls, value: str) -> str:
        value = value.strip()
        if "@" in value:
            # Not quoted back: what precedes the @ may be a password.
            raise ValueError("holds a login (user@host): give the URL Alertmanager answers without one")
        if value and not _BASE_URL.match(value):
            raise ValueError(f"{value[:80]!r} is not http(s)://host:port (no login, query or fragment)")
        return value.rstrip("/")

    @property
    def services(self) -> dict[str, str]:
        """DASHBOARD_SERVICES as {name: base url without a trailing slash}, in the order given."""
        pairs = (entry.split("=", 1) for entry in _entries(self.DASHBOARD_SERVICES))
        return {name: url.rstrip("/") for name, url in pairs}


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]
