"""The MySQL / MariaDB Store: an asyncmy pool, InnoDB, one fenced transaction per group commit."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncmy
from asyncmy.connection import Connection
from asyncmy.cursors import Cursor
from asyncmy.errors import DataError, IntegrityError, MySQLError
from asyncmy.pool import Pool

from storage import rules
from storage.errors import AosError, StoreUnavailable, Unstorable
from storage.mysql_sql import (
    FENCE,
    MIN_PACKET_BYTES,
    MYSQL,
    NOPAD_COLLATIONS,
    PART_BYTES,
    READ_PARTS,
    SNAPSHOT,
    TABLES,
    TAKE_LEASE,
    joined,
    parted,
    spelled,
)
from storage.records import Batch
from storage.sql import (
    BINDING_ERRORS,
    CURRENT_VERSION_SQL,
    LEASE_EPOCH,
    READ_OUTPUT,
    RECORD_VERSION_SQL,
    SCHEMA_VERSION_DDL,
    Dialect,
    Fence,
    Params,
    Row,
    SqlStore,
    Step,
    pending_migrations,
    unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSLATED: tuple[type[Exception], ...] = (MySQLError, OSError, *BINDING_ERRORS)
#: Every session: "..." quotes identifiers (the shared statements say "offset"), a bad
#: value is an error and never a warning with a changed row, no silent engine swap;
#: committed reads, so writes of different jobs take no gap locks on each other.
_SESSION = (
    "SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,"
    "ERROR_FOR_DIVISION_BY_ZERO', SESSION innodb_lock_wait_timeout = {lock_wait_s};"
    " SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
)
_DEADLOCK = 1213
#: A transaction InnoDB chose as a deadlock's victim was rolled back whole: it is run again.
DEADLOCK_TRIES = 3
#: How long an opener waits for another one's migration, and how long a migration may run.
MIGRATION_TIMEOUT_S = 600.0


class MysqlStore(SqlStore):
    """A Store in MySQL (8.0.17+) or MariaDB (10.5+), shared by every shard and replica.

    `mysql://user:password@host:port/database`. Connections come from a pool of
    `min_size` to `max_size`; connecting, waiting for a free connection and waiting for any
    reply each give up after `timeout_s` (StoreUnavailable), and a connection that failed is
    dropped with the idle ones, so the store reconnects by itself once the server is back.
    """

    dialect: Dialect = MYSQL

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 8, timeout_s: float = 10.0
    ) -> None:
        self._connect_args = _connect_args(url)
        self._where = _describe(self._connect_args)
        self._min_size, self._max_size = min_size, max_size
        self._timeout_s = timeout_s
        self._pool: Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        with self._translated("open"):
            await self._prepare()
            self._pool = await asyncmy.create_pool(
                minsize=self._min_size, maxsize=self._max_size, **self._session_args()
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    async def acquire_shard(self, slot: int, owner: str) -> int:
        async def take() -> int:
            async with self._transaction() as cur:
                await cur.execute(*_driver(TAKE_LEASE, (slot, owner, time.time())))
                await cur.execute(*_driver(LEASE_EPOCH, (slot,)))
                row = await cur.fetchone()
            return int(row[0])

        with self._translated("acquire"):
            return await _retrying(take)

    async def _fetch(self, sql: str, params: Params = (), *, write: bool = False) -> list[Row]:
        # Autocommit: one statement is its own transaction, so `write` needs nothing more.
        with self._translated("query"):
            async with self._connection() as conn, conn.cursor() as cur:
                await cur.execute(*_driver(sql, params))
                return list(await cur.fetchall() or ())

    async def _write(self, fence: Fence | None, steps: list[Step]) -> None:
        async def run() -> None:
            async with self._transaction() as cur:
                if fence is not None:
                    await _check_fence(cur, fence)
                for sql, rows in steps:
                    for statement in spelled(sql):
                        # Many rows to one INSERT, cut to asyncmy's 1 MB statements.
                        await cur.executemany(statement, rows)

        with self._translated("commit"):
            await _retrying(run)

    def _steps(self, batch: Batch) -> list[Step]:
        return [part for step in super()._steps(batch) for part in parted(step)]

    async def _chunk_rows(self, key: tuple[str, str, int], after_seq: int, limit: int) -> list[Row]:
        rows = await super()._chunk_rows(key, after_seq, limit)
        if not any(len(row[4]) == PART_BYTES for row in rows):
            return rows
        # Chunks of several rows: read again, with their further rows, in one snapshot (a
        # purge step between two plain reads would leave a chunk cut short).
        with self._translated("query"):
            async with self._transaction(snapshot=True) as cur:
                await cur.execute(*_driver(READ_OUTPUT, (*key, after_seq, limit)))
                rows = list(await cur.fetchall())
                parted = [row[2] for row in rows if len(row[4]) == PART_BYTES]
                if not parted:
                    return rows
                await cur.execute(*_driver(READ_PARTS, (*key, parted[0], parted[-1])))
                return joined(rows, await cur.fetchall())

    def _dump_json(self, value: Any) -> Any:
        return json.dumps(value, separators=(",", ":"))

    def _load_json(self, value: Any) -> Any:
        return json.loads(value)

    # -- connections ------------------------------------------------------------------

    def _session_args(self, *, read_timeout_s: float | None = None) -> dict[str, Any]:
        return {
            **self._connect_args,
            "charset": "utf8mb4",
            "autocommit": True,
            "binary_prefix": True,  # bytes go in as _binary'...', never checked as text
            "connect_timeout": self._timeout_s,
            "read_timeout": read_timeout_s or self._timeout_s,
            "init_command": _SESSION.format(lock_wait_s=max(1, int(self._timeout_s))),
        }

    def _live(self) -> Pool:
        if self._pool is None:
            raise StoreUnavailable(f"mysql store {self._where} is not open")
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, waited for at most `timeout_s`. One left in an unknown state
        (the connection failed, the caller was cancelled mid-reply) is closed, not pooled,
        and the idle ones go too: after an outage they are all dead."""
        pool = self._live()
        conn = await asyncio.wait_for(pool.acquire(), self._timeout_s)
        try:
            yield conn
        except BaseException as exc:
            if not _intact(exc):
                conn.close()
                await pool.clear()
            raise
        finally:
            await pool.release(conn)

    @asynccontextmanager
    async def _transaction(self, *, snapshot: bool = False) -> AsyncIterator[Cursor]:
        """One transaction, committed when the block ends, rolled back if it raises (on a
        connection in an unknown state, by the server as `_connection` closes it)."""
        async with self._connection() as conn, conn.cursor() as cur:
            for statement in SNAPSHOT if snapshot else ("BEGIN",):
                await cur.execute(statement)
            try:
                yield cur
                await conn.commit()
            except BaseException as exc:
                if _intact(exc):
                    with suppress(*_TRANSLATED):
                        await conn.rollback()
                raise

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """The one place driver errors are translated: the data's fault is `Unstorable`,
        anything else of asyncmy (connection, timeout, server) or the network is
        `StoreUnavailable`. Neither carries the driver's text: it may quote the data."""
        try:
            yield
        except _TRANSLATED as exc:
            if _refused(exc):  # the committer logs the cause of a refused write
                raise Unstorable() from exc
            log.warning("mysql %s %s failed: %r", self._where, action, exc)
            raise unavailable(f"mysql {self._where}") from exc

    # -- opening ----------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Check the server's durable settings, then create or migrate the schema, on a
        connection of its own: a migration may outlast `timeout_s`."""
        args = self._session_args(read_timeout_s=MIGRATION_TIMEOUT_S)
        conn = await asyncmy.connect(**args)
        try:
            async with conn.cursor() as cur:
                await self._check_server(cur)
                self.dialect = await _dialect(cur)
                await _migrate(cur, self.dialect, self._connect_args["database"])
                await _check_engines(cur)
        finally:
            conn.close()

    async def _check_server(self, cur: Cursor) -> None:
        """An acknowledged commit must be on disk, and a chunk's rows must fit a packet."""
        await cur.execute(
            "SELECT @@GLOBAL.innodb_flush_log_at_trx_commit, @@GLOBAL.max_allowed_packet,"
            " @@GLOBAL.log_bin, @@GLOBAL.sync_binlog"
        )
        flush, packet, log_bin, sync_binlog = await cur.fetchone()
        if int(flush) != 1:
            raise StoreUnavailable(
                f"mysql {self._where} has innodb_flush_log_at_trx_commit={flush}; the service"
                " acknowledges a write only once it is durable, so it must be 1"
            )
        if int(packet) < MIN_PACKET_BYTES:
            raise StoreUnavailable(
                f"mysql {self._where} has max_allowed_packet={packet}; the store needs at"
                f" least {MIN_PACKET_BYTES} bytes"
            )
        if int(log_bin) and int(sync_binlog) != 1:
            log.warning(
                "mysql %s writes a binary log with sync_binlog=%s: a crash may lose commits"
                " from the log (replicas, point-in-time recovery); set sync_binlog=1",
                self._where,
                sync_binlog,
            )


def _connect_args(url: str) -> dict[str, Any]:
    """asyncmy's keywords for `mysql://user:password@host:port/database`."""
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValueError("a mysql:// URL names its database: mysql://user:password@host/db")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": database,
    }


def _describe(args: dict[str, Any]) -> str:
    """host:port/database for messages; never the password."""
    return f"{args['host']}:{args['port']}/{args['database']}"


def _driver(sql: str, params: Params) -> tuple[str, Params]:
    (statement,) = spelled(sql)
    return statement, params


async def _retrying(run: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(1, DEADLOCK_TRIES + 1):
        try:
            return await run()
        except MySQLError as exc:
            if _errno(exc) != _DEADLOCK or attempt == DEADLOCK_TRIES:
                raise
            log.info("mysql transaction chosen as a deadlock victim; running it again")
    raise AssertionError("unreachable")


def _errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _intact(exc: BaseException) -> bool:
    """Whether the connection is fit for more after `exc`: the server answered with an error
    (1000-1999, 3000 and up), Python refused a value before anything was sent, or the store
    raised its own (`Fenced`). Client errors (2000-2999: lost, timed out), OS errors,
    cancellation and anything unforeseen leave it in an unknown state."""
    if isinstance(exc, MySQLError):
        errno = _errno(exc)
        return errno is not None and not 2000 <= errno < 3000
    return isinstance(exc, (*BINDING_ERRORS, AosError))


def _refused(exc: Exception) -> bool:
    """The data's fault: a data exception or an integrity constraint (SQLSTATE classes 22
    and 23, e.g. a value out of range, a string not valid for its column, a JSON document
    the server will not hold), or a value Python could not encode."""
    if isinstance(exc, (DataError, IntegrityError, *BINDING_ERRORS)):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in ("22", "23")


async def _check_fence(cur: Cursor, fence: Fence) -> None:
    slot, epoch = fence
    await cur.execute(*_driver(FENCE, (slot,)))
    row = await cur.fetchone()
    rules.check_fence(slot, epoch, None if row is None else row[0])


async def _dialect(cur: Cursor) -> Dialect:
    """MYSQL with the server's byte-wise, no-pad collation (MariaDB's or MySQL 8's)."""
    marks = ", ".join("%s" for _ in NOPAD_COLLATIONS)
    await cur.execute(
        f"SELECT COLLATION_NAME FROM information_schema.COLLATIONS"
        f" WHERE COLLATION_NAME IN ({marks})",
        NOPAD_COLLATIONS,
    )
    found = {name for (name,) in await cur.fetchall()}
    collation = next((name for name in NOPAD_COLLATIONS if name in found), None)
    if collation is None:
        raise StoreUnavailable(
            f"mysql has none of the collations {', '.join(NOPAD_COLLATIONS)}:"
            " the store needs MariaDB 10.2+ or MySQL 8.0.17+"
        )
    options = MYSQL.table_options.format(collation=collation)
    return dataclasses.replace(MYSQL, table_options=options)


async def _migrate(cur: Cursor, dialect: Dialect, database: str) -> None:
    """Bring the schema to the newest version under a named lock that serializes openers.
    MySQL commits each DDL statement by itself: a migration cut short is finished by hand."""
    lock = "aos_schema_" + hashlib.sha256(database.encode()).hexdigest()[:40]
    await cur.execute("SELECT GET_LOCK(%s, %s)", (lock, int(MIGRATION_TIMEOUT_S)))
    if (await cur.fetchone())[0] != 1:
        raise StoreUnavailable("mysql: another process held the schema lock too long")
    try:
        await cur.execute(SCHEMA_VERSION_DDL.format(double=dialect.double) + dialect.table_options)
        await cur.execute(CURRENT_VERSION_SQL)
        current = int((await cur.fetchone())[0])
        for number, statements in pending_migrations(dialect, current):
            for ddl in statements:
                await cur.execute(ddl)
            await cur.execute(*_driver(RECORD_VERSION_SQL, (number, time.time())))
    finally:
        await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
        await cur.fetchall()


async def _check_engines(cur: Cursor) -> None:
    """Only InnoDB commits durably and in transactions: refuse a table in another engine
    (one made before, by hand, or on a server that swapped the engine)."""
    marks = ", ".join("%s" for _ in TABLES)
    await cur.execute(
        "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES"
        f" WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ({marks})",
        TABLES,
    )
    other = sorted(
        f"{name} ({engine})" for name, engine in await cur.fetchall() if engine != "InnoDB"
    )
    if other:
        raise StoreUnavailable(f"mysql tables not in InnoDB: {', '.join(other)}")
