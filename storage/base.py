"""The Store protocol: the one seam between the service and its databases.

It speaks the service's domain, not SQL, so document and wide-column stores fit
the same shape. Every method is a coroutine and never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from storage.records import (
    ApiKey,
    Batch,
    Chunk,
    Delivery,
    ExpiryCursor,
    Job,
    JobQuery,
    Namespace,
)


@runtime_checkable
class Store(Protocol):
    """Durable state. `commit` is atomic and durable when it returns."""

    #: The largest `Chunk.data` this backend stores in one row; larger appends are refused.
    max_chunk_bytes: int

    async def open(self) -> None:
        """Connect, create or migrate the schema, and check the durable settings."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    async def commit(self, batch: Batch) -> None:
        """Write the whole batch in one transaction; raise `Fenced` on a stale epoch."""

    async def acquire_shard(self, slot: int, owner: str) -> int:
        """Take the lease of `slot`: bump and return its fencing epoch."""

    async def load_shard(self, slot: int) -> list[Job]:
        """The non-terminal jobs of `slot`."""

    async def expired_jobs(
        self, slot: int, *, now: float, after: ExpiryCursor | None = None, limit: int = 100
    ) -> list[Job]:
        """The terminal jobs of `slot` whose `expires_at` is at or before `now`, the earliest
        first (ordered by expires_at, namespace, job_id), only those after `after` when
        given, at most `limit`. Served by an index: its cost follows the jobs it returns,
        not the jobs the slot holds."""

    async def get_job(self, namespace: str, job_id: str) -> Job | None: ...

    async def get_jobs(self, namespace: str, job_ids: Sequence[str]) -> list[Job]:
        """The jobs of `namespace` among `job_ids` that exist, in any order (a batch
        submit's look-up: one read for many ids)."""

    async def list_jobs(self, namespace: str, query: JobQuery) -> list[Job]:
        """Jobs of `namespace` matching `query`, newest first (created_at, job_id descending)."""

    async def read_output(
        self, namespace: str, job_id: str, *, version: int = 1, after_seq: int = 0, limit: int = 256
    ) -> list[Chunk]:
        """Chunks with seq > after_seq, in seq order, at most `limit`."""

    async def get_namespace(self, name: str) -> Namespace | None: ...

    async def get_api_key(self, key_id: str) -> ApiKey | None: ...

    async def load_pending_deliveries(self, slot: int) -> list[Delivery]: ...

    async def list_deliveries(self, namespace: str, job_id: str) -> list[Delivery]: ...

    async def get_delivery(self, namespace: str, delivery_id: str) -> Delivery | None: ...


def open_store(url: str) -> Store:
    """The backend for `url` (not yet opened): sqlite:///path, postgresql://..., memory://."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from storage.sqlite import SqliteStore

        return SqliteStore(url)
    if scheme in ("postgresql", "postgres"):
        from storage.postgres import PostgresStore

        return PostgresStore(url)
    if scheme == "memory":
        from storage.memory import MemoryStore

        return MemoryStore()
    raise ValueError(f"unsupported storage URL scheme {scheme!r} in {url!r}")
