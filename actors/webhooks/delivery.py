"""A shard's delivery loop: sends due webhook deliveries and records every attempt durably."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from actors import metrics
from actors.committer import GroupCommitter
from actors.webhooks.body import OutputGone, ReadChunks, is_window, render
from actors.webhooks.outbox import Hooks, Outbox
from storage.errors import AosError
from storage.records import Attempt, Delivery

log = logging.getLogger(__name__)

HooksFor = Callable[[str], Awaitable[Hooks]]

IDLE_POLL_S = 1.0
STORE_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Sending:
    """One delivery to send now: its rendered body, signed with `secrets`, within `timeout_s`."""

    delivery: Delivery
    secrets: tuple[str, ...]
    timeout_s: float


#: Sends every item of a batch at once; yields [(index, attempt), ...] as outcomes come in
#: (several together when they finish together), one per item in all. Never raises for a
#: receiver: a failure is an attempt too.
SendMany = Callable[[Sequence[Sending]], AsyncIterator[list[tuple[int, Attempt]]]]


class DeliveryLoop:
    """Takes every due delivery at once (up to `max_in_flight` in flight) and sends them as
    one batch; a slow receiver delays no other, as outcomes stream back one by one.

    Per batch, each namespace's settings are looked up once; per group of outcomes that
    come back together, the attempts are recorded with one group-commit add. An output
    window's body is rendered from committed output (`read_chunks`) at each attempt (the
    stored delivery holds the window's seq range, not its chunks).
    """

    def __init__(
        self,
        outbox: Outbox,
        committer: GroupCommitter,
        *,
        send: SendMany,
        hooks_for: HooksFor,
        read_chunks: ReadChunks,
        clock: Callable[[], float] = time.time,
        max_in_flight: int = 1000,
    ) -> None:
        self._outbox = outbox
        self._committer = committer
        self._send = send
        self._hooks_for = hooks_for
        self._read_chunks = read_chunks
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            room = self._max_in_flight - self._in_flight
            due = self._outbox.due(self._clock(), limit=room) if room > 0 else []
            if due:
                self._in_flight += len(due)
                task = asyncio.get_running_loop().create_task(self._send_batch(due))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
            next_due = self._outbox.next_due()
            wait_s = IDLE_POLL_S if next_due is None else next_due - self._clock()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(0.001, min(wait_s, IDLE_POLL_S)))
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def _send_batch(self, due: list[Delivery]) -> None:
        """Send `due` (handed out by the outbox) and record each outcome as it comes in."""
        waiting: dict[int, Delivery] = {}  # sent, no outcome yet
        try:
            ready = await self._prepare(due)
            waiting = {i: delivery for i, (delivery, _, _) in enumerate(ready)}
            items = [
                Sending(_with_body(d, body), h.secrets, h.retry.timeout_s) for d, h, body in ready
            ]
            async for outcomes in self._send(items):
                got = [(waiting.pop(i), ready[i][1], attempt) for i, attempt in outcomes]
                self._record(got)
        finally:
            # No outcome (stopping, or a bug): send again later, from the last durable version.
            self._not_recorded(list(waiting.values()))

    async def _prepare(self, due: list[Delivery]) -> list[tuple[Delivery, Hooks, bytes]]:
        """Each delivery with its namespace's settings (one lookup a namespace) and its body.
        One that cannot go now is settled here: dropped when its output is gone (its job was
        deleted, deliveries with it), else sent again later from its stored version."""
        hooks: dict[str, Hooks | None] = {}
        for namespace in {d.namespace for d in due}:
            try:
                hooks[namespace] = await self._hooks_for(namespace)
            except AosError:
                hooks[namespace] = None
        windows = [d for d in due if is_window(d) and hooks[d.namespace] is not None]
        rendered = await asyncio.gather(
            *(render(d, self._read_chunks) for d in windows), return_exceptions=True
        )
        bodies = {d.delivery_id: body for d, body in zip(windows, rendered, strict=True)}
        ready: list[tuple[Delivery, Hooks, bytes]] = []
        for delivery in due:
            settings = hooks[delivery.namespace]
            body = bodies.get(delivery.delivery_id, delivery.payload)
            if isinstance(body, OutputGone):
                self._outbox.abandon(delivery)
                self._release(1)
            elif settings is None or isinstance(body, BaseException):
                if isinstance(body, BaseException) and not isinstance(body, AosError):
                    log.error("rendering delivery %s failed", delivery.delivery_id, exc_info=body)
                self._not_recorded([delivery])
            else:
                ready.append((delivery, settings, body))
        return ready

    def _record(self, outcomes: list[tuple[Delivery, Hooks, Attempt]]) -> None:
        """Record attempts that came back together with one add (the stored versions keep
        their compact payloads); their slots free once it commits or fails."""
        sent = [delivery for delivery, _, _ in outcomes]
        updated = [self._outbox.after_attempt(d, a, hooks.retry) for d, hooks, a in outcomes]
        try:
            future = self._committer.add(deliveries=updated)
        except AosError:  # the write buffer is full
            self._not_recorded(sent)
            return
        future.add_done_callback(lambda done: self._recorded(sent, updated, done))

    def _recorded(
        self, sent: list[Delivery], updated: list[Delivery], done: asyncio.Future[None]
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            # Not recorded (the store failed, or refused these records): send again later,
            # from the last durable version.
            self._not_recorded(sent)
        else:
            metrics.record_deliveries(updated)
            self._release(len(sent))

    def _not_recorded(self, deliveries: list[Delivery]) -> None:
        at = self._clock() + STORE_RETRY_S
        for delivery in deliveries:
            self._outbox.reschedule(delivery, at)
        self._release(len(deliveries))

    def _release(self, count: int) -> None:
        if count:
            self._in_flight -= count
            self._wakeup.set()


def _with_body(delivery: Delivery, body: bytes) -> Delivery:
    return delivery if body is delivery.payload else replace(delivery, payload=body)
