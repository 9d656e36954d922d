"""The Python client's producer: pipelined appends to one job, from blocking code.

    with client.producer("default", "job-1", seq=1) as producer:
        for line in lines:
            producer.write(line)          # queued; many chunks in flight
        acks = producer.flush()           # every chunk so far is durable

The same pipeline as the producer WebSocket (`actors.pipeline.AppendPipeline`): rounds of
`append_many`, one in flight, each one group commit. Async code can use that pipeline
directly with `client.shards`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from actors.pipeline import AppendPipeline, PipelineLimits
from actors.shard_client import ShardClient
from actors.shard_types import AppendAck
from cluster.blocking import run as _run_blocking

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


class Producer:
    """Writes chunks to one job; `write` returns once the chunk is queued, `flush` once
    every chunk written so far is durable.

    With `seq`, the first chunk written has that seq and the next ones follow, so a
    producer that starts again after a failure resends from its first unacknowledged seq
    (`last_ack.seq + 1`) and the chunks already written are acknowledged, not repeated.
    The first chunk that fails stops the producer: `write` and `flush` raise its error
    (`storage.errors`: `Invalid`, `TooLarge`, `Conflict`, `Overloaded`,
    `StoreUnavailable`, `ShardUnavailable`, ...); the chunks before it are durable and
    `last_ack` is the last of them; that chunk and the later ones were not written.
    """

    def __init__(self, pipeline: AppendPipeline, *, run: Runner[Any] = _run_blocking) -> None:
        self._pipeline = pipeline
        self._run = run
        self._acks: list[AppendAck] = []
        self._written = 0
        self._settled = 0
        self._error: BaseException | None = None
        self._done = False
        self._changed = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        #: The last chunk acknowledged (durable), in this producer's life.
        self.last_ack: AppendAck | None = None

    @classmethod
    def open(
        cls,
        shards: ShardClient,
        namespace: str,
        job_id: str,
        *,
        seq: int | None = None,
        version: int | None = None,
        limits: PipelineLimits | None = None,
        run: Runner[Any] = _run_blocking,
    ) -> Producer:
        """A started producer (its pipeline runs on `run`'s event loop)."""
        pipeline = AppendPipeline(
            shards, namespace, job_id, first_seq=seq, version=version, limits=limits
        )
        producer = cls(pipeline, run=run)
        run(producer._start())
        return producer

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, data: bytes | str) -> None:
        """Queue the next chunk (text is UTF-8 encoded); waits while the pipeline's queue is
        full. Raises the error that stopped the producer, if one did."""
        self._run(self._write(data.encode() if isinstance(data, str) else data))

    def flush(self) -> list[AppendAck]:
        """Wait until every chunk written so far is durable; their acks since the last
        flush, in order. Raises the error that stopped the producer, if one did."""
        acks: list[AppendAck] = self._run(self._flush())
        return acks

    def close(self) -> list[AppendAck]:
        """`flush`, then stop."""
        try:
            return self.flush()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop now: chunks not yet acknowledged may or may not be written, each one whole."""
        self._run(self._stop())

    # -- on the event loop ------------------------------------------------------------------

    async def _start(self) -> None:
        self._pipeline.start()
        self._collector = asyncio.get_running_loop().create_task(self._collect())

    async def _write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        await self._pipeline.put(data)
        self._written += 1

    async def _flush(self) -> list[AppendAck]:
        while self._settled < self._written and self._error is None and not self._done:
            self._changed.clear()
            await self._changed.wait()
        if self._error is not None:
            raise self._error
        acks, self._acks = self._acks, []
        return acks

    async def _collect(self) -> None:
        try:
            async for result in self._pipeline.results():
                self._acks.extend(result.acks)
                self._settled += len(result.acks)
                if result.acks:
                    self.last_ack = result.acks[-1]
                if result.error is not None:
                    self._error = result.error
                self._changed.set()
        except Exception as exc:  # a bug in the pipeline (it logged it): fail the caller
            self._error = exc
        finally:
            self._done = True
            self._changed.set()

    async def _stop(self) -> None:
        await self._pipeline.aclose()
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        self._done = True


__all__ = ["PipelineLimits", "Producer"]
