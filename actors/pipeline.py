"""One producer's chunks to one job, pipelined: while a round is in flight the next one
queues, and each round is one `append_many` call (one group commit on the shard).

The WebSocket producer (`serve_app.producer`) and the Python client's `Producer`
(`cluster.producer`) are this pipeline with their own input and output. Like the group
commit, it clocks itself: one round in flight at a time, so rounds grow with the load
(up to `PipelineLimits.round_chunks`) and the shard sees every chunk in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from actors.commands import check_job_id, check_seq, check_version
from actors.limits import check_chunk
from actors.shard_client import ShardClient
from actors.shard_types import AppendManyResult
from storage.errors import AosError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    #: One round (one `append_many` call) carries at most this many chunks and bytes (always
    #: at least one chunk, whatever its size).
    round_chunks: int = 256
    round_bytes: int = 4 * 1024 * 1024
    #: Chunks waiting behind the round in flight: `put` waits past these (backpressure).
    queued_chunks: int = 1024
    queued_bytes: int = 16 * 1024 * 1024
    #: Rounds whose results the consumer has not taken yet: the next round waits past this.
    results: int = 4


class PipelineClosed(RuntimeError):
    """`put` after `end()` or `aclose()`."""


class AppendPipeline:
    """Chunks in (`put`), results out (`results`), one `append_many` round at a time.

    Chunk i of the pipeline has seq `first_seq + i` when `first_seq` is given (a producer
    resuming after a disconnect resends from its first unacknowledged seq; chunks already
    written are acknowledged again, not repeated), else each round goes after the job's
    end. The first chunk refused (by the shard, by `ShardClient`'s checks, or by the
    caller through `refuse`) stops the pipeline: the chunks before it are appended and
    acknowledged, the ones after it never reach the shard. Every chunk goes to one output
    version: `version`, else the one the first round went to (the latest then); once a
    later version starts, the next chunk is refused (`Conflict`). Use as `async with`, or
    `start()` and `aclose()`. A bad namespace, job id, `first_seq` or `version` raises
    here (`Invalid`, `TooLarge`).
    """

    def __init__(
        self,
        shards: ShardClient,
        namespace: str,
        job_id: str,
        *,
        first_seq: int | None = None,
        version: int | None = None,
        limits: PipelineLimits | None = None,
    ) -> None:
        shards.owner(namespace)  # checks it, as the job id and seq: refused before any chunk
        self._shards = shards
        self._namespace, self._job_id = namespace, check_job_id(job_id)
        self._next_seq = check_seq(first_seq)
        self._version = check_version(version)
        self._limits = limits or PipelineLimits()
        self._queue: collections.deque[bytes | AosError] = collections.deque()
        self._queued_bytes = 0
        #: One writer (`put`) and one reader (the round loop) wait on these.
        self._room = asyncio.Event()
        self._ready = asyncio.Event()
        self._results: asyncio.Queue[AppendManyResult | None] = asyncio.Queue(
            maxsize=self._limits.results
        )
        self._ended = False
        self._closed = False
        self._error: AosError | None = None
        self._refused: AosError | None = None
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AppendPipeline:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def put(self, data: bytes) -> None:
        """Queue the next chunk, waiting while the queue is full. A chunk `ShardClient`
        would refuse (empty, over `max_chunk_bytes`) is refused here (`refuse`), without
        queueing its bytes. Raises the error that stopped the pipeline, if one did."""
        try:
            data = check_chunk(data, self._shards.max_chunk_bytes)
        except AosError as exc:
            self.refuse(exc)
            return
        while not self._has_room(len(data)):
            self._room.clear()
            await self._room.wait()
        self._raise_if_stopped()
        self._queue.append(data)
        self._queued_bytes += len(data)
        self._ready.set()

    def refuse(self, error: AosError) -> None:
        """The caller's next chunk is bad (`error`): the chunks queued before it are still
        appended, then the pipeline stops with `error` at that chunk."""
        self._raise_if_stopped()
        self._queue.append(error)
        self._refused = error
        self._wake()

    def end(self) -> None:
        """No more chunks: the results end after those queued."""
        self._ended = True
        self._wake()

    async def results(self) -> AsyncIterator[AppendManyResult]:
        """Each round's result, in order, until the pipeline ends or a result carries an
        error (the last one). Raises what broke the pipeline if it was not one of ours (a
        bug; it is logged too)."""
        while (result := await self._results.get()) is not None:
            yield result
            if result.error is not None:
                return
        if self._failure is not None:
            raise self._failure

    async def aclose(self) -> None:
        """Stop now: what is queued is dropped, a round in flight is abandoned (the shard
        commits a round whole or not at all)."""
        self._closed = True
        self._wake()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the round loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while (items := await self._take()) is not None:
                result = await self._append(items)
                await self._results.put(result)
                if result.error is not None:
                    self._error = result.error
                    self._wake()
                    return
        except Exception as exc:  # a bug: report it to the consumer rather than hang it
            log.exception("append pipeline of %s/%s failed", self._namespace, self._job_id)
            self._failure = exc
        await self._results.put(None)

    async def _take(self) -> list[bytes | AosError] | None:
        """The next round: queued items up to the limits, ending at a refused one."""
        while not self._queue and not self._ending:
            self._ready.clear()
            await self._ready.wait()
        items: list[bytes | AosError] = []
        size = 0
        while self._queue and len(items) < self._limits.round_chunks:
            item = self._queue[0]
            if isinstance(item, bytes):
                if items and size + len(item) > self._limits.round_bytes:
                    break
                size += len(item)
            items.append(self._queue.popleft())
            if not isinstance(item, bytes):
                break
        self._queued_bytes -= size
        self._room.set()
        return items or None

    async def _append(self, items: list[bytes | AosError]) -> AppendManyResult:
        chunks = [item for item in items if isinstance(item, bytes)]
        refused = items[-1] if isinstance(items[-1], AosError) else None
        result = AppendManyResult()
        if chunks:
            try:
                result = await self._shards.append_many(
                    self._namespace,
                    self._job_id,
                    chunks,
                    first_seq=self._next_seq,
                    version=self._version,
                )
            except AosError as exc:  # the shard is unavailable: this round's fate is unknown
                return AppendManyResult((), exc)
        if self._version is None and result.acks:
            self._version = result.acks[0].version
        if self._next_seq is not None:
            self._next_seq += len(result.acks)
        if result.error is None and refused is not None:
            return AppendManyResult(result.acks, refused)
        return result

    # -- helpers ------------------------------------------------------------------------------

    def _has_room(self, size: int) -> bool:
        if self._stopped:
            return True  # to raise
        if len(self._queue) >= self._limits.queued_chunks:
            return False
        return not self._queued_bytes or self._queued_bytes + size <= self._limits.queued_bytes

    @property
    def _ending(self) -> bool:
        """No chunk will be queued after those that are."""
        return self._ended or self._refused is not None

    @property
    def _stopped(self) -> bool:
        return self._closed or self._ending or self._error is not None

    def _raise_if_stopped(self) -> None:
        error = self._error or self._refused
        if error is not None:
            raise error
        if self._closed or self._ended:
            raise PipelineClosed("this producer was ended or closed")

    def _wake(self) -> None:
        self._room.set()
        self._ready.set()
