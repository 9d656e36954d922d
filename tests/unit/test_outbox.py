"""The outbox: which changes become deliveries, coalescing windows, and the retry schedule."""

from __future__ import annotations

import json
import random

import pytest

from actors.webhooks.backoff import RetryPolicy
from actors.webhooks.outbox import Hooks, Outbox
from storage.records import Attempt, Chunk, DeliveryStatus, Job, JobStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(clock: Clock) -> Outbox:
    return Outbox(slot=0, clock=clock, coalesce_s=1.0, max_payload_bytes=4096)


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


def _chunk(seq: int, data: bytes = b"x") -> Chunk:
    return Chunk("acme", "j1", seq, seq - 1, data)


def _body(delivery) -> dict:
    return json.loads(delivery.payload)


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


def test_appends_in_one_window_grow_one_delivery(outbox, clock):
    job = _job()
    first = outbox.on_change(job, job.evolve(output_seq=1), [_chunk(1, b"a")], ALL)
    second = outbox.on_change(job, job.evolve(output_seq=2), [_chunk(2, b"b")], ALL)
    assert first[0].delivery_id == second[0].delivery_id
    assert [c["data"] for c in _body(second[0])["data"]["chunks"]] == ["a", "b"]
    clock.now += 1.5
    third = outbox.on_change(job, job.evolve(output_seq=3), [_chunk(3, b"c")], ALL)
    assert third[0].delivery_id != first[0].delivery_id  # the window closed


def test_a_full_window_starts_a_new_delivery_and_a_huge_chunk_is_referenced(outbox):
    job = _job()
    a = outbox.on_change(job, job, [_chunk(1, b"a" * 1500)], ALL)[0]
    b = outbox.on_change(job, job, [_chunk(2, b"b" * 1500)], ALL)[0]
    c = outbox.on_change(job, job, [_chunk(3, b"c" * 1500)], ALL)[0]
    assert a.delivery_id == b.delivery_id != c.delivery_id
    (huge,) = _body(outbox.on_change(job, job, [_chunk(4, b"h" * 5000)], ALL)[0])["data"]["chunks"][
        -1:
    ]
    assert huge["truncated"] and huge["data"] is None and huge["size"] == 5000


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
