"""A shard's webhooks: its outbox (which committed changes become deliveries) and the loop
that sends them, wired to the shard's commits."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from actors.committer import GroupCommitter
from actors.limits import OUTPUT_PAGE_BYTES
from actors.shard_types import ShardConfig
from actors.webhooks.delivery import DeliveryLoop, HooksFor, SendMany
from actors.webhooks.outbox import Hooks, Outbox
from storage.base import Store
from storage.errors import Conflict, NotFound
from storage.records import Chunk, Delivery, Job


class ShardWebhooks:
    """The shard asks `on_change` for the deliveries a change causes, commits them with the
    change, and reports the outcome (`committed` / `failed`); sending is the loop's."""

    def __init__(
        self,
        store: Store,
        config: ShardConfig,
        *,
        clock: Callable[[], float],
        send: SendMany | None,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._send = send
        self._outbox = Outbox(
            slot=config.slot,
            clock=clock,
            coalesce_s=config.webhook_coalesce_s,
            max_payload_bytes=config.webhook_max_payload_bytes,
        )
        self._loop: DeliveryLoop | None = None

    async def start(self, committer: GroupCommitter, *, hooks_for: HooksFor) -> None:
        """Reload the slot's pending deliveries and, with a `send`, start sending."""
        self._outbox.load(await self._store.load_pending_deliveries(self._config.slot))
        if self._send is None:
            return
        self._loop = DeliveryLoop(
            self._outbox,
            committer,
            send=self._send,
            hooks_for=hooks_for,
            read_chunks=self._read_chunks,
            clock=self._clock,
            max_in_flight=self._config.webhook_max_in_flight,
        )
        self._loop.start()

    async def _read_chunks(
        self, namespace: str, job_id: str, version: int, after_seq: int, limit: int
    ) -> list[Chunk]:
        return await self._store.read_output(
            namespace,
            job_id,
            version=version,
            after_seq=after_seq,
            limit=limit,
            max_bytes=OUTPUT_PAGE_BYTES,
        )

    async def stop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()

    def on_change(
        self, before: Job | None, after: Job, chunks: Iterable[Chunk], hooks: Hooks
    ) -> list[Delivery]:
        return self._outbox.on_change(before, after, chunks, hooks)

    def committed(self, deliveries: list[Delivery]) -> None:
        if deliveries:
            self._outbox.committed(deliveries)
            if self._loop is not None:
                self._loop.wake()

    def failed(self, deliveries: list[Delivery]) -> None:
        self._outbox.failed(deliveries)

    def forget_job(self, namespace: str, job_id: str) -> None:
        self._outbox.forget_job(namespace, job_id)

    async def retry_now(self, namespace: str, delivery_id: str) -> Delivery:
        """The delivery's next version, pending and due now (the caller commits it)."""
        delivery = self._outbox.pending(delivery_id) or await self._store.get_delivery(
            namespace, delivery_id
        )
        if delivery is None or delivery.namespace != namespace:
            raise NotFound(f"no webhook delivery {delivery_id!r} in namespace {namespace!r}")
        if self._outbox.is_in_flight(delivery_id):
            raise Conflict(f"delivery {delivery_id!r} is being sent right now")
        return self._outbox.retry_now(delivery)

    @property
    def pending_count(self) -> int:
        return self._outbox.pending_count
