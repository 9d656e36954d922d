"""The Store protocol: the one seam between the service and its databases.

It speaks the service's domain, not SQL, so document and wide-column stores fit
the same shape. Every method is a coroutine and never blocks the event loop. Backends are
found by URL scheme (`storage.registry`); what they must all do alike is written once in
`storage.rules`, and stores without big enough transactions commit by `storage.staged`.
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
    OutputVersion,
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
        self,
        namespace: str,
        job_id: str,
        *,
        version: int = 1,
        after_seq: int = 0,
        limit: int = 256,
        max_bytes: int | None = None,
    ) -> list[Chunk]:
        """Chunks with seq > after_seq, in seq order: at most `limit`, and with `max_bytes`
        only those that start within `max_bytes` of the first one's offset (so a page holds
        at most `max_bytes` plus one chunk; never fewer than one chunk)."""

    async def list_versions(self, namespace: str, job_id: str) -> list[OutputVersion]:
        """The output versions of a job that a later version completed (`Batch.versions`),
        in version order; the latest version is the job's own (`Job.current_version`)."""

    async def load_purges(self, slot: int) -> list[tuple[str, str]]:
        """The (namespace, job_id) of the jobs of `slot` deleted whose output is still being
        removed (`purge_output`), oldest first."""

    async def purge_output(
        self, namespace: str, job_id: str, *, fence: tuple[int, int], max_bytes: int
    ) -> bool:
        """Remove the next chunks of a deleted job's output (a commit's `deleted` makes them
        unreadable at once): those that start within `max_bytes` of the first left, in one
        transaction fenced as a commit is (`Fenced`: `fence` is (slot, epoch)). True once
        nothing is left and the job's purge record is gone too."""

    async def read_output_at(
        self,
        namespace: str,
        job_id: str,
        *,
        version: int = 1,
        offset: int,
        limit: int = 256,
        max_bytes: int | None = None,
    ) -> list[Chunk]:
        """The chunk holding byte `offset` of the output and those after it, in seq order, a
        page as `read_output` makes it (`limit`, `max_bytes`); none when `offset` is at or
        past the end. Costs an index look-up, not a
        scan of the chunks before `offset` (a Range request near the end of a large output)."""

    async def get_namespace(self, name: str) -> Namespace | None: ...

    async def get_api_key(self, key_id: str) -> ApiKey | None: ...

    async def load_pending_deliveries(self, slot: int) -> list[Delivery]: ...

    async def list_deliveries(self, namespace: str, job_id: str) -> list[Delivery]: ...

    async def get_delivery(self, namespace: str, delivery_id: str) -> Delivery | None: ...
