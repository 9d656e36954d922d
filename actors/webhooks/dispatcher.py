"""The webhook dispatcher: a Ray Serve deployment with no HTTP route that signs and POSTs.

Shards stream batches of due deliveries to it (`deliver_many`) and get each outcome back
as soon as it is known, so one slow receiver never holds up the others' results. Serve
autoscales it on the deliveries its replicas hold (`record_autoscaling_stats`, policy in
actors/webhooks/autoscaling.py), not on ongoing requests: a request is a batch of up to
256 deliveries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from actors.webhooks import signing
from actors.webhooks.autoscaling import AUTOSCALING_CONFIG, PENDING_DELIVERIES
from actors.webhooks.sender import WebhookSender
from actors.webhooks.ssrf import parse_allowed_networks
from storage.records import Attempt, pickled_by_fields

APP_NAME = "aos-webhooks"
DEPLOYMENT_NAME = "WebhookDispatcher"
MAX_BATCH = 256
# A limit that must never bind: each shard keeps at most `webhook_max_in_flight` deliveries
# out and the sender limits each destination. A call stays open until its last delivery
# ends, so one hanging receiver can hold many; were this limit reached, batches for
# healthy receivers would wait in the handles' queues.
MAX_ONGOING_CALLS = 10_000

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
    max_ongoing_requests=MAX_ONGOING_CALLS,
    autoscaling_config=AUTOSCALING_CONFIG,
)
class WebhookDispatcher:
    #: Deliveries accepted by `deliver_many` whose outcome is not yet yielded: the
    #: autoscaling metric. A class default; each replica counts its own.
    _pending_deliveries = 0

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
        left = len(tasks)
        self._pending_deliveries += left
        try:
            while left:
                await arrived.wait()
                if len(finished) < left:
                    await asyncio.sleep(STREAM_LINGER_S)  # let those finishing now come too
                arrived.clear()
                done, finished[:] = list(finished), []
                left -= len(done)
                self._pending_deliveries -= len(done)
                yield [task.result() for task in done]
        finally:
            self._pending_deliveries -= left  # a caller gone, or a failure: no longer held
            for task in tasks:
                task.cancel()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve samples this for the autoscaling policy (actors/webhooks/autoscaling.py)."""
        return {PENDING_DELIVERIES: float(self._pending_deliveries)}

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
