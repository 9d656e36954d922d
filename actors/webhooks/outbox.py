"""The webhook outbox of a shard: which changes become deliveries, coalescing, and the schedule.

Plain logic, no I/O. The shard asks `on_change` for the deliveries a change causes
and commits them in the same batch as the change (so no event is lost or invented),
then tells `committed` so they are scheduled. The shard's dispatch loop takes
`due()` deliveries, sends them, and records each attempt with `after_attempt`.

An output window's delivery holds its job header and seq range, not its chunks (see
`actors.webhooks.body`): growing it costs O(1) bytes, whatever it already holds.
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from actors.webhooks import body
from actors.webhooks.backoff import RetryPolicy, delay_s, should_retry
from storage.records import Attempt, Chunk, Delivery, DeliveryStatus, Job, OutputFormat


class EventType(StrEnum):
    CREATED = "job.created"
    PROGRESS = "job.progress"
    OUTPUT = "job.output"
    COMPLETED = "job.completed"


DEFAULT_EVENTS = (EventType.COMPLETED.value,)
#: Seconds a delivery over its namespace's or receiver's share of in-flight slots waits.
DEFER_S = 0.05
COALESCED = frozenset({EventType.PROGRESS.value, EventType.OUTPUT.value})


@dataclass(frozen=True, slots=True)
class Hooks:
    """A namespace's webhook settings, as the shard resolves them for one delivery."""

    url: str | None = None
    events: tuple[str, ...] = DEFAULT_EVENTS
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    secrets: tuple[str, ...] = ()


@dataclass(slots=True)
class _Window:
    """An open coalescing window: a delivery that still takes more chunks or progress.

    Only sizes are kept: the chunks are read back from the store when the window is sent.
    """

    delivery: Delivery
    closes_at: float
    first_seq: int = 0  # 0 until it holds a chunk
    size: int = 0  # bytes its chunk entries add to the body


class Outbox:
    def __init__(
        self,
        *,
        slot: int,
        clock: Callable[[], float],
        coalesce_s: float = 0.5,
        max_payload_bytes: int = 1024 * 1024,
        new_id: Callable[[], str] = lambda: f"msg_{uuid.uuid4().hex}",
        max_in_flight_per_namespace: int = 1000,
        max_in_flight_per_receiver: int = 256,
    ) -> None:
        self._slot = slot
        self._clock = clock
        self._coalesce_s = coalesce_s
        self._max_payload_bytes = max_payload_bytes
        self._new_id = new_id
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._pending: dict[str, Delivery] = {}  # committed, not yet delivered or failed
        self._unsettled: dict[str, int] = {}  # versions handed to a commit, not yet committed
        # delivery id -> what it holds a share of while in flight: its namespace, its receiver.
        self._in_flight: dict[str, tuple[str, str]] = {}
        self._held: collections.Counter[str] = collections.Counter()
        self._max_per_namespace = max_in_flight_per_namespace
        self._max_per_receiver = max_in_flight_per_receiver
        # (due, order, id): deliveries due at the same time go out in the order scheduled.
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    # -- making deliveries ---------------------------------------------------------------------

    def on_change(
        self, before: Job | None, after: Job, chunks: Iterable[Chunk], hooks: Hooks
    ) -> list[Delivery]:
        """The deliveries (new, or open windows grown) that this change causes."""
        url, events = _destination(after, hooks)
        if url is None:
            return []
        out: list[Delivery] = []
        if before is None and EventType.CREATED in events:
            out.append(self._new(EventType.CREATED, after, url))
        if before is not None and before.output_version != after.output_version:
            out.extend(self._close_windows(before))  # a window holds one version's chunks
        chunks = list(chunks)
        if chunks and EventType.OUTPUT in events:
            out.extend(self._grow(EventType.OUTPUT, after, url, chunks))
        moved = before is not None and (before.progress, before.estimated_completion) != (
            after.progress,
            after.estimated_completion,
        )
        if moved and EventType.PROGRESS in events:
            out.extend(self._grow(EventType.PROGRESS, after, url, []))
        if after.status.terminal and (before is None or not before.status.terminal):
            out.extend(self._close_windows(after))
            if EventType.COMPLETED in events:
                out.append(self._new(EventType.COMPLETED, after, url))
        for delivery in out:
            self._unsettled[delivery.delivery_id] = self._unsettled.get(delivery.delivery_id, 0) + 1
        return out

    def _new(self, kind: EventType, job: Job, url: str) -> Delivery:
        payload = body.encode(body.header(kind.value, job, self._clock()))
        return self._delivery(kind, job, url, payload, due=self._clock())

    def _grow(self, kind: EventType, job: Job, url: str, chunks: list[Chunk]) -> list[Delivery]:
        """Add to the job's open window of `kind`, opening a new one when none is open.

        O(1) in what the window holds: the new version stores the header and seq range.
        """
        key = (job.namespace, job.job_id, kind.value)
        now = self._clock()
        window = self._windows.get(key)
        binary = job.output_format is OutputFormat.BINARY
        inline = self._max_payload_bytes // 2
        grown = sum(body.entry_size(c, binary=binary, inline_max_bytes=inline) for c in chunks)
        if (
            window is None
            or window.size + grown > self._max_payload_bytes
            or now >= window.closes_at
        ):
            self._windows.pop(key, None)
            delivery = self._delivery(kind, job, url, b"", due=now + self._coalesce_s)
            window = self._windows[key] = _Window(delivery, now + self._coalesce_s)
        if chunks and not window.first_seq:
            window.first_seq = chunks[0].seq
        window.size += grown
        header = body.header(kind.value, job, now)
        if kind is EventType.OUTPUT:
            payload = body.window_payload(
                header,
                job,
                first_seq=window.first_seq,
                inline_max_bytes=inline,
            )
        else:
            payload = body.encode(header)
        window.delivery = replace(window.delivery, payload=payload)
        return [window.delivery]

    def _close_windows(self, job: Job) -> list[Delivery]:
        """A finished job's open windows are due now, ahead of its job.completed."""
        closed = []
        for kind in (EventType.OUTPUT.value, EventType.PROGRESS.value):
            window = self._windows.pop((job.namespace, job.job_id, kind), None)
            if window is not None:
                closed.append(replace(window.delivery, next_attempt_at=self._clock()))
        return closed

    def _delivery(
        self, kind: EventType, job: Job, url: str, body: bytes, *, due: float
    ) -> Delivery:
        return Delivery(
            delivery_id=self._new_id(),
            namespace=job.namespace,
            job_id=job.job_id,
            slot=self._slot,
            event_type=kind.value,
            url=url,
            payload=body,
            created_at=self._clock(),
            next_attempt_at=due,
        )

    # -- the schedule ----------------------------------------------------------------------------

    def committed(self, deliveries: Iterable[Delivery]) -> None:
        """These versions are durable: pending ones are scheduled."""
        for delivery in deliveries:
            self._settle(delivery.delivery_id)
            self._track(delivery)

    def failed(self, deliveries: Iterable[Delivery]) -> None:
        """These versions never reached the store: forget them (their change failed too)."""
        for delivery in deliveries:
            self._settle(delivery.delivery_id)
            self._seal(delivery)

    def load(self, deliveries: Iterable[Delivery]) -> None:
        """Pending deliveries reloaded from the store after a restart."""
        for delivery in deliveries:
            self._track(delivery)

    def _track(self, delivery: Delivery) -> None:
        if delivery.status is not DeliveryStatus.PENDING or delivery.next_attempt_at is None:
            self._pending.pop(delivery.delivery_id, None)
            return
        self._pending[delivery.delivery_id] = delivery
        self._schedule(delivery.next_attempt_at, delivery.delivery_id)

    def _settle(self, delivery_id: str) -> None:
        left = self._unsettled.get(delivery_id, 0) - 1
        if left > 0:
            self._unsettled[delivery_id] = left
        else:
            self._unsettled.pop(delivery_id, None)

    def due(self, now: float, *, limit: int | None = None) -> list[Delivery]:
        """Deliveries to send now, at most `limit`, in the order they fell due. Each is handed
        out once until its attempt is recorded.

        No namespace holds more than `max_in_flight_per_namespace` in flight, and no receiver
        (scheme, host and port) more than `max_in_flight_per_receiver`: receivers that hang
        hold their own share until they time out, never every slot of the shard. One over
        its share waits `DEFER_S` and is looked at again.
        """
        out: list[Delivery] = []
        deferred: list[str] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(out) < limit):
            _, _, delivery_id = heapq.heappop(self._heap)
            delivery = self._pending.get(delivery_id)
            if delivery is None or delivery_id in self._in_flight:
                continue
            if delivery.next_attempt_at is None or delivery.next_attempt_at > now:
                continue  # a stale heap entry; the newer one is in the heap too
            if delivery_id in self._unsettled:
                self._schedule(now + 0.01, delivery_id)  # a newer version is committing
                continue
            shares = (f"ns:{delivery.namespace}", f"to:{_receiver(delivery.url)}")
            if (
                self._held[shares[0]] >= self._max_per_namespace
                or self._held[shares[1]] >= self._max_per_receiver
            ):
                deferred.append(delivery_id)
                continue
            self._seal(delivery)
            self._in_flight[delivery_id] = shares
            self._held.update(shares)
            out.append(delivery)
        for delivery_id in deferred:
            self._schedule(now + DEFER_S, delivery_id)
        return out

    def _land(self, delivery_id: str) -> None:
        """`delivery_id` is no longer in flight: its shares free."""
        shares = self._in_flight.pop(delivery_id, None)
        if shares is not None:
            self._held.subtract(shares)
            for share in shares:
                if self._held[share] <= 0:
                    del self._held[share]

    def _seal(self, delivery: Delivery) -> None:
        """Close the delivery's window, if it is still open: it takes no more events."""
        key = (delivery.namespace, delivery.job_id, delivery.event_type)
        window = self._windows.get(key)
        if window is not None and window.delivery.delivery_id == delivery.delivery_id:
            del self._windows[key]

    def _schedule(self, at: float, delivery_id: str) -> None:
        heapq.heappush(self._heap, (at, next(self._order), delivery_id))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def after_attempt(self, delivery: Delivery, attempt: Attempt, policy: RetryPolicy) -> Delivery:
        """The delivery's next version: delivered, failed (dead letter) or pending again."""
        self._land(delivery.delivery_id)
        if attempt.retry_after_s is not None:  # recorded as honoured: at most the policy's max
            capped_s = min(attempt.retry_after_s, policy.max_delay_ms / 1000)
            attempt = replace(attempt, retry_after_s=capped_s)
        attempts = (*delivery.attempts, attempt)
        code = attempt.status_code
        if code is not None and 200 <= code < 300:
            return replace(
                delivery, attempts=attempts, status=DeliveryStatus.DELIVERED, next_attempt_at=None
            )
        if not should_retry(code, len(attempts), policy):
            return replace(
                delivery, attempts=attempts, status=DeliveryStatus.FAILED, next_attempt_at=None
            )
        due = self._clock() + delay_s(policy, len(attempts), retry_after_s=attempt.retry_after_s)
        return replace(delivery, attempts=attempts, next_attempt_at=due)

    def reschedule(self, delivery: Delivery, at: float) -> None:
        """Hand `delivery` out again at `at` (its attempt could not be recorded)."""
        self._land(delivery.delivery_id)
        self._track(replace(delivery, next_attempt_at=at))

    def retry_now(self, delivery: Delivery) -> Delivery:
        """A manual retry: pending again, due now, same id (so the same webhook-id)."""
        return replace(delivery, status=DeliveryStatus.PENDING, next_attempt_at=self._clock())

    def abandon(self, delivery: Delivery) -> None:
        """Drop an in-flight delivery that can no longer be sent (its job was deleted)."""
        self._land(delivery.delivery_id)
        self._pending.pop(delivery.delivery_id, None)

    def is_in_flight(self, delivery_id: str) -> bool:
        return delivery_id in self._in_flight

    def pending(self, delivery_id: str) -> Delivery | None:
        return self._pending.get(delivery_id)

    def forget_job(self, namespace: str, job_id: str) -> None:
        """A deleted job's deliveries go with it."""
        for kind in COALESCED:
            self._windows.pop((namespace, job_id, kind), None)
        for delivery_id, delivery in list(self._pending.items()):
            if (delivery.namespace, delivery.job_id) == (namespace, job_id):
                del self._pending[delivery_id]

    @property
    def pending_count(self) -> int:
        return len(self._pending)


def _destination(job: Job, hooks: Hooks) -> tuple[str | None, tuple[str, ...]]:
    """The job's own URL and events when it has them, else the namespace's defaults."""
    if job.webhook_url:
        return job.webhook_url, job.webhook_events or DEFAULT_EVENTS
    return hooks.url, hooks.events


@functools.lru_cache(maxsize=4096)
def _receiver(url: str) -> str:
    """The receiver a URL reaches, as a share key: scheme, host and port (as written)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"
