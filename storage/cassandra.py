"""The Cassandra Store: tables per query, lightweight transactions for fencing, commits
staged on the shard lease (`storage.staged`), writes stamped by the epoch.

Data model and reasons: DESIGN-NOTES.md ("The Cassandra store"); tables and statements:
`storage.cassandra_schema`; rows: `storage.cassandra_rows`; the driver:
`storage.cassandra_driver`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence
from typing import Any

from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session

from storage import cassandra_schema as cql
from storage import rules
from storage.cassandra_driver import (
    Location,
    Row,
    durable_sync,
    in_batches,
    location,
    logged_batch,
    new_cluster,
    run,
    serial_read,
    translated,
)
from storage.cassandra_reads import CassandraReads
from storage.cassandra_rows import Before, PackedChunk, Unit, Wanted, check_keys, pack_chunks, plan
from storage.errors import StoreUnavailable
from storage.records import Batch
from storage.staged import StagedStore

log = logging.getLogger("storage.cassandra")

MAX_CHUNK_BYTES = 16 * 1024 * 1024
#: A commit whose staged form is at most this big rides inside its record (the lease's
#: LWT); a bigger one is staged in `staged` rows first.
INLINE_BYTES = 64 * 1024
#: Batches of one commit in flight at once.
PARALLEL = 4
#: Chunk bytes past which packing runs on a worker thread.
OFF_LOOP_BYTES = 256 * 1024
#: The lease row of admin commits (no slot): written without LWT, it has no epoch.
ADMIN = -1

_STAMP = struct.Struct(">q")
_NOT_PREPARED = ("KEYSPACE_DDL", "EXISTING_TABLES", "COMMITLOG_SYNC")


class CassandraStore(CassandraReads, StagedStore):
    """A Store in one Cassandra keyspace, shared by every shard and HTTP replica."""

    max_chunk_bytes = MAX_CHUNK_BYTES
    stage_part_bytes = 1024 * 1024
    #: Reads the durable setting (`durable_sync`) from the node the store connected to.
    durable_query = cql.COMMITLOG_SYNC

    def __init__(self, url: str) -> None:
        StagedStore.__init__(self)
        self._at: Location = location(url)
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, Any] = {}
        #: Per slot, the highest write stamp handed out (from the lease at acquire).
        self._floor: dict[int, int] = {}
        self._last_stamp = 0
        #: Commit id -> its write stamp and, if small, its staged bytes (not yet in rows).
        self._stamps: dict[str, int] = {}
        self._inline: dict[str, bytes] = {}
        #: Per slot, an applied small commit whose id leaves the lease with the next record.
        self._applied: dict[int, str] = {}
        #: Commit id -> the slot its parts are staged under (large commits only).
        self._slot_of: dict[str, int] = {}
        #: id(batch) -> its chunks packed, while `commit` runs.
        self._packed: dict[int, list[PackedChunk]] = {}

    # -- life --------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._session is not None:
            return
        cluster = new_cluster(self._at)
        try:
            with translated(self._at.where, "open"):
                session = await asyncio.to_thread(cluster.connect)
                session.default_fetch_size = None  # every read is bounded by its LIMIT
                await self._check_durable(session)
                await self._create_schema(session)
                await asyncio.to_thread(session.set_keyspace, self._at.keyspace)
                self._prepared = await self._prepare(session)
            self._cluster, self._session = cluster, session
            await self.recover(None)
        except BaseException:
            self._cluster = self._session = None
            await asyncio.to_thread(cluster.shutdown)
            raise

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    async def ping(self) -> None:
        await self._fetch("PING")

    async def _check_durable(self, session: Session) -> None:
        try:
            rows = await run(session, self.durable_query)
        except InvalidRequest:  # no system_views before Cassandra 4.0: cannot tell
            rows = []
        durable_sync(self._at.where, rows[0][0] if rows else None)

    async def _create_schema(self, session: Session) -> None:
        """Make the keyspace and every table missing, each `IF NOT EXISTS`: concurrent opens
        race harmlessly, and the driver waits for schema agreement after each change."""
        prepared = await asyncio.to_thread(session.prepare, cql.EXISTING_TABLES)
        have = {row[0] for row in await run(session, prepared, (self._at.keyspace,))}
        missing = [
            ddl for name, ddl in zip(cql.TABLE_NAMES, cql.TABLES, strict=True) if name not in have
        ]
        if not missing:
            return
        keyspace = cql.KEYSPACE_DDL.format(
            keyspace=self._at.keyspace, rf=self._at.replication_factor
        )
        await run(session, keyspace)
        # All at once: the node applies them one by one, but the driver's wait for schema
        # agreement after each overlaps the others (about 3x faster than in turn).
        named = [ddl.replace("EXISTS ", f"EXISTS {self._at.keyspace}.", 1) for ddl in missing]
        await asyncio.gather(*(run(session, ddl) for ddl in named))

    async def _prepare(self, session: Session) -> dict[str, Any]:
        statements = [
            name
            for name in dir(cql)
            if name.isupper()
            and not name.startswith("_")
            and isinstance(getattr(cql, name), str)
            and name not in _NOT_PREPARED
        ]
        prepared = await asyncio.gather(
            *(asyncio.to_thread(session.prepare, getattr(cql, n)) for n in statements)
        )
        return dict(zip(statements, prepared, strict=True))

    # -- running statements -------------------------------------------------------------------

    def _live(self) -> Session:
        if self._session is None:
            raise StoreUnavailable(f"cassandra store {self._at.where} is not open")
        return self._session

    async def _fetch(
        self, name: str, params: Sequence[Any] = (), *, serial: bool = False
    ) -> list[Row]:
        session = self._live()
        with translated(self._at.where, name.lower()):
            statement = self._prepared[name]
            if serial:
                return await run(session, serial_read(statement, params))
            return await run(session, statement, params)

    async def _write_all(self, units: list[Unit]) -> None:
        """`units` in logged batches (each unit whole in one) of at most `BATCH_BYTES` of
        values and `BATCH_WRITES` statements (`in_batches`), `PARALLEL` at a time. A batch of one
        partition is one mutation: Cassandra writes no batch log for it."""
        session = self._live()
        running = asyncio.Semaphore(PARALLEL)

        async def write(group: Unit) -> None:
            statements = [(self._prepared[name], params) for name, params in group]
            async with running:
                with translated(self._at.where, "commit"):
                    if len(statements) == 1:
                        await run(session, *statements[0])
                    else:
                        await run(session, logged_batch(statements))

        await asyncio.gather(*(write(group) for group in in_batches(units)))

    def _stamp(self, slot: int) -> int:
        """The next write stamp (microseconds): above the clock's, this store's last and
        the slot's floor, so an epoch's writes outrank every earlier epoch's."""
        stamp = max(time.time_ns() // 1000, self._last_stamp + 1, self._floor.get(slot, 0) + 1)
        self._last_stamp = self._floor[slot] = stamp
        return stamp

    # -- commits (storage.staged hooks) ---------------------------------------------------------

    async def commit(self, batch: Batch) -> None:
        """Check and pack the batch's data first: a value the rows cannot hold is refused
        (`Unstorable`) before anything of it is staged or recorded."""
        check_keys(batch)
        size = sum(len(chunk.data) for chunk in batch.chunks)
        if size > OFF_LOOP_BYTES:
            packed = await asyncio.to_thread(pack_chunks, batch.chunks)
        else:
            packed = pack_chunks(batch.chunks)
        # Encodes every record now: a value JSON or UTF-8 cannot hold fails here, not after
        # the commit is recorded (a recorded commit that cannot be applied stops its shard).
        plan(batch, [], Before(), stamp=0, commit_id=f"{time.time_ns():020d}-")
        self._packed[id(batch)] = packed
        try:
            await super().commit(batch)
        finally:
            self._packed.pop(id(batch), None)

    async def _take_lease(self, slot: int, owner: str) -> int:
        while True:
            rows = await self._fetch("READ_LEASE", (slot,), serial=True)
            now = time.time()
            if not rows:
                done = await self._fetch("FIRST_LEASE", (slot, owner, now, 0))
                epoch, last = 1, 0
            else:
                held, last, _ = rows[0]
                epoch = held + 1
                done = await self._fetch("NEXT_LEASE", (epoch, owner, now, slot, held, last))
            if done and done[0][0]:
                self._floor[slot] = max(last or 0, self._floor.get(slot, 0))
                return epoch

    async def _lease_epoch(self, slot: int) -> int | None:
        rows = await self._fetch("READ_LEASE", (slot,), serial=True)
        return None if not rows else rows[0][0]

    async def _stage(self, commit_id: str, slot: int | None, parts: list[bytes]) -> None:
        if sum(len(part) for part in parts) <= INLINE_BYTES:
            self._inline[commit_id] = b"".join(parts)
            return
        key = ADMIN if slot is None else slot
        self._slot_of[commit_id] = key
        # One partition: batches of `BATCH_BYTES`, each one mutation (no batch log).
        await self._write_all(
            [[("STAGE", (key, commit_id, n, part))] for n, part in enumerate(parts)]
        )

    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        key = ADMIN if slot is None else slot
        stamp = self._stamp(key)
        value = _STAMP.pack(stamp) + self._inline.pop(commit_id, b"")
        self._stamps[commit_id] = stamp
        if slot is None:
            await self._fetch("RECORD_ADMIN", (stamp, commit_id, value, ADMIN))
            return
        forget = self._applied.pop(slot, None)
        if forget is None:
            params: tuple[Any, ...] = ("RECORD", (commit_id, value, stamp, slot, epoch))
        else:
            params = ("RECORD_FORGETTING", (commit_id, value, forget, stamp, slot, epoch))
        try:
            rows = await self._fetch(*params)
        except BaseException:
            if forget is not None:
                self._applied.setdefault(slot, forget)
            raise
        if not rows[0][0]:
            if forget is not None:
                self._applied.setdefault(slot, forget)
            rules.check_fence(slot, epoch, rows[0][1] if len(rows[0]) > 1 else None)

    async def _recorded(self, slot: int | None) -> list[str]:
        key = ADMIN if slot is None else slot
        rows = await self._fetch("READ_LEASE", (key,), serial=slot is not None)
        commits = dict(rows[0][2] or {}) if rows else {}
        staged = set(await self._staged_ids(slot)) if commits else set()
        for commit_id, value in commits.items():
            if commit_id not in staged:
                self._slot_of.pop(commit_id, None)
            (self._stamps[commit_id],) = _STAMP.unpack_from(value)
            if len(value) > _STAMP.size:
                self._inline[commit_id] = value[_STAMP.size :]
        return list(commits)

    async def _staged(self, commit_id: str) -> list[bytes]:
        inline = self._inline.pop(commit_id, None)
        if inline is not None:
            return [inline]
        rows = await self._fetch("STAGED", (self._slot_of.get(commit_id, ADMIN), commit_id))
        return [row[0] for row in rows]

    async def _apply(self, batch: Batch, commit_id: str) -> None:
        packed = self._packed.get(id(batch))
        if packed is None:  # a commit finished later, or rolled forward at acquire
            packed = await asyncio.to_thread(pack_chunks, batch.chunks)
        before = await self._before(batch)
        stamp = self._stamps[commit_id]
        writes = plan(batch, packed, before, stamp=stamp, commit_id=commit_id)
        await self._write_all(writes.first)
        await self._write_all(writes.then)

    async def _forget(self, slot: int | None, commit_id: str) -> None:
        """A small commit of a slot leaves the lease with the next record (one LWT less per
        commit; rolling it forward again meanwhile rewrites what it wrote at its stamp);
        any other leaves now, then its parts go."""
        self._stamps.pop(commit_id, None)
        self._inline.pop(commit_id, None)
        staged = commit_id in self._slot_of
        if slot is None:
            await self._fetch("FORGET_ADMIN", (commit_id, self._stamp(ADMIN), ADMIN))
        elif not staged and self._applied.setdefault(slot, commit_id) == commit_id:
            return
        else:
            await self._fetch("FORGET", (commit_id, slot))
        if staged:
            await self._drop(slot, commit_id)

    async def _staged_ids(self, slot: int | None) -> list[str]:
        key = ADMIN if slot is None else slot
        rows = await self._fetch("STAGED_IDS", (key,))
        for (commit_id,) in rows:
            self._slot_of[commit_id] = key
        return [commit_id for (commit_id,) in rows]

    async def _drop(self, slot: int | None, commit_id: str) -> None:
        self._inline.pop(commit_id, None)
        if commit_id in self._slot_of or slot is None:
            await self._fetch("DROP_STAGED", (ADMIN if slot is None else slot, commit_id))
        self._slot_of.pop(commit_id, None)

    async def _before(self, batch: Batch) -> Before:
        """What the batch's writes replace (`Before`), read in one concurrent round."""
        before, wanted = Before(), Wanted.of(batch)

        async def jobs(namespace: str, ids: list[str]) -> None:
            before.jobs.update((job.key, job) for job in await self.get_jobs(namespace, ids))

        async def chunks(key: tuple[str, str, int], seqs: list[int]) -> None:
            rows = await self._fetch("CHUNK_SEQS", (*key, seqs))
            before.chunks.update((*key, seq) for (seq,) in rows)

        async def versions(key: tuple[str, str], numbers: list[int]) -> None:
            rows = await self._fetch("GET_VERSIONS", (*key, numbers))
            before.versions.update((*key, number) for (number,) in rows)

        async def delivery(namespace: str, delivery_id: str) -> None:
            found = await self.get_delivery(namespace, delivery_id)
            if found is not None:
                before.deliveries[(namespace, delivery_id)] = found

        async def doomed(namespace: str, job_id: str) -> None:
            before.doomed_deliveries.extend(await self.list_deliveries(namespace, job_id))

        await asyncio.gather(
            *(jobs(namespace, ids) for namespace, ids in wanted.jobs.items()),
            *(chunks(key, seqs) for key, seqs in wanted.chunks.items()),
            *(versions(key, numbers) for key, numbers in wanted.versions.items()),
            *(delivery(*key) for key in wanted.deliveries),
            *(doomed(*key) for key in wanted.deleted),
        )
        return before

    # -- output purges ----------------------------------------------------------------------

    async def purge_output(
        self, namespace: str, job_id: str, *, fence: tuple[int, int], max_bytes: int
    ) -> bool:
        """One step: fenced by an LWT on the lease that also raises its stamp, then the
        first chunks left (of the lowest version that has any) go at that stamp."""
        slot, epoch = fence
        stamp = self._stamp(slot)
        rows = await self._fetch("FENCE", (stamp, slot, epoch))
        if not rows[0][0]:
            rules.check_fence(slot, epoch, rows[0][1] if len(rows[0]) > 1 else None)
        key = (namespace, job_id)
        left = await self._fetch("PROBE_PURGE", (*key, rules.PURGE_STEP_CHUNKS))
        if left:
            version, last = rules.purge_step([row[:3] for row in left], max_bytes)
            removed = [row[1:] for row in left if row[0] == version and row[1] <= last]
            await self._write_all([_purge_step(key, version, last, removed, stamp)])
            return False
        purge = await self._fetch("GET_PURGE", key)
        done: Unit = [("DELETE_PURGE", (stamp, *key))]
        if purge and purge[0][0] is not None:
            where = (purge[0][0], cql.PURGING, purge[0][1], *key)
            done.append(("DELETE_INDEXED", (stamp, *where)))
        await self._write_all([done])
        return True


def _purge_step(
    key: tuple[str, str], version: int, last: int, removed: list[Row], stamp: int
) -> Unit:
    """The deletes of one purge step: chunks of `version` up to seq `last` (`removed`:
    their (seq, offset, parts))."""
    writes: Unit = [
        ("PURGE_CHUNKS", (stamp, *key, version, last)),
        ("PURGE_OFFSETS", (stamp, *key, version, max(offset for _, offset, _ in removed))),
    ]
    writes += [
        ("PURGE_PARTS", (stamp, *key, version, seq)) for seq, _, parts in removed if parts > 1
    ]
    return writes
