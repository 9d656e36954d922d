"""The webhook dispatcher: a Ray Serve deployment with no HTTP route that signs and POSTs.

Shards stream batches of due deliveries to it (`deliver_many`) and get each outcome back
as soon as it is known, so one slow receiver never holds up the others' results. Serve
autoscales it on ongoing requests, which here are the deliveries in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ray import serve

from actors.webhooks import signing
from actors.webhooks.sender import WebhookSender
from actors.webhooks.ssrf import parse_allowed_networks
from storage.records import Attempt, Delivery

APP_NAME = "aos-webhooks"
DEPLOYMENT_NAME = "WebhookDispatcher"
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery as the dispatcher needs it: signed at send time, per attempt."""

    delivery_id: str
    url: str
    body: bytes
    secrets: tuple[str, ...]
    timeout_s: float


@serve.deployment(
    name=DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=64,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 5,
        "downscale_delay_s": 60,
    },
)
class WebhookDispatcher:
    async def __init__(  # type: ignore[misc]  # Serve supports async constructors
        self, allowed_networks: str = "", per_host_limit: int = 64
    ) -> None:
        self._sender = WebhookSender(
            per_host_limit=per_host_limit,
            allowed_networks=parse_allowed_networks(allowed_networks),
        )
        await self._sender.open()

    async def deliver_many(self, batch: list[Outgoing]) -> AsyncIterator[list[tuple[int, Attempt]]]:
        """Send every delivery of `batch` at once; yield [(index, attempt), ...] as they finish.

        Outcomes that finish together travel together (one streamed item, not one each),
        and a slow receiver holds back only its own outcome.
        """
        pending = {asyncio.ensure_future(self._deliver(i, item)) for i, item in enumerate(batch)}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                yield [task.result() for task in done]
        finally:
            for task in pending:
                task.cancel()

    async def _deliver(self, index: int, item: Outgoing) -> tuple[int, Attempt]:
        timestamp = int(time.time())
        if item.secrets:
            headers = signing.headers(
                msg_id=item.delivery_id, timestamp=timestamp, body=item.body, secrets=item.secrets
            )
        else:
            headers = {
                "content-type": "application/json",
                "webhook-id": item.delivery_id,
                "webhook-timestamp": str(timestamp),
            }
        attempt = await self._sender.send(
            url=item.url, headers=headers, body=item.body, timeout_s=item.timeout_s
        )
        return index, attempt


def build(args: dict[str, Any]) -> Any:
    """Application builder for `serveConfigV2` (import_path: actors.dispatcher:build)."""
    return WebhookDispatcher.bind(**args)  # type: ignore[attr-defined]  # added by @serve


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
            future.set_result(Attempt(started, (time.time() - started) * 1000, None, error[:512]))


def dispatcher_handle() -> Any:
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
