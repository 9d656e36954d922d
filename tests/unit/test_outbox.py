"""The outbox: which changes become deliveries, coalescing windows, and the retry schedule."""

from __future__ import annotations

import json
import random

import pytest

from actors.versions import next_version
from actors.webhooks import body
from actors.webhooks.backoff import RetryPolicy
from actors.webhooks.outbox import DEFER_S, Hooks, Outbox
from storage.memory import MemoryStore
from storage.records import (
    Attempt,
    Batch,
    Chunk,
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    OutputFormat,
)
from tests.unit.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(clock: FakeClock) -> Outbox:
    return Outbox(slot=0, clock=clock, coalesce_s=1.0, max_payload_bytes=4096)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


ALL = Hooks(
    url="http://hooks.example/x",
    events=("job.created", "job.progress", "job.output", "job.completed"),
)


def _job(**changes) -> Job:
    return (
        Job("acme", "j1", 0, 1000.0, 1000.0).evolve(**changes)
        if changes
        else Job("acme", "j1", 0, 1000.0, 1000.0)
    )


def _chunk(seq: int, data: bytes = b"x", offset: int | None = None) -> Chunk:
    return Chunk("acme", "j1", seq, seq - 1 if offset is None else offset, data)


def _body(delivery) -> dict:
    return json.loads(delivery.payload)


def _reader(store: MemoryStore) -> body.ReadChunks:
    async def read(
        namespace: str, job_id: str, version: int, after_seq: int, limit: int
    ) -> list[Chunk]:
        return await store.read_output(
            namespace, job_id, version=version, after_seq=after_seq, limit=limit
        )

    return read


async def _sent(delivery: Delivery, store: MemoryStore) -> dict:
    """The body a receiver gets for `delivery`, its chunks read from `store`."""
    return json.loads(await body.render(delivery, _reader(store)))


async def _append(
    outbox: Outbox, store: MemoryStore, job: Job, data: bytes
) -> tuple[Job, Delivery]:
    """What the shard does for an append: the chunk and the window's version commit together."""
    seq = job.output_seq + 1
    chunk = Chunk(job.namespace, job.job_id, seq, job.output_size, data, job.output_version)
    after = job.evolve(output_seq=chunk.seq, output_size=chunk.end)
    (delivery,) = outbox.on_change(job, after, [chunk], ALL)
    await store.commit(Batch(chunks=[chunk], deliveries=[delivery]))
    outbox.committed([delivery])
    return after, delivery


async def test_a_new_output_version_closes_the_open_window_and_opens_its_own(outbox, store, clock):
    """A window holds one version's chunks (read back by version): a re-run sends the open
    window of the version it completes at once, and its own output goes in a new one."""
    job, first = await _append(outbox, store, _job(), b"old")
    _, rerun = next_version(job, sha256="ab", now=clock())
    [closed] = outbox.on_change(job, rerun, (), ALL)
    assert closed.delivery_id == first.delivery_id and closed.next_attempt_at == clock()
    _, second = await _append(outbox, store, rerun, b"new")
    assert second.delivery_id != first.delivery_id
    old_body, new_body = await _sent(closed, store), await _sent(second, store)
    assert [c["data"] for c in old_body["data"]["chunks"]] == ["old"]
    assert [c["data"] for c in new_body["data"]["chunks"]] == ["new"]
    assert new_body["data"]["outputVersion"] == 2


def test_no_url_means_no_deliveries(outbox):
    assert outbox.on_change(None, _job(), (), Hooks()) == []


def test_by_default_only_completion_is_sent(outbox):
    job = _job()
    hooks = Hooks(url="http://hooks.example/x")
    assert outbox.on_change(None, job, (), hooks) == []
    done = job.evolve(status=JobStatus.CANCELLED)
    (delivery,) = outbox.on_change(job, done, (), hooks)
    assert delivery.event_type == "job.completed"
    assert _body(delivery)["data"]["status"] == "Cancelled"


def test_the_jobs_own_url_and_events_win_over_the_namespaces(outbox):
    job = _job(webhook_url="http://mine.example/", webhook_events=("job.created",))
    (delivery,) = outbox.on_change(None, job, (), ALL)
    assert delivery.url == "http://mine.example/" and delivery.event_type == "job.created"


async def test_appends_in_one_window_grow_one_delivery(outbox, clock, store):
    job, first = await _append(outbox, store, _job(), b"a")
    job, second = await _append(outbox, store, job, b"b")
    assert first.delivery_id == second.delivery_id
    assert [c["data"] for c in (await _sent(second, store))["data"]["chunks"]] == ["a", "b"]
    clock.advance(1.5)
    job, third = await _append(outbox, store, job, b"c")
    assert third.delivery_id != first.delivery_id  # the window closed
    assert [c["seq"] for c in (await _sent(third, store))["data"]["chunks"]] == [3]


async def test_a_full_window_starts_a_new_delivery_and_a_huge_chunk_is_referenced(outbox, store):
    job, a = await _append(outbox, store, _job(), b"a" * 1500)
    job, b = await _append(outbox, store, job, b"b" * 1500)
    job, c = await _append(outbox, store, job, b"c" * 1500)
    assert a.delivery_id == b.delivery_id != c.delivery_id
    job, d = await _append(outbox, store, job, b"h" * 5000)
    assert d.delivery_id == c.delivery_id
    first, huge = (await _sent(d, store))["data"]["chunks"]
    assert first["data"] == "c" * 1500
    assert huge == {"seq": 4, "offset": 4500, "size": 5000, "data": None, "truncated": True}


async def test_a_window_version_stores_the_same_few_bytes_however_much_it_holds(store):
    outbox = Outbox(slot=0, clock=FakeClock(), coalesce_s=10.0)
    job, sizes = _job(), []
    for _ in range(200):
        job, delivery = await _append(outbox, store, job, b"x" * 1024)
        sizes.append(len(delivery.payload))
    assert delivery.payload.startswith(body.WINDOW_TAG)
    assert max(sizes) < 1024 and max(sizes) - min(sizes) < 16  # a few more digits, not chunks
    assert len((await _sent(delivery, store))["data"]["chunks"]) == 200


async def test_a_sent_window_is_the_body_receivers_get(clock, store):
    """The job's status as the API renders it, plus namespace, sequence and the chunks."""
    outbox = Outbox(slot=0, clock=clock, coalesce_s=10.0, max_payload_bytes=180)
    job = _job(output_format=OutputFormat.BINARY, progress=12.5, error="e\u00e9")
    job, _ = await _append(outbox, store, job, b"\x00\xff")
    clock.advance(0.25)
    job, delivery = await _append(outbox, store, job, b"y" * 100)
    expected = {
        "type": "job.output",
        "timestamp": "1970-01-01T00:16:40.250Z",
        "data": {
            "namespace": "acme",
            "jobId": "j1",
            "status": "Running",
            "progress": 12.5,
            "estimatedCompletion": None,
            "outputVersion": 1,
            "outputSeq": 2,
            "outputSize": 102,
            "revision": job.revision,
            "updatedAt": "1970-01-01T00:16:40.000Z",
            "completedAt": None,
            "error": "e\u00e9",
            "sequence": job.revision,
            "chunks": [
                {"seq": 1, "offset": 0, "size": 2, "data": "AP8=", "encoding": "base64"},
                {"seq": 2, "offset": 2, "size": 100, "data": None, "truncated": True},
            ],
        },
    }
    sent = await body.render(delivery, _reader(store))
    assert sent == json.dumps(expected, separators=(",", ":")).encode()


async def test_a_retry_or_a_restart_renders_the_same_bytes(outbox, clock, store):
    job, delivery = await _append(outbox, store, _job(), "h\u00e9llo ".encode())
    job, delivery = await _append(outbox, store, job, b"world")
    first = await body.render(delivery, _reader(store))
    assert await body.render(delivery, _reader(store)) == first
    clock.advance(5)
    await _append(outbox, store, job.evolve(progress=50.0), b"later")  # the next window
    (reloaded, _) = await store.load_pending_deliveries(0)
    assert reloaded == delivery
    assert await body.render(reloaded, _reader(store)) == first
    assert [c["seq"] for c in json.loads(first)["data"]["chunks"]] == [1, 2]


async def test_a_window_holds_only_the_seqs_committed_with_its_version(outbox, store):
    job, early = await _append(outbox, store, _job(), b"a")
    job, _ = await _append(outbox, store, job, b"b")
    assert [c["data"] for c in (await _sent(early, store))["data"]["chunks"]] == ["a"]


async def test_rendering_reads_every_chunk_when_reads_return_short_pages(outbox, store):
    job = _job()
    for data in (b"a", b"b", b"c", b"d", b"e"):
        job, delivery = await _append(outbox, store, job, data)
    limits = []

    async def two_at_a_time(namespace: str, job_id: str, version: int, after_seq: int, limit: int):
        limits.append(limit)
        page = await store.read_output(
            namespace, job_id, version=version, after_seq=after_seq, limit=2
        )
        return page[:limit]

    sent = json.loads(await body.render(delivery, two_at_a_time))
    assert "".join(c["data"] for c in sent["data"]["chunks"]) == "abcde"
    assert len(limits) == 3


async def test_a_window_whose_output_was_deleted_is_gone(outbox, store):
    job, delivery = await _append(outbox, store, _job(), b"a")
    job, delivery = await _append(outbox, store, job, b"b")
    await store.commit(Batch(deleted=[job.key]))
    with pytest.raises(body.OutputGone):
        await body.render(delivery, _reader(store))


async def test_a_window_with_a_hole_in_its_output_is_gone(outbox, store):
    job, delivery = await _append(outbox, store, _job(), b"a")
    job, delivery = await _append(outbox, store, job, b"b")
    del store.output[job.key][1][1]
    with pytest.raises(body.OutputGone):
        await body.render(delivery, _reader(store))


def test_progress_and_other_events_are_stored_as_the_body_they_send(outbox):
    job = _job()
    (created,) = outbox.on_change(None, job, (), ALL)
    (progress,) = outbox.on_change(job, job.evolve(progress=40.0), (), ALL)
    assert _body(created)["type"] == "job.created"
    assert _body(progress)["data"]["progress"] == 40.0 and "chunks" not in _body(progress)["data"]


def test_completion_closes_open_windows_so_they_go_out_first(outbox, clock):
    job = _job()
    (window,) = outbox.on_change(job, job, [_chunk(1)], ALL)
    outbox.committed([window])
    assert outbox.due(clock.now) == []  # still coalescing
    done = job.evolve(status=JobStatus.SUCCEEDED)
    closed, completed = outbox.on_change(job, done, (), ALL)
    assert closed.delivery_id == window.delivery_id and closed.next_attempt_at == clock.now
    outbox.committed([closed, completed])
    due = outbox.due(clock.now)
    assert [d.event_type for d in due] == ["job.output", "job.completed"]


def test_a_delivery_is_handed_out_once_until_its_attempt_is_recorded(outbox, clock):
    job = _job()
    (d,) = outbox.on_change(job, job.evolve(status=JobStatus.FAILED), (), ALL)
    outbox.committed([d])
    assert outbox.due(clock.now) == [d]
    assert outbox.due(clock.now + 100) == []
    assert outbox.is_in_flight(d.delivery_id)


def test_due_hands_out_at_most_limit_in_the_order_they_fell_due(outbox, clock):
    made = []
    for i in range(5):
        job = _job(job_id=f"j{i}")
        made += outbox.on_change(job, job.evolve(status=JobStatus.FAILED), (), ALL)
        clock.advance(0.001)
    outbox.committed(made)
    first = outbox.due(clock.now, limit=2)
    assert first == made[:2]
    assert outbox.due(clock.now, limit=10) == made[2:]  # the rest, each handed out once
    assert outbox.due(clock.now) == []


def test_a_version_not_yet_committed_is_not_sent(outbox, clock):
    job = _job()
    (d,) = outbox.on_change(job, job, [_chunk(1)], ALL)
    outbox.committed([d])
    outbox.on_change(job, job, [_chunk(2)], ALL)  # grows the window, commit in flight
    assert outbox.due(clock.now + 5) == []


def test_attempt_outcomes_move_the_delivery_along(outbox, clock):
    policy = RetryPolicy(initial_delay_ms=100, max_delay_ms=1000, max_attempts=3)
    (d,) = outbox.on_change(_job(), _job(status=JobStatus.FAILED), (), ALL)
    failed = outbox.after_attempt(d, Attempt(clock.now, 1.0, 500), policy)
    assert failed.status is DeliveryStatus.PENDING and failed.next_attempt_at >= clock.now + 0.1
    ok = outbox.after_attempt(failed, Attempt(clock.now, 1.0, 204), policy)
    assert ok.status is DeliveryStatus.DELIVERED and len(ok.attempts) == 2
    gone = outbox.after_attempt(d, Attempt(clock.now, 1.0, 410), policy)
    assert gone.status is DeliveryStatus.FAILED and len(gone.attempts) == 1
    dead = d
    for _ in range(3):
        dead = outbox.after_attempt(dead, Attempt(clock.now, 1.0, None, "timeout"), policy)
    assert dead.status is DeliveryStatus.FAILED and len(dead.attempts) == 3
    again = outbox.retry_now(dead)
    assert again.status is DeliveryStatus.PENDING and again.delivery_id == d.delivery_id


def test_reloaded_pending_deliveries_are_scheduled(outbox, clock):
    (d,) = outbox.on_change(_job(), _job(status=JobStatus.FAILED), (), ALL)
    fresh = Outbox(slot=0, clock=clock)
    fresh.load([d])
    assert fresh.due(clock.now) == [d]


def test_a_failed_commit_forgets_its_window(outbox):
    job = _job()
    (d,) = outbox.on_change(job, job, [_chunk(1)], ALL)
    outbox.failed([d])
    (e,) = outbox.on_change(job, job, [_chunk(1)], ALL)
    assert e.delivery_id != d.delivery_id


def test_sequence_increases_with_the_jobs_revision(outbox):
    job = _job()
    rng = random.Random(1)
    progress = [outbox.on_change(job, job.evolve(progress=rng.random() * 100), (), ALL)[0]]
    *_, done = outbox.on_change(job, job.evolve(status=JobStatus.SUCCEEDED).evolve(), (), ALL)
    assert _body(done)["data"]["sequence"] > _body(progress[0])["data"]["sequence"]


@pytest.mark.parametrize(
    ("initial_ms", "max_ms", "retry_after_s", "waits_s"),
    [
        (200, 10_000, 3.0, 3.0),  # longer than the backoff: waited for, recorded
        (200, 5_000, 86_400.0, 5.0),  # huge: capped at the policy's maximum, recorded so
        (2_000, 2_000, 0.5, 2.0),  # shorter than the backoff: the backoff stands
    ],
)
def test_a_retry_after_sets_the_next_attempt_at_most_the_policys_maximum_delay(
    outbox, clock, initial_ms, max_ms, retry_after_s, waits_s
):
    policy = RetryPolicy(initial_delay_ms=initial_ms, max_delay_ms=max_ms, max_attempts=3)
    (d,) = outbox.on_change(_job(), _job(status=JobStatus.FAILED), (), ALL)
    busy = outbox.after_attempt(
        d, Attempt(clock.now, 1.0, 429, retry_after_s=retry_after_s), policy
    )
    assert busy.next_attempt_at == clock.now + waits_s
    assert busy.attempts[-1].retry_after_s == min(retry_after_s, max_ms / 1000)


def _created(outbox: Outbox, namespace: str, job_id: str, url: str) -> Delivery:
    job = Job(namespace, job_id, 0, 1000.0, 1000.0)
    (d,) = outbox.on_change(None, job, (), Hooks(url=url, events=("job.created",)))
    outbox.committed([d])
    return d


def test_a_receiver_holds_at_most_its_share_of_the_in_flight_slots(clock):
    """A hanging receiver keeps its deliveries in flight until they time out: it may hold
    its share, and the deliveries to another receiver go out beside them."""
    outbox = Outbox(slot=0, clock=clock, max_in_flight_per_receiver=3)
    slow = [_created(outbox, "acme", f"s{i}", "http://slow.example/h") for i in range(5)]
    fast = _created(outbox, "acme", "f", "http://fast.example/h")
    assert outbox.due(clock.now) == [*slow[:3], fast]
    assert outbox.due(clock.now) == []  # the other two wait for a slot of their receiver
    outbox.after_attempt(slow[0], Attempt(clock.now, 1.0, None, "timeout"), RetryPolicy())
    clock.advance(DEFER_S)
    assert outbox.due(clock.now) == [slow[3]]


def test_a_namespace_holds_at_most_its_share_of_the_in_flight_slots(clock):
    """Another tenant's hanging receivers (here each its own) never hold every slot."""
    outbox = Outbox(slot=0, clock=clock, max_in_flight_per_namespace=4)
    theirs = [_created(outbox, "acme", f"j{i}", f"http://h{i}.example/h") for i in range(6)]
    ours = _created(outbox, "other", "j", "http://ours.example/h")
    assert outbox.due(clock.now) == [*theirs[:4], ours]
    outbox.reschedule(theirs[0], clock.now)  # not recorded: no longer in flight
    clock.advance(DEFER_S)
    assert outbox.due(clock.now) == [theirs[0]]  # one slot free: the earliest due takes it
