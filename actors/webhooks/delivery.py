"""A shard's delivery loop: sends due webhook deliveries and records every attempt durably."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from actors.committer import GroupCommitter
from actors.webhooks.body import OutputGone, ReadChunks, render
from actors.webhooks.outbox import Hooks, Outbox
from storage.errors import AosError
from storage.records import Attempt, Delivery

#: Sends one delivery, signed with `secrets`, within `timeout_s`; never raises for the receiver.
Send = Callable[[Delivery, tuple[str, ...], float], Awaitable[Attempt]]
HooksFor = Callable[[str], Awaitable[Hooks]]

IDLE_POLL_S = 1.0
STORE_RETRY_S = 1.0


class DeliveryLoop:
    """Each due delivery is its own task (bounded), so a slow receiver delays no other.

    `read_chunks` reads committed output: an output window's body is rendered from it
    at each attempt (the stored delivery holds the window's seq range, not its chunks).
    """

    def __init__(
        self,
        outbox: Outbox,
        committer: GroupCommitter,
        *,
        send: Send,
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
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            for delivery in self._outbox.due(self._clock()):
                await self._slots.acquire()
                task = asyncio.get_running_loop().create_task(self._attempt(delivery))
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            next_due = self._outbox.next_due()
            wait_s = IDLE_POLL_S if next_due is None else next_due - self._clock()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(0.001, min(wait_s, IDLE_POLL_S)))
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            hooks = await self._hooks_for(delivery.namespace)
            body = await render(delivery, self._read_chunks)
            attempt = await self._send(
                replace(delivery, payload=body), hooks.secrets, hooks.retry.timeout_s
            )
            # Recorded from the stored version: it keeps the compact payload.
            updated = self._outbox.after_attempt(delivery, attempt, hooks.retry)
            await asyncio.shield(self._committer.add(deliveries=[updated]))
        except OutputGone:
            self._outbox.abandon(delivery)  # its job was deleted, and its deliveries with it
        except AosError:
            # Not recorded (the store failed, or refused this record): send again later, from
            # the last durable version.
            self._outbox.reschedule(delivery, self._clock() + STORE_RETRY_S)
        finally:
            self._slots.release()
            self._wakeup.set()
