"""The Cassandra store's connection: URL, cluster options, statements run as coroutines, and
the one place driver errors are translated.

cassandra-driver runs its own I/O thread (libev); `Session.execute_async` hands back a
`ResponseFuture` whose callbacks fire on that thread, bridged here to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cassandra import ConsistencyLevel, DriverException, InvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.policies import ExponentialReconnectionPolicy, RoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, tuple_factory

from storage.cassandra_rows import Unit
from storage.errors import StoreUnavailable, Unstorable

log = logging.getLogger("storage.cassandra")

DEFAULT_PORT = 9042
DEFAULT_KEYSPACE = "aos"
#: A request (and a connection attempt) that takes longer is StoreUnavailable.
TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
#: A logged batch holds at most this many bytes of values and statements (a batch of many
#: partitions costs the node more than a few batches of fewer, run side by side).
BATCH_BYTES = 8 * 1024 * 1024
BATCH_WRITES = 64
#: Durable settings: both acknowledge a write only once the commit log is synced.
DURABLE_SYNC = ("batch", "group")
#: The first wait before a request the driver refused as busy is sent again (doubling).
BUSY_RETRY_S = 0.005

Row = tuple[Any, ...]

_TRANSLATED: tuple[type[BaseException], ...] = (
    DriverException,
    NoHostAvailable,
    ConnectionException,
    OSError,
    ValueError,
    OverflowError,
    TypeError,
    struct.error,
)
#: Python's own errors binding a value the driver cannot send: the data's fault.
_BINDING = (ValueError, OverflowError, TypeError, struct.error)


@dataclass(frozen=True)
class Location:
    """Where a `cassandra://host[,host...][:port]/keyspace[?replication_factor=N]` URL
    points. The keyspace is made with SimpleStrategy and that replication factor."""

    hosts: tuple[str, ...]
    port: int
    keyspace: str
    replication_factor: int

    @property
    def where(self) -> str:
        """For messages: hosts, port and keyspace (never credentials)."""
        return f"{','.join(self.hosts)}:{self.port}/{self.keyspace}"


def location(url: str) -> Location:
    """Parse a cassandra:// URL. `ValueError` for one that names no usable keyspace."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    hosts_part, _, port = netloc.rpartition(":") if "]" not in netloc else (netloc, "", "")
    if not port.isdigit():
        hosts_part, port = netloc, str(DEFAULT_PORT)
    hosts = tuple(host for host in hosts_part.split(",") if host) or ("127.0.0.1",)
    keyspace = unquote(parts.path.strip("/")) or DEFAULT_KEYSPACE
    if not keyspace.replace("_", "a").isalnum() or len(keyspace) > 48:
        raise ValueError(f"cassandra:// keyspace must be up to 48 letters, digits or _: {url!r}")
    factor = parse_qs(parts.query).get("replication_factor", ["1"])[0]
    if not factor.isdigit() or int(factor) < 1:
        raise ValueError(f"cassandra:// replication_factor must be a positive integer: {url!r}")
    return Location(hosts, int(port), keyspace.lower(), int(factor))


def new_cluster(where: Location) -> Cluster:
    """A cluster with bounded connect and request timeouts that reconnects by itself.

    QUORUM reads and writes (a read sees every acknowledged write with any replication
    factor; on one node it is that node) and SERIAL for lightweight transactions."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(RoundRobinPolicy()),
        consistency_level=ConsistencyLevel.QUORUM,
        serial_consistency_level=ConsistencyLevel.SERIAL,
        request_timeout=TIMEOUT_S,
        row_factory=tuple_factory,
    )
    return Cluster(
        list(where.hosts),
        port=where.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=CONNECT_TIMEOUT_S,
        control_connection_timeout=CONNECT_TIMEOUT_S,
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0),
        protocol_version=5,
    )


def unavailable(where: str) -> StoreUnavailable:
    return StoreUnavailable(f"the store (cassandra {where}) is unavailable; retry shortly")


@contextmanager
def translated(where: str, action: str) -> Iterator[None]:
    """The one place driver errors are translated: a refused value (InvalidRequest, e.g. a
    mutation over the server's size limit, or one Python cannot bind) is `Unstorable`;
    anything else (no host, a timeout, Unavailable, a lost connection) is
    `StoreUnavailable`. Neither carries the driver's text: it may quote the data."""
    try:
        yield
    except _TRANSLATED as exc:
        if isinstance(exc, (InvalidRequest, *_BINDING)):
            log.warning("cassandra %s %s refused a value: %r", where, action, exc)
            raise Unstorable() from exc
        log.warning("cassandra %s %s failed: %r", where, action, exc)
        raise unavailable(where) from exc


async def run(session: Any, statement: Any, params: Sequence[Any] = ()) -> list[Row]:
    """Run one statement (prepared, bound or a batch); its rows (paging is off).

    The driver refuses a request at once (`ConnectionBusy`, unsent) while its connection's
    socket is full, e.g. behind an 8 MiB batch: such a request is sent again shortly,
    until `TIMEOUT_S` has passed."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + TIMEOUT_S, BUSY_RETRY_S
    while True:
        try:
            return await _once(session, statement, params)
        except NoHostAvailable as exc:
            busy = exc.errors and all(isinstance(e, ConnectionBusy) for e in exc.errors.values())
            if not busy or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


async def _once(session: Any, statement: Any, params: Sequence[Any]) -> list[Row]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Row]] = loop.create_future()

    def ok(rows: list[Row]) -> None:
        settle(rows, None)

    def failed(exc: BaseException) -> None:
        settle(None, exc)

    def settle(rows: list[Row] | None, exc: BaseException | None) -> None:
        if not loop.is_closed():  # an answer after its caller's loop ended has nobody to tell
            loop.call_soon_threadsafe(_settle, done, rows, exc)

    future = session.execute_async(statement, params or None)
    future.add_callbacks(ok, failed)
    return await done


def _settle(
    done: asyncio.Future[list[Row]], rows: list[Row] | None, exc: BaseException | None
) -> None:
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(list(rows or ()))


def serial_read(prepared: PreparedStatement, params: Sequence[Any]) -> Any:
    """`prepared` bound for a linearizable read (SERIAL: sees every LWT that completed and
    finishes any in flight)."""
    bound = prepared.bind(params)
    bound.consistency_level = ConsistencyLevel.SERIAL
    return bound


def logged_batch(writes: Sequence[tuple[PreparedStatement, Sequence[Any]]]) -> BatchStatement:
    batch = BatchStatement(batch_type=BatchType.LOGGED)
    for prepared, params in writes:
        batch.add(prepared, params)
    return batch


def durable_sync(where: str, value: str | None) -> None:
    """Acknowledged writes must be in a synced commit log: `commitlog_sync` batch or group
    (both acknowledge a write once its commit log segment is synced), never periodic (it
    acknowledges first and syncs every `commitlog_sync_period`). `StoreUnavailable`
    otherwise, or when the setting cannot be read (Cassandra before 4.0)."""
    if value not in DURABLE_SYNC:
        raise StoreUnavailable(
            f"cassandra {where} has commitlog_sync={value}; the service acknowledges a write"
            " only once it is durable, so it must be 'batch' (or 'group')"
        )


def in_batches(units: list[Unit]) -> list[Unit]:
    """`units` packed in order into groups of at most `BATCH_BYTES` of values and
    `BATCH_WRITES` statements (a unit larger than that is a group of its own)."""
    groups: list[Unit] = []
    size = BATCH_BYTES
    for unit in units:
        weight = sum(len(v) for _, values in unit for v in values if isinstance(v, bytes | str))
        if groups and size + weight <= BATCH_BYTES and len(groups[-1]) + len(unit) <= BATCH_WRITES:
            groups[-1] += unit
            size += weight
        else:
            groups.append(list(unit))
            size = weight
    return groups
