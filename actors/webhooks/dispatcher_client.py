"""The shard's side of the webhook dispatcher: concurrent sends batched into streaming calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.limits import MAX_ATTEMPT_ERROR_CHARS, clip
from actors.webhooks.delivery import Sending
from actors.webhooks.dispatcher import MAX_BATCH, Outgoing
from storage.records import Attempt, Delivery

Outcomes = list[tuple[int, Attempt]]


@dataclass(slots=True)
class _Sink:
    """Where one `send_many`'s outcomes go: lists of (its own index, attempt)."""

    left: int
    arrived: asyncio.Queue[Outcomes] = field(default_factory=asyncio.Queue)


@dataclass(slots=True)
class _Item:
    outgoing: Outgoing
    sink: _Sink
    index: int
    settled: bool = False


class DispatcherClient:
    """The shard's side: batches concurrent sends into streaming `deliver_many` calls.

    Batching is self-clocking, like group commit: at most `max_starting` calls are
    starting at once, and sends queue meanwhile, so batches grow with the load. A call
    stops counting as starting at its first outcome or after `START_S`, so a batch with a
    hanging receiver never holds back the next one. Outcomes that stream back together
    reach each `send_many` caller together, as one list.

    Open calls are not capped: a call stays open until its slowest delivery ends, so a cap
    would let one hanging receiver (one delivery in each of many batches) stop every send
    of the shard. What bounds them is the delivery loop's `max_in_flight` and, per replica,
    the dispatcher's `max_ongoing_requests`, set high enough never to bind (past it Serve
    would reject and retry calls, a millisecond of CPU a try on both sides).
    """

    START_S = 0.05

    def __init__(
        self,
        handle: Callable[[], Any],
        *,
        max_batch: int = MAX_BATCH,
        max_starting: int = 2,
    ) -> None:
        self._handle = handle
        self._max_batch = max_batch
        self._starting = asyncio.Semaphore(max_starting)
        self._queue: list[_Item] = []
        self._pump: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def send_many(self, items: Sequence[Sending]) -> AsyncIterator[Outcomes]:
        """Send every item; yield [(index in `items`, attempt), ...] as outcomes arrive, until
        each item has one. Never raises for a receiver or the dispatcher: those are attempts."""
        sink = _Sink(len(items))
        self._queue.extend(_Item(_outgoing(s), sink, i) for i, s in enumerate(items))
        if items and (self._pump is None or self._pump.done()):
            self._pump = asyncio.get_running_loop().create_task(self._run())
        while sink.left:
            outcomes = await sink.arrived.get()
            sink.left -= len(outcomes)
            yield outcomes

    async def send(self, delivery: Delivery, secrets: tuple[str, ...], timeout_s: float) -> Attempt:
        """One delivery's attempt (`send_many` of one)."""
        sending = [Sending(delivery, secrets, timeout_s)]
        [attempt] = [a async for outcomes in self.send_many(sending) for _, a in outcomes]
        return attempt

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

    async def _call(self, batch: list[_Item], started: _Once) -> None:
        begun = time.time()
        try:
            outgoing = [item.outgoing for item in batch]
            stream = self._handle().options(stream=True).deliver_many.remote(outgoing)
            async for outcomes in stream:
                started()
                _deliver(batch, outcomes)
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


def _outgoing(sending: Sending) -> Outgoing:
    d = sending.delivery
    return Outgoing(d.delivery_id, d.url, d.payload, sending.secrets, sending.timeout_s)


def _deliver(batch: list[_Item], outcomes: Outcomes) -> None:
    """Hand each outcome of a call's batch to its sender, one list per sender."""
    by_sink: dict[int, tuple[_Sink, Outcomes]] = {}
    for index, attempt in outcomes:
        item = batch[index]
        if item.settled:
            continue
        item.settled = True
        by_sink.setdefault(id(item.sink), (item.sink, []))[1].append((item.index, attempt))
    for sink, got in by_sink.values():
        sink.arrived.put_nowait(got)


def _settle(batch: list[_Item], started: float, error: str) -> None:
    """Fail every item of `batch` that has no outcome yet."""
    clipped = clip(error, MAX_ATTEMPT_ERROR_CHARS)
    attempt = Attempt(started, (time.time() - started) * 1000, None, clipped)
    _deliver(batch, [(i, attempt) for i, item in enumerate(batch) if not item.settled])
