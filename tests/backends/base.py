"""How the suites get an empty store of one backend: `TestBackend`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from storage.base import Store
from storage.records import AuditEntry


class TestBackend:
    """How the suites get an empty store of one backend.

    `session` makes the location the session's tests share (a database, a keyspace) and
    removes it after; `empty` clears it before each test, faster than making a new one.
    `fresh` is a location nobody has opened yet (schema, several stores on one database),
    removed after the test.
    """

    __test__ = False  # not a test class, though its name starts with Test
    name: str
    #: False for the in-memory store: nothing outlives the store object.
    persistent = True
    #: Whether the store talks to a server over TCP (at its URL's host and port).
    has_server = True

    def need(self) -> None:
        """Skip loudly, or fail in CI, when the backend's server is unreachable."""

    @contextmanager
    def session(self, tmp: Path) -> Iterator[str]:
        """The URL of the session's location (`tmp`: a folder of the session's own)."""
        with self.fresh(tmp) as url:
            yield url

    async def empty(self, store: Store, url: str) -> None:
        """Remove what earlier tests wrote at `url` (`store` is open on it)."""

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        raise NotImplementedError(f"{self.name} keeps nothing to open twice")
        yield ""

    async def audit(self, store: Store, url: str) -> list[AuditEntry]:
        """The audit log as stored, oldest first (the Store has no reader for it)."""
        raise NotImplementedError

    def server(self, url: str) -> tuple[str, int]:
        """The host and port of the server `url` names."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        return parts.hostname, parts.port

    def via(self, url: str, port: int) -> str:
        """`url` with its server at 127.0.0.1:`port` (a proxy in front of it)."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        return parts._replace(
            netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
        ).geturl()
