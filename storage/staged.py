"""Group commits for databases without a transaction big enough for one: staged, recorded on
the shard's lease, then applied.

DynamoDB's transactions hold 100 items and 4 MB, MongoDB has none without a replica set, and
Cassandra's conditional writes never span partitions. A `StagedStore` commits a `Batch` so
that it survives a crash between its parts and is all or nothing once the shard is
reopened:

1. **stage**: the batch, encoded (`encode`), is written in parts of at most the backend's
   item size under a new commit id. Nothing reads these.
2. **record**: the commit id is added to the slot's lease in one single-item conditional
   write that holds only while the lease has the commit's epoch. This is the commit point;
   `Fenced` if a newer owner took the lease.
3. **apply**: the writes go to their tables, each idempotent and guarded by the epoch (a
   row a newer owner wrote is left alone), in `VISIBILITY` order: a job's record after
   its output, versions and deliveries, so a reader that reads a job, then its output up
   to the job's `output_seq`, never sees part of a commit.
4. **forget**: the id leaves the lease, the parts are dropped. Then `commit` returns.

`acquire_shard` takes the lease (a new epoch, so the old owner can record nothing more),
applies every commit still recorded on it, in id order, and drops parts nobody recorded.
A commit that failed after its record may be recorded: this store finishes it (applies or
drops it, whichever its record says) before its next call, reads included (`READS`), so a
shard that reloads what did not commit reads the truth, and never reuses a seq whose chunk
such a commit holds.

A backend supplies the hooks below; it may commit a batch at once where its database can
(`_commit_at_once`, e.g. one DynamoDB transaction) and take the staged path otherwise.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import secrets
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from storage import rules
from storage.errors import Fenced, StoreUnavailable
from storage.records import (
    ApiKey,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    Job,
    Namespace,
    OutputVersion,
)

#: The order `_apply` writes a batch's parts in (`Batch` field names; "deleted" last, as
#: a delete removes what the batch itself upserted).
VISIBILITY = (
    "chunks",
    "versions",
    "deliveries",
    "namespaces",
    "api_keys",
    "audit",
    "jobs",
    "deleted",
)

_LENGTH = struct.Struct(">Q")
T = TypeVar("T")
#: Set in the task finishing a store's unfinished commits, and so in the tasks it starts.
_FINISHING: contextvars.ContextVar[bool] = contextvars.ContextVar("finishing", default=False)


#: Admin commits staged and never recorded are dropped by the next `open` this long after.
ADMIN_STAGE_TTL_S = 600.0


def new_commit_id() -> str:
    """Ordered by time (nanoseconds, 20 digits), unique by 64 random bits."""
    return f"{time.time_ns():020d}-{secrets.token_hex(8)}"


def _id_at(at_s: float) -> str:
    """The smallest commit id made at `at_s` (epoch seconds)."""
    return f"{int(at_s * 1e9):020d}-"


# -- encoding ---------------------------------------------------------------------------


def encode(batch: Batch) -> bytes:
    """`batch` as bytes: a JSON header, then the chunks' data and the deliveries' payloads
    as raw blobs (no base64), each after its 8-byte length."""
    blobs: list[bytes] = []

    def blob(data: bytes) -> int:
        blobs.append(data)
        return len(blobs) - 1

    header = {
        "slot": batch.slot,
        "epoch": batch.epoch,
        "jobs": [_plain(job) for job in batch.jobs],
        "chunks": [{**_plain(c, skip="data"), "data": blob(c.data)} for c in batch.chunks],
        "versions": [_plain(v) for v in batch.versions],
        "deleted": [list(key) for key in batch.deleted],
        "deliveries": [
            {**_plain(d, skip="payload"), "payload": blob(d.payload)} for d in batch.deliveries
        ],
        "namespaces": [_plain(ns) for ns in batch.namespaces],
        "api_keys": [_plain(key) for key in batch.api_keys],
        "audit": [_plain(entry) for entry in batch.audit],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    out = [_LENGTH.pack(len(head)), head]
    for data in blobs:
        out += [_LENGTH.pack(len(data)), data]
    return b"".join(out)


def decode(data: bytes) -> Batch:
    """The batch `encode` made. Raises `StoreUnavailable` on bytes it did not make."""
    try:
        sections = _sections(memoryview(data))
        header = json.loads(bytes(sections[0]))
        blobs = [bytes(section) for section in sections[1:]]
        return Batch(
            slot=header["slot"],
            epoch=header["epoch"],
            jobs=[Job.from_plain(values) for values in header["jobs"]],
            chunks=[Chunk(**{**c, "data": blobs[c["data"]]}) for c in header["chunks"]],
            versions=[OutputVersion(**v) for v in header["versions"]],
            deleted=[(ns, job_id) for ns, job_id in header["deleted"]],
            deliveries=[Delivery.from_plain(d, blobs[d["payload"]]) for d in header["deliveries"]],
            namespaces=[Namespace(**ns) for ns in header["namespaces"]],
            api_keys=[
                ApiKey(**{**k, "namespaces": tuple(k["namespaces"])}) for k in header["api_keys"]
            ],
            audit=[AuditEntry(**entry) for entry in header["audit"]],
        )
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
        raise StoreUnavailable("a staged commit in the store cannot be read") from exc


def _sections(data: memoryview) -> list[memoryview]:
    sections, at = [], 0
    while at < len(data):
        (size,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        if at + size > len(data):
            raise ValueError("a staged commit is cut short")
        sections.append(data[at : at + size])
        at += size
    return sections


def _plain(record: Any, skip: str | None = None) -> dict[str, Any]:
    values = asdict(record)  # bytes are immutable: not copied
    if skip is not None:
        del values[skip]
    return values


# -- the protocol ------------------------------------------------------------------------


#: The Store reads a `StagedStore` answers only once no commit of its own is unfinished.
READS = (
    "load_shard",
    "expired_jobs",
    "get_job",
    "get_jobs",
    "list_jobs",
    "read_output",
    "read_output_at",
    "list_versions",
    "load_purges",
    "purge_output",
    "get_namespace",
    "get_api_key",
    "load_pending_deliveries",
    "list_deliveries",
    "get_delivery",
)


def _after_unfinished(read: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(read)
    async def settled(self: StagedStore, *args: Any, **kwargs: Any) -> T:
        await self._finish_unfinished()
        return await read(self, *args, **kwargs)

    settled.__wrapped_reads__ = True  # type: ignore[attr-defined]
    return settled


@dataclass(frozen=True, slots=True)
class _Unfinished:
    """A commit that failed at or after its record: it may be recorded."""

    commit_id: str
    batch: Batch


class StagedStore(ABC):
    """The commit protocol above; a backend implements the hooks. `slot` None is an admin
    commit (namespaces, keys): recorded on a lease of its own, with no epoch to hold."""

    #: The largest part of a staged commit, in bytes: under the backend's item limit.
    stage_part_bytes: int

    def __init__(self) -> None:
        self._unfinished: list[_Unfinished] = []
        self._finish_lock = asyncio.Lock()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in READS:
            read = getattr(cls, name, None)
            if read is not None and not getattr(read, "__wrapped_reads__", False):
                setattr(cls, name, _after_unfinished(read))

    async def commit(self, batch: Batch) -> None:
        await self._finish_unfinished()
        if not len(batch):
            if batch.slot is not None:  # an empty fenced batch still proves the lease
                rules.check_fence(batch.slot, batch.epoch, await self._lease_epoch(batch.slot))
            return
        if await self._commit_at_once(batch):
            return
        commit_id = new_commit_id()
        await self._stage(commit_id, batch.slot, rules.parts(encode(batch), self.stage_part_bytes))
        try:
            await self._record(batch.slot, batch.epoch, commit_id)
        except StoreUnavailable as exc:
            if isinstance(exc, Fenced):  # the condition refused it: nothing was recorded
                await self._drop(batch.slot, commit_id)
            else:
                self._unfinished.append(_Unfinished(commit_id, batch))
            raise
        try:
            await self._apply(batch, commit_id)
            await self._forget(batch.slot, commit_id)
        except BaseException:
            self._unfinished.append(_Unfinished(commit_id, batch))
            raise

    async def acquire_shard(self, slot: int, owner: str) -> int:
        """Take the lease, then finish every commit recorded on it and drop the parts of those
        never recorded (the old owner's, now fenced)."""
        await self._finish_unfinished()
        epoch = await self._take_lease(slot, owner)
        await self.recover(slot)
        return epoch

    async def recover(self, slot: int | None) -> None:
        """Finish the commits recorded on `slot`'s lease, in order, and drop the parts of
        commits never recorded: all of them for a slot just taken (their owner is fenced),
        only those older than `ADMIN_STAGE_TTL_S` for admin commits (`slot` None: run at
        `open`, while other processes may be staging theirs)."""
        recorded = sorted(await self._recorded(slot))
        for commit_id in recorded:
            batch = decode(b"".join(await self._staged(commit_id)))
            await self._apply(batch, commit_id)
            await self._forget(slot, commit_id)
        oldest = new_commit_id() if slot is not None else _id_at(time.time() - ADMIN_STAGE_TTL_S)
        for commit_id in await self._staged_ids(slot):
            if commit_id not in recorded and commit_id < oldest:
                await self._drop(slot, commit_id)

    async def _finish_unfinished(self) -> None:
        """Finish what `_unfinished` holds; every other caller waits for it. The finishing
        task and the tasks it starts (an apply may read) go on: they are the finishing."""
        if not self._unfinished or _FINISHING.get():
            return
        async with self._finish_lock:
            token = _FINISHING.set(True)
            try:
                while self._unfinished:
                    unfinished = self._unfinished[0]
                    slot = unfinished.batch.slot
                    if unfinished.commit_id in await self._recorded(slot):
                        await self._apply(unfinished.batch, unfinished.commit_id)
                        await self._forget(slot, unfinished.commit_id)
                    else:
                        await self._drop(slot, unfinished.commit_id)
                    self._unfinished.pop(0)
            finally:
                _FINISHING.reset(token)

    async def _commit_at_once(self, batch: Batch) -> bool:
        """Commit `batch` in one native transaction, fenced, if the database can; False to
        take the staged path."""
        return False

    # -- hooks -------------------------------------------------------------------------

    @abstractmethod
    async def _take_lease(self, slot: int, owner: str) -> int:
        """Bump the slot's epoch (from 1) and set its owner, atomically; the new epoch."""

    @abstractmethod
    async def _lease_epoch(self, slot: int) -> int | None:
        """The slot's epoch as the store holds it now (a consistent read); None if unleased."""

    @abstractmethod
    async def _stage(self, commit_id: str, slot: int | None, parts: list[bytes]) -> None:
        """Store `parts` (in order) under `commit_id`, findable by `slot`."""

    @abstractmethod
    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        """Add `commit_id` to the slot's lease in one conditional write that holds only while
        the lease has `epoch` (raise `Fenced` by `rules.check_fence` otherwise). An admin
        commit (`slot` None) has its own lease and no epoch."""

    @abstractmethod
    async def _recorded(self, slot: int | None) -> list[str]:
        """The commit ids recorded on the slot's lease (a consistent read)."""

    @abstractmethod
    async def _staged(self, commit_id: str) -> list[bytes]:
        """The parts staged under `commit_id`, in order."""

    @abstractmethod
    async def _apply(self, batch: Batch, commit_id: str) -> None:
        """Write `batch` to its tables in `VISIBILITY` order. Every write is idempotent (a
        chunk, a version or an audit entry already there stays) and, for a fenced batch,
        leaves alone a row written at a newer epoch than `batch.epoch`."""

    @abstractmethod
    async def _forget(self, slot: int | None, commit_id: str) -> None:
        """Remove `commit_id` from the lease, then drop its parts. Idempotent."""

    @abstractmethod
    async def _staged_ids(self, slot: int | None) -> list[str]:
        """The commit ids with parts staged for `slot`, recorded or not."""

    @abstractmethod
    async def _drop(self, slot: int | None, commit_id: str) -> None:
        """Drop the parts staged under `commit_id`. Idempotent."""
