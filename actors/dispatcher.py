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

    async def deliver_many(self, batch: list[Outgoing]) -> AsyncIterator[tuple[int, Attempt]]:
        """Send every delivery of `batch` at once; yield (index, attempt) as each finishes."""
        tasks = [asyncio.ensure_future(self._deliver(i, item)) for i, item in enumerate(batch)]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished
        finally:
            for task in tasks:
                task.cancel()

    async def deliver(self, item: Outgoing) -> Attempt:
        """One delivery (for callers that do not batch)."""
        return (await self._deliver(0, item))[1]

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
    """The shard's side: batches concurrent sends into streaming `deliver_many` calls."""

    def __init__(self, handle: Callable[[], Any], *, max_batch: int = MAX_BATCH) -> None:
        self._handle = handle
        self._max_batch = max_batch
        self._queue: list[tuple[Outgoing, asyncio.Future[Attempt]]] = []
        self._scheduled = False
        self._calls: set[asyncio.Task[None]] = set()

    async def send(self, delivery: Delivery, secrets: tuple[str, ...], timeout_s: float) -> Attempt:
        item = Outgoing(delivery.delivery_id, delivery.url, delivery.payload, secrets, timeout_s)
        future: asyncio.Future[Attempt] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[Outgoing, asyncio.Future[Attempt]]]) -> None:
        started = time.time()
        try:
            stream = self._handle().options(stream=True).deliver_many.remote([b[0] for b in batch])
            async for index, attempt in stream:
                if not batch[index][1].done():
                    batch[index][1].set_result(attempt)
        except Exception as exc:  # the dispatcher is down or restarting: an attempt that failed
            _settle(batch, started, f"dispatcher unavailable: {type(exc).__name__}: {exc}")
        _settle(batch, started, "the dispatcher returned no outcome")


def _settle(
    batch: list[tuple[Outgoing, asyncio.Future[Attempt]]], started: float, error: str
) -> None:
    for _, future in batch:
        if not future.done():
            future.set_result(Attempt(started, (time.time() - started) * 1000, None, error[:512]))


def dispatcher_handle() -> Any:
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
