"""The shard's side of the webhook dispatcher: concurrent sends batched into streaming calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from actors.limits import MAX_ATTEMPT_ERROR_CHARS, clip
from actors.webhooks.dispatcher import MAX_BATCH, Outgoing
from storage.records import Attempt, Delivery


class DispatcherClient:
    """The shard's side: batches concurrent sends into streaming `deliver_many` calls.

    Batching is self-clocking, like group commit: at most `max_starting` calls are
    starting at once, and sends queue meanwhile, so batches grow with the load. A call
    stops counting as starting at its first outcome or after `START_S`, so a batch with
    a hanging receiver never holds back the next one.
    """

    START_S = 0.05

    def __init__(
        self, handle: Callable[[], Any], *, max_batch: int = MAX_BATCH, max_starting: int = 2
    ) -> None:
        self._handle = handle
        self._max_batch = max_batch
        self._starting = asyncio.Semaphore(max_starting)
        self._queue: list[tuple[Outgoing, asyncio.Future[Attempt]]] = []
        self._pump: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def send(self, delivery: Delivery, secrets: tuple[str, ...], timeout_s: float) -> Attempt:
        item = Outgoing(delivery.delivery_id, delivery.url, delivery.payload, secrets, timeout_s)
        future: asyncio.Future[Attempt] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            await self._starting.acquire()
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            started = _Once(self._starting.release)
            loop.call_later(self.START_S, started)
            task = loop.create_task(self._call(batch, started))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(
        self, batch: list[tuple[Outgoing, asyncio.Future[Attempt]]], started: _Once
    ) -> None:
        begun = time.time()
        try:
            stream = self._handle().options(stream=True).deliver_many.remote([b[0] for b in batch])
            async for outcomes in stream:
                started()
                for index, attempt in outcomes:
                    if not batch[index][1].done():
                        batch[index][1].set_result(attempt)
        except Exception as exc:  # the dispatcher is down or restarting: an attempt that failed
            _settle(batch, begun, f"dispatcher unavailable: {type(exc).__name__}: {exc}")
        finally:
            started()
        _settle(batch, begun, "the dispatcher returned no outcome")


class _Once:
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        if self._fn is not None:
            fn, self._fn = self._fn, None
            fn()


def _settle(
    batch: list[tuple[Outgoing, asyncio.Future[Attempt]]], started: float, error: str
) -> None:
    for _, future in batch:
        if not future.done():
            clipped = clip(error, MAX_ATTEMPT_ERROR_CHARS)
            future.set_result(Attempt(started, (time.time() - started) * 1000, None, clipped))
