"""Reaching a store (MLflow tracking URI, Optuna storage URL) fast, and never showing passwords.

A store behind a server (``http(s)://``, ``postgresql://``, ``mysql://``) is probed before any
MLflow or Optuna call could hang on it: one that does not answer within
``ROLLBENCH_TRACKING_TIMEOUT`` seconds (default 5) raises :class:`TrackingUnreachable`. A
database URL whose driver is not installed raises a ConfigError naming the extra that brings
it (``pip install 'rollbench[cluster]'`` for PostgreSQL). :func:`mask` hides the password of
every URL in a message: ``postgresql://user:***@host/db``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from importlib.util import find_spec
from typing import Any
from urllib.parse import urlparse

from toolkit.errors import ConfigError

TIMEOUT_ENV = "ROLLBENCH_TRACKING_TIMEOUT"
#: Database URL schemes -> (default port, driver module per SQLAlchemy dialect suffix). A plain
#: ``postgresql://`` takes whichever of psycopg2 (the ``cluster`` extra) or psycopg is installed.
DATABASES = {"postgresql": (5432, {"": ("psycopg2", "psycopg"), "psycopg2": ("psycopg2",),
                                   "psycopg": ("psycopg",), "pg8000": ("pg8000",)}),
             "mysql": (3306, {"": ("MySQLdb",), "pymysql": ("pymysql",),
                              "mysqldb": ("MySQLdb",)})}
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")


class TrackingUnreachable(ConnectionError):
    """A tracking server that did not answer within the timeout (see :data:`TIMEOUT_ENV`)."""


def mask(text: Any) -> str:
    """``text`` with every URL password hidden: ``postgresql://user:***@host/db``."""
    return _PASSWORD.sub(r"\1***@", str(text))


def database_url(url: str) -> str:
    """The URL SQLAlchemy should open, its driver installed; other URLs unchanged.

    A plain ``postgresql://`` (or ``postgres://``) is given the installed driver, psycopg2
    first (SQLAlchemy 2.1 would otherwise ask for psycopg 3). A missing driver raises a
    ConfigError naming what to install: ``pip install 'rollbench[cluster]'`` for PostgreSQL.
    """
    scheme, sep, rest = url.partition("://")
    base, _, dialect = scheme.lower().partition("+")
    base = "postgresql" if base == "postgres" else base
    if not sep or base not in DATABASES:
        return url
    wanted = DATABASES[base][1].get(dialect, (dialect,))
    found = next((m for m in wanted if find_spec(m) is not None), None)
    if found is None:
        extra = "pip install 'rollbench[cluster]'" if "psycopg2" in wanted else \
            f"install a package providing the Python module {wanted[0]!r}"
        raise ConfigError(f"{mask(url)} needs the database driver {wanted[0]!r}, which is not "
                          f"installed: {extra}")
    if dialect:
        return f"{base}+{dialect}://{rest}"
    return f"{base}+{found.lower() if base == 'postgresql' else 'mysqldb'}://{rest}"


def require_driver(url: str) -> None:
    """Raise the ConfigError of :func:`database_url` when a database URL's driver is missing."""
    database_url(url)


def timeout() -> float:
    """Seconds a tracking server gets to answer (``ROLLBENCH_TRACKING_TIMEOUT``, default 5)."""
    try:
        return float(os.environ.get(TIMEOUT_ENV) or 5.0)
    except ValueError:
        return 5.0


def unreachable(uri: str, seconds: float | None = None) -> str | None:
    """Why the server behind ``uri`` does not answer within ``seconds``; None if it does.

    http(s) URIs get one GET of ``/health`` (any HTTP answer counts); database URLs a TCP
    connection to their host and port. Local stores (sqlite, files) are not probed.
    """
    import urllib.error
    import urllib.request

    seconds = timeout() if seconds is None else seconds
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower().split("+")[0]
    try:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=seconds):
                return None
        base = "postgresql" if scheme == "postgres" else scheme
        if base in DATABASES and parsed.hostname:
            port = parsed.port or DATABASES[base][0]
            socket.create_connection((parsed.hostname, port), timeout=seconds).close()
    except urllib.error.HTTPError:  # the server answered
        return None
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {mask(getattr(err, 'reason', None) or err)}"
    return None


_PROBED: dict[str, tuple[float, str | None]] = {}


def check_store(uri: str) -> None:
    """Raise :class:`TrackingUnreachable` (or a ConfigError for a missing driver) before any
    MLflow call could hang on the store; a verdict is reused for 60 s in this process."""
    require_driver(uri)
    now = time.monotonic()
    seen = _PROBED.get(uri)
    if seen is None or now - seen[0] > 60:
        seen = _PROBED[uri] = (now, unreachable(uri))
    if seen[1]:
        raise TrackingUnreachable(f"the tracking store {mask(uri)} cannot be reached "
                                  f"({seen[1]}; waited at most {timeout():g} s)")
