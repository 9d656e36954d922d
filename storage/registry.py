"""Backends by URL scheme: each a module of its own, imported only when its URL is used.

A backend's driver is an optional extra of the package (`pip install
'async-output-service[mysql]'`); without it, `open_store` raises `MissingDriver`, which
names the extra. Adding a backend is one line here.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from storage.base import Store


class Backend(NamedTuple):
    module: str
    cls: str
    #: The package extra that installs its driver; None: the default install has it.
    extra: str | None


#: scheme -> backend. The default install holds SQLite and memory only.
BACKENDS: dict[str, Backend] = {
    "memory": Backend("storage.memory", "MemoryStore", None),
    "sqlite": Backend("storage.sqlite", "SqliteStore", None),
    "postgresql": Backend("storage.postgres", "PostgresStore", "postgresql"),
    "postgres": Backend("storage.postgres", "PostgresStore", "postgresql"),
    "mysql": Backend("storage.mysql", "MysqlStore", "mysql"),
    "mongodb": Backend("storage.mongodb", "MongoStore", "mongodb"),
    "dynamodb": Backend("storage.dynamodb", "DynamoStore", "dynamodb"),
    "cassandra": Backend("storage.cassandra", "CassandraStore", "cassandra"),
}


class MissingDriver(ImportError):
    """The URL's backend needs a driver this install lacks."""


def open_store(url: str) -> Store:
    """The backend for `url`, not yet opened (`await store.open()`).

    Raises `ValueError` for a scheme no backend serves, `MissingDriver` (an `ImportError`)
    when its driver is not installed.
    """
    scheme, _, rest = url.partition(":")
    store: Store = store_class(url)(f"{scheme.lower()}:{rest}")  # a backend reads it lower-case
    return store


def store_class(url: str) -> type[Any]:
    """The class of the backend for `url`, its module imported; raises as `open_store`."""
    scheme = url.split(":", 1)[0].lower()
    backend = BACKENDS.get(scheme)
    if backend is None or "://" not in url:
        known = ", ".join(f"{name}://" for name in sorted(BACKENDS))
        raise ValueError(f"unsupported storage URL {url!r}: expected one of {known}")
    try:
        module = importlib.import_module(backend.module)
    except ModuleNotFoundError as exc:
        if backend.extra is None or exc.name == backend.module:
            raise
        raise MissingDriver(
            f"the {scheme}:// store needs its driver ({exc.name}), which is not installed:"
            f" pip install 'async-output-service[{backend.extra}]'"
        ) from exc
    cls: type[Any] = getattr(module, backend.cls)
    return cls
