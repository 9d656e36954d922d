"""The PostgreSQL Store: psycopg 3 async pool, one fenced transaction per group commit."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import ProgramLimitExceeded
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from storage import rules
from storage.errors import StoreUnavailable, Unstorable
from storage.sql import (
    BINDING_ERRORS,
    CURRENT_VERSION_SQL,
    LEASE_EPOCH,
    POSTGRES,
    RECORD_VERSION_SQL,
    SCHEMA_VERSION_DDL,
    Fence,
    Params,
    Row,
    SqlStore,
    Step,
    pending_migrations,
    unavailable,
)

log = logging.getLogger(__name__)

_TRANSLATED: tuple[type[Exception], ...] = (psycopg.Error, OSError, *BINDING_ERRORS)

#: pg_advisory_xact_lock key that serializes schema migrations across processes ("aos_sch").
SCHEMA_LOCK_KEY = 0x616F735F736368
_Conn = psycopg.AsyncConnection[Any]

#: How long the pool retries one lost connection before it gives up on that attempt. The
#: pool's retries back off (1 s, 2 s, 4 s...), so after a long outage its next attempt could
#: come many seconds after the database is back; giving up early lets the next caller start
#: a fresh attempt at once (DESIGN-NOTES: "When the database goes away").
RECONNECT_GIVE_UP_S = 2.0
#: A ping waits this long for a connection, not the pool's full timeout: a shard probing a
#: database that is down pings often, and each ping is a fresh connection attempt.
PING_TIMEOUT_S = 2.0


@functools.cache
def _pg(sql: str) -> str:
    """The shared statements use `?` placeholders; psycopg wants `%s`."""
    return sql.replace("?", "%s")


class PostgresStore(SqlStore):
    """A Store in PostgreSQL, shared by every shard and HTTP replica."""

    dialect = POSTGRES

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 8, timeout_s: float = 10.0
    ) -> None:
        self._url = url
        self._where = _describe(url)
        self._min_size, self._max_size = min_size, max_size
        self._timeout_s = timeout_s
        self._pool: AsyncConnectionPool[_Conn] | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        # Autocommit: a read is one statement, never an idle open transaction; writes say so.
        pool: AsyncConnectionPool[_Conn] = AsyncConnectionPool(
            self._url,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout_s,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            kwargs={"autocommit": True},
            open=False,
            name="aos-store",
        )
        try:
            with self._translated("open"):
                await pool.open(wait=True, timeout=self._timeout_s)
                async with pool.connection() as conn:
                    await self._check_durable(conn)
                    await _migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        with self._translated("ping"):
            async with self._live().connection(timeout=PING_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")

    async def _fetch(self, sql: str, params: Params = (), *, write: bool = False) -> list[Row]:
        # A single statement in autocommit is its own transaction, so `write` needs nothing more.
        with self._translated("query"):
            async with self._live().connection() as conn:
                cur = await conn.execute(_pg(sql), params)
                return await cur.fetchall() if cur.description is not None else []

    async def _write(self, fence: Fence | None, steps: list[Step]) -> None:
        with self._translated("commit"):
            async with (
                self._live().connection() as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                if fence is not None:
                    await _check_fence(cur, fence)
                for sql, rows in steps:
                    # Pipelined by psycopg: one round trip for all rows, not one per row.
                    await cur.executemany(_pg(sql), rows)

    def _dump_json(self, value: Any) -> Any:
        return Jsonb(value)

    def _load_json(self, value: Any) -> Any:
        return value  # psycopg already parsed the JSONB

    def _live(self) -> AsyncConnectionPool[_Conn]:
        if self._pool is None:
            raise StoreUnavailable(f"postgresql store {self._where} is not open")
        return self._pool

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """The one place driver errors are translated: the data's fault is `Unstorable`,
        anything else of psycopg (connection, PoolTimeout, server) or the network is
        `StoreUnavailable`. Neither carries psycopg's text: it may quote the data."""
        try:
            yield
        except _TRANSLATED as exc:
            if _refused(exc):  # the committer logs the cause of a refused write
                raise Unstorable() from exc
            log.warning("postgresql %s %s failed: %r", self._where, action, exc)
            raise unavailable(f"postgresql {self._where}") from exc

    async def _check_durable(self, conn: _Conn) -> None:
        """An acknowledged commit must be on disk: refuse anything but synchronous_commit=on."""
        value = await _scalar(conn, "SHOW synchronous_commit")
        if value != "on":
            raise StoreUnavailable(
                f"postgresql {self._where} has synchronous_commit={value}; the service"
                " acknowledges a write only once it is durable, so it must be 'on'"
            )


def _refused(exc: Exception) -> bool:
    """The data's fault: PostgreSQL refused a value (class 22 data exception, 23 integrity,
    54000 a value over a limit, e.g. an index row), psycopg could not adapt one (a
    ProgrammingError of its own, without a SQLSTATE; with one it is our SQL or the
    schema), or Python could not encode one."""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError | ProgramLimitExceeded):
        return True
    if isinstance(exc, psycopg.ProgrammingError):
        return exc.sqlstate is None
    return isinstance(exc, BINDING_ERRORS)


async def _migrate(conn: _Conn) -> None:
    """Bring the schema to the newest version; the advisory lock serializes concurrent openers."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        await conn.execute(SCHEMA_VERSION_DDL.format(double=POSTGRES.double))
        current = int(await _scalar(conn, CURRENT_VERSION_SQL))
        for number, statements in pending_migrations(POSTGRES, current):
            for ddl in statements:
                await conn.execute(ddl)
            await conn.execute(_pg(RECORD_VERSION_SQL), (number, time.time()))


async def _check_fence(cur: psycopg.AsyncCursor[Any], fence: Fence) -> None:
    # FOR SHARE: a concurrent acquire_shard waits for this commit, and vice versa.
    slot, epoch = fence
    await cur.execute(_pg(LEASE_EPOCH + " FOR SHARE"), (slot,))
    row = await cur.fetchone()
    rules.check_fence(slot, epoch, None if row is None else row[0])


async def _scalar(conn: _Conn, sql: str) -> Any:
    row = await (await conn.execute(sql)).fetchone()
    if row is None:
        raise StoreUnavailable(f"postgresql returned no row for {sql!r}")
    return row[0]


def _describe(url: str) -> str:
    """host:port/dbname for messages; the URL itself may carry a password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparsable url)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
