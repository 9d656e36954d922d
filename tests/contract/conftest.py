"""Contract fixtures: an opened, empty Store per backend (tests/backends lists them).

Each persistent backend's tests share one location for the session (a file, a database),
emptied before each test; tests that need a brand-new schema get a location of their own.
An unreachable server skips loudly, or fails when CI=true.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from storage.base import Store
from storage.records import AuditEntry
from storage.registry import open_store
from tests.backends import BACKENDS, PERSISTENT, TestBackend


@pytest.fixture(scope="session")
def session_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """The URL of a backend's session location, made when a test first asks for it."""
    tmp = tmp_path_factory.mktemp("stores")
    urls: dict[str, str] = {}
    with ExitStack() as stack:

        def url_of(name: str) -> str:
            if name not in urls:
                urls[name] = stack.enter_context(BACKENDS[name].session(tmp))
            return urls[name]

        yield url_of


@pytest.fixture
def pg_database(session_url: Callable[[str], str]) -> str:
    """The session's PostgreSQL database; its URL."""
    BACKENDS["postgres"].need()
    return session_url("postgres")


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> TestBackend:
    chosen = BACKENDS[request.param]
    chosen.need()
    return chosen


@pytest.fixture
def store_url(backend: TestBackend, session_url: Callable[[str], str]) -> str:
    return session_url(backend.name)


@pytest.fixture(params=PERSISTENT)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A location of a persistent backend nobody has opened yet, which several stores may
    open."""
    chosen = BACKENDS[request.param]
    chosen.need()
    with chosen.fresh(tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQL database with no schema yet (tests of the SQL schema itself)."""
    chosen = BACKENDS[request.param]
    chosen.need()
    with chosen.fresh(tmp_path) as url:
        yield url


@pytest.fixture
async def store(backend: TestBackend, store_url: str) -> AsyncIterator[Store]:
    """An opened store with nothing in it."""
    store = open_store(store_url)
    await store.open()
    await backend.empty(store, store_url)
    yield store
    await store.close()


@pytest.fixture
def read_audit(
    backend: TestBackend, store: Store, store_url: str
) -> Callable[[], Awaitable[list[AuditEntry]]]:
    """The audit log as stored; the Store protocol has no reader for it (nothing serves it yet)."""
    return lambda: backend.audit(store, store_url)
