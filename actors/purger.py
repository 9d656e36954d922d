"""A deleted job's output, removed in bounded steps after its delete has committed.

A delete commits at once: the job, its deliveries and (to every reader) its output are
gone, and the store keeps a purge record. The output itself goes here, one short
transaction of about `PURGE_STEP_BYTES` at a time (`Store.purge_output`), so deleting a
10 GB job never holds the store's write lock for long and other jobs' writes go on
between steps. Until its purge ends the job's id stays taken (in `deleting`): a submit of
it waits. A shard resumes the purges its slot left unfinished (`Store.load_purges`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from actors.job_table import Key
from storage.base import Store
from storage.errors import Fenced, StoreUnavailable

log = logging.getLogger(__name__)

#: About this many bytes of output go in one purge step (one transaction).
PURGE_STEP_BYTES = 4 * 1024 * 1024
#: After each step the purger waits at least this long, and at least as long as the step
#: took: other writers (every shard of a SQLite file shares its one write lock) get the
#: store at least half the time, so a big delete never starves them.
MIN_PAUSE_S = 0.02
#: A step the store could not take is tried again after this many seconds.
RETRY_S = 1.0


class Purger:
    """Removes deleted jobs' output, one job after another; `deleting` holds each job's
    key (added by the shard before its delete commits) until its output is gone."""

    def __init__(self, store: Store, slot: int, deleting: set[Key]) -> None:
        self._store = store
        self._slot = slot
        self._epoch = 0
        self._deleting = deleting
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._done: dict[Key, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self, epoch: int, keys: list[Key]) -> None:
        """Purge as shard `epoch` (the fence of every step), beginning with `keys`."""
        self._epoch = epoch
        for key in keys:
            self.add(key)
        self._task = asyncio.create_task(self._run(), name=f"purger-{self._slot}")

    def add(self, key: Key) -> None:
        """Purge the output of `key`, whose delete has committed."""
        self._deleting.add(key)
        self._done.setdefault(key, asyncio.Event())
        self._queue.put_nowait(key)

    async def wait(self, key: Key) -> None:
        """Until `key`'s purge, if one is queued or running, has ended."""
        done = self._done.get(key)
        if done is not None:
            await done.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            key = await self._queue.get()
            try:
                await self._purge(key)
            except Fenced:
                log.warning("shard %s is fenced: its purges are left to the new owner", self._slot)
                return
            self._deleting.discard(key)
            self._done.pop(key).set()

    async def _purge(self, key: Key) -> None:
        fence = (self._slot, self._epoch)
        while True:
            started = time.monotonic()
            try:
                if await self._store.purge_output(*key, fence=fence, max_bytes=PURGE_STEP_BYTES):
                    return
            except Fenced:
                raise
            except StoreUnavailable:
                await asyncio.sleep(RETRY_S)
                continue
            await asyncio.sleep(max(MIN_PAUSE_S, time.monotonic() - started))
