"""The webhook dispatcher: a Ray Serve deployment with no HTTP route that signs and POSTs.

Shards stream batches of due deliveries to it (`deliver_many`) and get each outcome back
as soon as it is known, so one slow receiver never holds up the others' results. Serve
autoscales it on ongoing requests, which here are the deliveries in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from actors.webhooks import signing
from actors.webhooks.sender import WebhookSender
from actors.webhooks.ssrf import parse_allowed_networks
from storage.records import Attempt, pickled_by_fields

APP_NAME = "aos-webhooks"
DEPLOYMENT_NAME = "WebhookDispatcher"
MAX_BATCH = 256
#: How long a finished send waits for others before its outcome streams back: each streamed
#: item costs both sides a Ray object; a slow stream sent ~1.5 outcomes an item without it.
STREAM_LINGER_S = 0.005


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery as the dispatcher needs it: signed at send time, per attempt. Crosses
    Ray by the hundred (a shard's batch), as its outcome (`Attempt`) crosses back."""

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

        Outcomes that finish within `STREAM_LINGER_S` of each other travel together (one
        streamed item, not one each), and a slow receiver holds back only its own outcome.
        Each send reports itself when done, so a batch costs O(n), not a wait over all the
        pending sends per item streamed.
        """
        finished: list[asyncio.Task[tuple[int, Attempt]]] = []
        arrived = asyncio.Event()

        def report(task: asyncio.Task[tuple[int, Attempt]]) -> None:
            finished.append(task)
            arrived.set()

        tasks = [asyncio.ensure_future(self._deliver(i, item)) for i, item in enumerate(batch)]
        for task in tasks:
            task.add_done_callback(report)
        try:
            left = len(tasks)
            while left:
                await arrived.wait()
                if len(finished) < left:
                    await asyncio.sleep(STREAM_LINGER_S)  # let those finishing now come too
                arrived.clear()
                done, finished[:] = list(finished), []
                left -= len(done)
                yield [task.result() for task in done]
        finally:
            for task in tasks:
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
    """Application builder for `serveConfigV2` (import_path: actors.webhooks.dispatcher:build)."""
    return WebhookDispatcher.bind(**args)  # type: ignore[attr-defined]  # added by @serve


def dispatcher_handle() -> Any:
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
