"""One way to make a MongoDB client for the pipeline: the URI, and TLS when MONGO_TLS_CA_FILE is set."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient

from pipeline.settings import MongoSettings


def tls_options(settings: MongoSettings) -> dict[str, Any]:
    """pymongo's TLS options for these settings: none without MONGO_TLS_CA_FILE.

    With it, the client checks the server's certificate against that CA and the
    host name in MONGO_URI, and never falls back to plain text.
    """
    if settings.MONGO_TLS_CA_FILE is None:
        return {}
    return {"tls": True, "tlsCAFile": str(settings.MONGO_TLS_CA_FILE)}


def mongo_client(settings: MongoSettings, **options: Any) -> MongoClient[dict[str, Any]]:
    """A client of MONGO_URI with ``options`` (timeouts, appname, tz_aware) and the TLS of :func:`tls_options`."""
    return MongoClient(settings.MONGO_URI.get_secret_value(), **options, **tls_options(settings))
