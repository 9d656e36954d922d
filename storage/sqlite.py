"""The embedded SQLite Store: one file, WAL; writes on one worker thread, reads on another,
both off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from storage import rules
from storage.errors import StoreUnavailable, Unstorable
from storage.sql import (
    BINDING_ERRORS,
    CURRENT_VERSION_SQL,
    LEASE_EPOCH,
    RECORD_VERSION_SQL,
    SCHEMA_VERSION_DDL,
    SQLITE,
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

#: The data's fault: a constraint, a value too big, a parameter sqlite3 cannot bind.
_REFUSED: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    *BINDING_ERRORS,
)

BUSY_TIMEOUT_S = 30.0
WAL_LIMIT_BYTES = 64 * 1024 * 1024
#: Free pages given back per purge step (4 KiB each: 16 MiB), so one step's vacuum is short.
VACUUM_PAGES_PER_STEP = 4096
#: Rows per page of a big read (`_fetch_each`).
ROWS_PER_PAGE = 10_000
_SYNCHRONOUS_FULL = 2
_PREFIX = "sqlite:///"


def path_of(url: str) -> str:
    """`sqlite:///relative/path.db` -> `relative/path.db`; `sqlite:////abs.db` -> `/abs.db`."""
    if not url.lower().startswith(_PREFIX) or len(url) == len(_PREFIX):
        raise ValueError(f"expected sqlite:///relative/path.db or sqlite:////abs/path.db: {url!r}")
    return url[len(_PREFIX) :]


class SqliteStore(SqlStore):
    """A Store in one SQLite file, shared safely by several processes.

    sqlite3 connections block, so each connection lives on its own dedicated thread
    and every call is handed to it: the event loop never waits on disk, and no
    connection is used from two threads. Writes (and reads inside a write
    transaction) go to the writer; plain reads to the reader, which WAL lets read
    the last commit while the writer commits the next, so a read never queues
    behind a commit.
    """

    dialect = SQLITE

    def __init__(self, url: str) -> None:
        self._path = path_of(url)
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._read_executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aos-sqlite")
        self._read_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="aos-sqlite-read"
        )
        try:
            self._conn = await self._run(self._connect)
            self._reader = await self._run(self._connect_reader, read=True)
        except BaseException:
            await self._shutdown()
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        if reader is not None:
            await self._run(reader.close, read=True)
        if conn is not None:
            await self._run(conn.close)
        await self._shutdown()

    async def _shutdown(self) -> None:
        executors = (self._executor, self._read_executor)
        self._executor = self._read_executor = None
        for executor in executors:
            if executor is not None:
                await asyncio.to_thread(executor.shutdown)

    async def _fetch(self, sql: str, params: Params = (), *, write: bool = False) -> list[Row]:
        if write:
            return await self._run(self._fetch_sync, sql, params)
        return await self._run(self._read_sync, sql, params, read=True)

    async def _write(self, fence: Fence | None, steps: list[Step]) -> None:
        await self._run(self._write_sync, fence, steps)

    async def _fetch_each(self, sql: str, params: Params, record: Callable[[Row], T]) -> list[T]:
        """Rows a page at a time from the reader's thread, each page made records here: a
        shard's reload holds one page of rows beside its records, not all of them (their
        ~900 bytes a row, freed after, stayed in the process as fragments)."""
        cursor = await self._run(self._cursor_sync, sql, params, read=True)
        try:
            records: list[T] = []
            while rows := await self._run(cursor.fetchmany, ROWS_PER_PAGE, read=True):
                records.extend(record(row) for row in rows)
            return records
        finally:
            await self._run(cursor.close, read=True)

    def _dump_json(self, value: Any) -> Any:
        return json.dumps(value, separators=(",", ":"))

    def _load_json(self, value: Any) -> Any:
        return json.loads(value)

    async def _run(self, fn: Callable[..., T], *args: Any, read: bool = False) -> T:
        """Run `fn` on the writer's thread (the reader's if `read`). Its errors are
        translated here, once: the data's fault is `Unstorable`, anything else of sqlite3
        (locked, I/O, not a database) or the file system is `StoreUnavailable`; neither
        carries sqlite3's text."""
        executor = self._read_executor if read else self._executor
        if executor is None:
            raise StoreUnavailable(f"sqlite store {self._path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except _REFUSED as exc:  # the committer logs the cause of a refused write
            raise Unstorable() from exc
        except (sqlite3.Error, OSError) as exc:  # OSError: the parent directory cannot be made
            log.warning("sqlite %s failed: %r", self._path, exc)
            raise unavailable("sqlite") from exc

    # -- on the worker thread ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE.
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            _with_lock_retry(lambda: _set_space_keeping(conn))
            _with_lock_retry(lambda: _check_durable(conn, self._path))
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        """A second connection, for plain reads; the writer made the file WAL already."""
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return conn

    def _read_sync(self, sql: str, params: Params) -> list[Row]:
        return self._cursor_sync(sql, params).fetchall()

    def _cursor_sync(self, sql: str, params: Params) -> sqlite3.Cursor:
        if self._reader is None:
            raise StoreUnavailable(f"sqlite store {self._path} is not open")
        return self._reader.execute(sql, params)

    def _fetch_sync(self, sql: str, params: Params) -> list[Row]:
        conn = self._live()
        with _immediate(conn):
            return conn.execute(sql, params).fetchall()

    def _write_sync(self, fence: Fence | None, steps: list[Step]) -> None:
        conn = self._live()
        with _immediate(conn):
            if fence is not None:
                _check_fence(conn, fence)
            for sql, rows in steps:
                conn.executemany(sql, rows)

    async def _reclaim(self, *, done: bool) -> None:
        await self._run(self._reclaim_sync, done)

    def _reclaim_sync(self, done: bool) -> None:
        """Free pages go back to the file system, a bounded number a step (`auto_vacuum =
        INCREMENTAL`, set when the database was made: older files reuse them instead); at
        the end of a purge the WAL is checkpointed without waiting, and cut back to
        `WAL_LIMIT_BYTES` when it next starts over (`journal_size_limit`)."""
        conn = self._live()
        # executescript steps it to the end; execute() frees one page per call.
        conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES_PER_STEP});")
        if done:  # PASSIVE: never waits for, nor holds up, other writers
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"sqlite store {self._path} is not open")
        return self._conn


def _with_lock_retry(fn: Callable[[], None]) -> None:
    """Run `fn`, retrying "database is locked" for up to BUSY_TIMEOUT_S.

    Switching a fresh file to WAL takes an exclusive lock without calling the busy
    handler, so several processes opening one new database at once (every shard and
    replica on first start) would otherwise fail at once instead of waiting.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            fn()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction. IMMEDIATE takes the write lock up front, so two processes
    queue on busy_timeout instead of failing on a read-to-write lock upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _set_space_keeping(conn: sqlite3.Connection) -> None:
    """How the file gives space back: free pages can be returned (`auto_vacuum`, which only
    a database not yet holding tables takes), a WAL past `WAL_LIMIT_BYTES` is cut back after
    each checkpoint, and deleted rows are zeroed only where that costs no extra I/O
    (`secure_delete = FAST`: Debian's default, ON, wrote every freed page of a deleted job's
    output again, zeros through the WAL, ~28 s and 8 GB of WAL for a 4 GiB job)."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
    conn.execute("PRAGMA secure_delete = FAST")


def _check_durable(conn: sqlite3.Connection, path: str) -> None:
    """Refuse to run unless a commit is durable when it returns: WAL and synchronous=FULL."""
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute("PRAGMA synchronous = FULL")
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
    if str(mode).lower() != "wal" or synchronous != _SYNCHRONOUS_FULL:
        raise StoreUnavailable(
            f"sqlite {path} is not durable: journal_mode={mode} (need wal),"
            f" synchronous={synchronous} (need {_SYNCHRONOUS_FULL} = FULL)"
        )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to the newest version; BEGIN IMMEDIATE serializes concurrent openers."""
    with _immediate(conn):
        conn.execute(SCHEMA_VERSION_DDL.format(double=SQLITE.double))
        current = conn.execute(CURRENT_VERSION_SQL).fetchone()[0]
        for number, statements in pending_migrations(SQLITE, current):
            for ddl in statements:
                conn.execute(ddl)
            conn.execute(RECORD_VERSION_SQL, (number, time.time()))


def _check_fence(conn: sqlite3.Connection, fence: Fence) -> None:
    slot, epoch = fence
    row = conn.execute(LEASE_EPOCH, (slot,)).fetchone()
    rules.check_fence(slot, epoch, None if row is None else row[0])
