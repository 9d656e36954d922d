"""Fakes shared by unit tests: a clock that moves only when told, a store that fails on cue."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from actors.shard import Shard
from storage.errors import StoreUnavailable
from storage.memory import MemoryStore
from storage.records import Batch, Chunk

WAIT_S = 2.0


class FakeClock:
    """Seconds since the epoch, moved by `advance` only."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class GatedStore(MemoryStore):
    """The in-memory store, whose commits can be held at a gate, made to fail (all, or those
    after the first `fail_after`), or refused when a job's title holds `unstorable`, as a
    real store refuses data it cannot hold (its error quoting the data)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_commits = False
        self.fail_after: int | None = None
        self.unstorable: str | None = None
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()  # set when a commit reaches the gate
        self.attempts = 0  # commits past the gate, refused and failed ones too
        self.commits: list[Batch] = []
        self.reads = 0

    async def ping(self) -> None:
        if self.fail_commits:  # a store that fails its commits is down: it fails pings too
            raise StoreUnavailable("injected ping failure")
        await super().ping()

    async def commit(self, batch: Batch) -> None:
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        self.attempts += 1
        if self.fail_commits or (self.fail_after is not None and self.attempts > self.fail_after):
            raise StoreUnavailable("injected commit failure")
        for job in batch.jobs:
            if self.unstorable is not None and self.unstorable in (job.title or ""):
                raise ValueError(f"cannot store the title {job.title!r}")
        self.commits.append(batch)
        await super().commit(batch)

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
        self.reads += 1
        return await super().read_output(
            namespace,
            job_id,
            version=version,
            after_seq=after_seq,
            limit=limit,
            max_bytes=max_bytes,
        )


async def until(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = WAIT_S
) -> None:
    """Poll `condition` (sync or async) while other tasks run; fail the test if it is not
    met in time."""
    deadline = time.monotonic() + timeout_s
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    met = condition()
    return await met if inspect.isawaitable(met) else met


class Watched:
    """The shard, saying when a caller has entered `watch` (where it waits for a commit)."""

    def __init__(self, shard: Shard) -> None:
        self._shard = shard
        self.watching = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)

    async def watch(self, namespace: str, **options: Any) -> Any:
        self.watching.set()
        return await self._shard.watch(namespace, **options)
