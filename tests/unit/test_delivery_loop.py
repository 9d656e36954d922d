"""The delivery loop: due deliveries are sent, every attempt recorded, failures retried later."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from actors.committer import GroupCommitter
from actors.webhooks import body
from actors.webhooks.backoff import RetryPolicy
from actors.webhooks.delivery import STORE_RETRY_S, DeliveryLoop, Sending
from actors.webhooks.outbox import Hooks, Outbox
from storage.errors import StoreUnavailable
from storage.records import Attempt, Batch, Chunk, Delivery, DeliveryStatus, Job, JobStatus
from tests.unit.fakes import FakeClock, GatedStore, until

#: No jitter: every retry comes exactly RETRY_S after a failure.
POLICY = RetryPolicy(initial_delay_ms=2000, max_delay_ms=2000, max_attempts=3)
RETRY_S = 2.0
SECRETS = ("whsec_test",)
HOOKS = Hooks(
    url="http://hooks.example/x",
    events=("job.output", "job.completed"),
    retry=POLICY,
    secrets=SECRETS,
)


@dataclass
class Receiver:
    """The `send` the loop is given: answers with `codes` in turn (200 once they run out)."""

    codes: list[int] = field(default_factory=list)
    sent: list[Delivery] = field(default_factory=list)
    gate: asyncio.Event | None = None
    cancelled: int = 0
    batches: list[list[str]] = field(default_factory=list)  # delivery ids, per send_many
    slow: set[str] | None = None  # jobs whose deliveries wait at `gate` (None: all)

    async def __call__(self, delivery: Delivery, secrets: tuple[str, ...], timeout_s: float):
        assert secrets == SECRETS and timeout_s == POLICY.timeout_s
        self.sent.append(delivery)
        try:
            if self.gate is not None and (self.slow is None or delivery.job_id in self.slow):
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Attempt(1000.0, 1.0, self.codes.pop(0) if self.codes else 200)

    async def send_many(self, items: Sequence[Sending]) -> AsyncIterator[list[tuple[int, Attempt]]]:
        """The loop's `send`, as the dispatcher does it: every item at once, each outcome
        as it finishes (those that finish together, together)."""
        self.batches.append([s.delivery.delivery_id for s in items])
        sends = {
            asyncio.ensure_future(self(s.delivery, s.secrets, s.timeout_s)): i
            for i, s in enumerate(items)
        }
        pending = set(sends)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                yield [(sends[task], task.result()) for task in done]
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


@dataclass
class Harness:
    store: GatedStore
    clock: FakeClock
    outbox: Outbox
    committer: GroupCommitter
    receiver: Receiver
    loop: DeliveryLoop | None = None
    lookups: list[str] = field(default_factory=list)  # hooks_for's namespaces, in order

    def start(self, **options: int) -> DeliveryLoop:
        self.loop = DeliveryLoop(
            self.outbox,
            self.committer,
            send=self.receiver.send_many,
            hooks_for=self.hooks_for,
            read_chunks=self.read_chunks,
            clock=self.clock,
            **options,
        )
        self.loop.start()
        return self.loop

    async def hooks_for(self, namespace: str) -> Hooks:
        self.lookups.append(namespace)
        return HOOKS

    async def read_chunks(self, namespace: str, job_id: str, version: int, after: int, limit: int):
        return await self.store.read_output(
            namespace, job_id, version=version, after_seq=after, limit=limit
        )

    async def change(self, before: Job | None, after: Job, chunks: Sequence[Chunk] = ()) -> None:
        """What the shard does: the change and its deliveries commit together."""
        deliveries = self.outbox.on_change(before, after, chunks, HOOKS)
        await self.committer.add(jobs=[after], chunks=chunks, deliveries=deliveries)

    async def completed(self, job_id: str = "j", namespace: str = "acme") -> Delivery:
        job = Job(namespace, job_id, 0, 1000.0, 1000.0)
        await self.change(job, job.evolve(status=JobStatus.SUCCEEDED))
        (delivery,) = await self.store.list_deliveries(namespace, job_id)
        return delivery

    def stored(self, delivery: Delivery) -> Delivery:
        return self.store.deliveries[delivery.delivery_id]

    def on_committed(self, batch: Batch) -> None:
        self.outbox.committed(batch.deliveries)
        if self.loop is not None:
            self.loop.wake()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store, clock = GatedStore(), FakeClock()
    outbox = Outbox(slot=0, clock=clock, coalesce_s=1.0)
    holder: list[Harness] = []
    committer = GroupCommitter(
        store,
        slot=None,
        epoch=None,
        on_committed=lambda batch: holder[0].on_committed(batch),
        on_failed=lambda batch, exc: outbox.failed(batch.deliveries),
    )
    committer.start()
    harness = Harness(store, clock, outbox, committer, Receiver())
    holder.append(harness)
    yield harness
    if harness.receiver.gate is not None:
        harness.receiver.gate.set()
    if harness.loop is not None:
        await harness.loop.stop()
    await committer.stop()


async def _settled(harness: Harness, delivery: Delivery, attempts: int) -> Delivery:
    await until(lambda: len(harness.stored(delivery).attempts) == attempts)
    return harness.stored(delivery)


async def test_a_due_delivery_is_sent_and_its_attempt_recorded(harness):
    harness.start()
    delivery = await harness.completed()
    stored = await _settled(harness, delivery, 1)
    assert stored.status is DeliveryStatus.DELIVERED and stored.attempts[0].status_code == 200
    assert [d.delivery_id for d in harness.receiver.sent] == [delivery.delivery_id]
    assert json.loads(harness.receiver.sent[0].payload)["type"] == "job.completed"


async def test_an_output_window_is_sent_with_its_chunks_and_stored_compact(harness):
    harness.start()
    job = Job("acme", "j", 0, 1000.0, 1000.0)
    for data in (b"hello ", b"world"):
        chunk = Chunk("acme", "j", job.output_seq + 1, job.output_size, data)
        after = job.evolve(output_seq=chunk.seq, output_size=chunk.end)
        await harness.change(job, after, [chunk])
        job = after
    (window,) = await harness.store.list_deliveries("acme", "j")
    harness.clock.advance(1.0)  # the window closes
    harness.loop.wake()
    stored = await _settled(harness, window, 1)
    (sent,) = harness.receiver.sent
    chunks = json.loads(sent.payload)["data"]["chunks"]
    assert "".join(c["data"] for c in chunks) == "hello world"
    assert stored.payload == window.payload and stored.payload.startswith(body.WINDOW_TAG)


async def test_a_failed_attempt_is_retried_after_the_policys_delay(harness):
    harness.receiver.codes = [500]
    harness.start()
    delivery = await harness.completed()
    failed = await _settled(harness, delivery, 1)
    assert failed.status is DeliveryStatus.PENDING
    assert failed.next_attempt_at == harness.clock.now + RETRY_S
    harness.clock.advance(RETRY_S - 0.5)
    harness.loop.wake()
    for _ in range(20):
        await asyncio.sleep(0)  # let the loop look: nothing is due yet
    assert len(harness.receiver.sent) == 1
    harness.clock.advance(0.5)
    harness.loop.wake()
    done = await _settled(harness, delivery, 2)
    assert done.status is DeliveryStatus.DELIVERED
    assert [a.status_code for a in done.attempts] == [500, 200]
    assert {d.delivery_id for d in harness.receiver.sent} == {delivery.delivery_id}


async def test_a_store_failure_while_recording_sends_again_later(harness):
    delivery = await harness.completed()
    harness.store.fail_commits = True
    harness.start()
    await until(lambda: harness.outbox.next_due() == harness.clock.now + STORE_RETRY_S)
    assert len(harness.receiver.sent) == 1 and harness.stored(delivery).attempts == ()
    harness.store.fail_commits = False
    harness.clock.advance(STORE_RETRY_S)
    harness.loop.wake()
    stored = await _settled(harness, delivery, 1)
    assert stored.status is DeliveryStatus.DELIVERED and len(harness.receiver.sent) == 2


async def test_attempts_in_flight_are_bounded(harness):
    harness.receiver.gate = asyncio.Event()
    harness.start(max_in_flight=2)
    for i in range(5):
        await harness.completed(f"j{i}")
    await until(lambda: len(harness.receiver.sent) == 2)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(harness.receiver.sent) == 2
    harness.receiver.gate.set()
    await until(lambda: len(harness.receiver.sent) == 5)
    await until(
        lambda: all(d.status is DeliveryStatus.DELIVERED for d in harness.store.deliveries.values())
    )


async def test_stop_cancels_attempts_in_flight(harness):
    harness.receiver.gate = asyncio.Event()
    loop = harness.start()
    delivery = await harness.completed()
    await until(lambda: len(harness.receiver.sent) == 1)
    await asyncio.wait_for(loop.stop(), 1)
    assert harness.receiver.cancelled == 1 and harness.stored(delivery).attempts == ()
    harness.loop = None


async def test_a_window_of_a_deleted_job_is_dropped_not_retried(harness):
    job = Job("acme", "j", 0, 1000.0, 1000.0)
    chunk = Chunk("acme", "j", 1, 0, b"gone soon")
    await harness.change(job, job.evolve(output_seq=1, output_size=chunk.end), [chunk])
    # The job's delete commits once its window was handed out: its output is gone.
    await harness.store.commit(Batch(deleted=[job.key]))
    harness.clock.advance(1.0)
    harness.start()
    await until(lambda: harness.outbox.pending_count == 0)
    assert harness.receiver.sent == [] and harness.store.deliveries == {}
    harness.clock.advance(STORE_RETRY_S)
    assert harness.outbox.due(harness.clock.now) == []


async def test_due_deliveries_go_out_as_one_batch_with_one_lookup_per_namespace(harness):
    made = [await harness.completed(f"j{i}", namespace=("acme", "beta")[i % 2]) for i in range(6)]
    harness.start()
    for delivery in made:
        await _settled(harness, delivery, 1)
    assert harness.receiver.batches == [[d.delivery_id for d in made]]
    assert sorted(harness.lookups) == ["acme", "beta"]


async def test_attempts_that_come_back_together_are_recorded_in_one_write(harness):
    made = [await harness.completed(f"j{i}") for i in range(5)]
    before = len(harness.store.commits)
    harness.start()
    for delivery in made:
        await _settled(harness, delivery, 1)
    (recorded,) = harness.store.commits[before:]
    assert sorted(d.delivery_id for d in recorded.deliveries) == sorted(d.delivery_id for d in made)
    assert all(d.status is DeliveryStatus.DELIVERED for d in recorded.deliveries)


async def test_a_slow_receiver_holds_back_only_its_own_outcome(harness):
    harness.receiver.gate, harness.receiver.slow = asyncio.Event(), {"slow"}
    slow, quick = await harness.completed("slow"), await harness.completed("quick")
    harness.start()
    done = await _settled(harness, quick, 1)
    assert done.status is DeliveryStatus.DELIVERED and harness.stored(slow).attempts == ()
    assert harness.receiver.batches == [[slow.delivery_id, quick.delivery_id]]
    harness.receiver.gate.set()
    assert (await _settled(harness, slow, 1)).status is DeliveryStatus.DELIVERED


async def test_a_namespace_whose_settings_cannot_be_read_is_sent_later(harness):
    delivery = await harness.completed(namespace="gone")
    down = True

    async def hooks_for(namespace: str) -> Hooks:
        if down:
            raise StoreUnavailable("injected")
        return HOOKS

    harness.hooks_for = hooks_for  # type: ignore[method-assign]
    harness.start()
    await until(lambda: harness.outbox.next_due() == harness.clock.now + STORE_RETRY_S)
    assert harness.receiver.sent == []
    down = False
    harness.clock.advance(STORE_RETRY_S)
    harness.loop.wake()
    assert (await _settled(harness, delivery, 1)).status is DeliveryStatus.DELIVERED
