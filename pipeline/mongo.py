"""One way to make a MongoDB client for the pipeline: the URI, the driver's durability defaults, and TLS.

Everything the driver is told comes from MONGO_URI, the standard way every
MongoDB tool reads it: the hosts, ``replicaSet``, ``w``, ``retryWrites``,
``readPreference`` and the rest. Where the URI says nothing, the pipeline asks
for :data:`DRIVER_DEFAULTS`: writes acknowledged by a majority of a replica
set's members (so an election cannot roll back a reading the bridge has
acknowledged to the broker), retried once by the driver across a primary's
step-down, and reads retried once the same way.

On a server that does not replicate (a standalone mongod, or FerretDB, which
cannot replicate at all) these defaults cost nothing: a majority of one is the
server itself, FerretDB accepts and ignores ``writeConcern``, and the driver
only retries writes on a replica set or a sharded cluster.

A URI the driver would refuse, or one that asks for unacknowledged writes
(``w=0``: the bridge would acknowledge readings MongoDB may never have stored),
stops the service at start with a message naming MONGO_URI, as a bad setting
does (``pipeline.settings.load``); the message never holds the password.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from pymongo import MongoClient, uri_parser
from pymongo.errors import ConfigurationError, InvalidURI

from pipeline.settings import MongoSettings

#: What the pipeline's clients ask for unless MONGO_URI sets the option itself.
DRIVER_DEFAULTS: Mapping[str, Any] = {"w": "majority", "retryWrites": True, "retryReads": True}


class MongoUriError(ValueError):
    """MONGO_URI is not one the pipeline can use; the message names it and never holds the password."""


def _redact(message: str, uri: str) -> str:
    """``message`` without the URI's password, in either spelling (as written, or decoded)."""
    try:
        userinfo = urlsplit(uri).netloc.rpartition("@")[0]
    except ValueError:
        userinfo = ""
    password = userinfo.partition(":")[2]
    for secret in sorted({userinfo, unquote(userinfo), password, unquote(password)}, key=len, reverse=True):
        if secret:
            message = message.replace(secret, "***")
    return message


def uri_options(uri: str) -> dict[str, Any]:
    """The options MONGO_URI sets itself (camelCase, as pymongo names them), after the driver's validation.

    Raises :class:`MongoUriError` naming MONGO_URI when the driver would refuse
    the URI, or when it asks for what the pipeline must not do: ``w=0``, an
    empty ``w`` or an empty ``replicaSet``. A ``mongodb+srv://`` URI is checked
    without a DNS lookup (its hosts come from DNS when the client connects).
    """
    checked = "mongodb://" + uri.removeprefix("mongodb+srv://") if uri.startswith("mongodb+srv://") else uri
    try:
        parsed = uri_parser.parse_uri(checked, warn=False)
    except (InvalidURI, ConfigurationError, ValueError, TypeError) as error:
        raise MongoUriError(f"MONGO_URI: {_redact(str(error), uri)}") from None
    options = dict(parsed["options"])
    write = options.get("w")
    if write == 0:
        raise MongoUriError(
            "MONGO_URI: w=0 asks for unacknowledged writes: the bridge would acknowledge readings "
            "MongoDB may never have stored; use w=majority (the default) or w=1"
        )
    if write == "":
        raise MongoUriError("MONGO_URI: w is empty; leave it out (w=majority) or give majority or a number of members")
    if options.get("replicaSet") == "":
        raise MongoUriError("MONGO_URI: replicaSet is empty; give the replica set's name (rs0 under Compose)")
    return options


def driver_options(uri: str) -> dict[str, Any]:
    """:data:`DRIVER_DEFAULTS` the URI does not set itself: what :func:`mongo_client` adds to it."""
    given = {name.lower() for name in uri_options(uri)}
    return {name: value for name, value in DRIVER_DEFAULTS.items() if name.lower() not in given}


def tls_options(settings: MongoSettings) -> dict[str, Any]:
    """pymongo's TLS options for these settings: none without MONGO_TLS_CA_FILE.

    With it, the client checks the server's certificate against that CA and the
    host name in MONGO_URI, and never falls back to plain text.
    """
    if settings.MONGO_TLS_CA_FILE is None:
        return {}
    return {"tls": True, "tlsCAFile": str(settings.MONGO_TLS_CA_FILE)}


def mongo_client(settings: MongoSettings, **options: Any) -> MongoClient[dict[str, Any]]:
    """A client of MONGO_URI with :func:`driver_options`, ``options`` (timeouts, appname, tz_aware) and TLS.

    A MONGO_URI :func:`uri_options` refuses stops the process (exit code 2) with
    a message naming it, as ``pipeline.settings.load`` does for a bad setting.
    """
    uri = settings.MONGO_URI.get_secret_value()
    try:
        defaults = driver_options(uri)
    except MongoUriError as error:
        sys.stderr.write(f"invalid settings, the service cannot start:\n{error}\n")
        raise SystemExit(2) from None
    return MongoClient(uri, **{**defaults, **options, **tls_options(settings)})
