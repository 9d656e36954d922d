"""Jobs read back from a store share their repeated values, and are equal to what was written."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from actors.digest import RunningDigest
from storage import sharing, sqlite
from storage.records import Batch, Chunk, Job, JobStatus, OutputFormat
from storage.sqlite import SqliteStore

JOBS = [
    Job("acme", "a", 0, 1.5, 1.5),
    Job(
        "acme",
        "b",
        3,
        1.5,
        2.5,
        status=JobStatus.FAILED,
        progress=0.25,
        estimated_completion=9.0,
        completed_at=3.0,
        error="boom",
        title="t",
        description="d",
        tags=("prod", "gpu"),
        webhook_url="https://hooks.example.com/x",
        webhook_events=("job.completed",),
        ttl_s=86_400,
        expires_at=90_000.0,
        output_format=OutputFormat.JSON,
        revision=7,
        output_seq=2,
        output_size=10,
        request_hash="f" * 32,
        output_version=2,
        output_version_at=2.0,
        output_sha256="0" * 64,
    ),
    Job("acme", "c", 0, 1.5, 1.5, progress=-0.0, webhook_events=()),
]


def _plain(job: Job) -> dict[str, object]:
    """The job's fields as a JSON store keeps them (enums as strings, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(job)))


@pytest.mark.parametrize("job", JOBS, ids=lambda job: job.job_id)
def test_a_job_read_back_from_its_plain_fields_is_the_same_job(job):
    back = Job.from_plain(_plain(job))
    assert back == job
    assert [type(getattr(back, f)) for f in job.__slots__] == [
        type(getattr(job, f)) for f in job.__slots__
    ]


def test_jobs_read_back_share_their_repeated_values():
    job = JOBS[1]
    first, second = (Job.from_plain(_plain(job)) for _ in range(2))
    for name in ("namespace", "tags", "webhook_url", "webhook_events", "ttl_s"):
        assert getattr(first, name) is getattr(second, name), name
    assert first.tags[0] is second.tags[0]
    fresh = Job.from_plain(_plain(JOBS[0]))
    assert fresh.updated_at is fresh.created_at
    assert fresh.progress is Job.from_plain(_plain(JOBS[0])).progress


def test_a_negative_zero_an_int_and_a_bool_stay_what_they_are():
    assert str(sharing.zero_or(-0.0)) == "-0.0"
    assert type(sharing.zero_or(0)) is int
    assert sharing.integer(True) is True
    assert type(sharing.integer(1)) is int
    assert sharing.same_or(2, 2.0) == 2 and type(sharing.same_or(2, 2.0)) is int


def test_json_strings_parses_once_and_shares():
    text = '["prod","gpu"]'
    assert sharing.json_strings(text) == ("prod", "gpu")
    assert sharing.json_strings(text) is sharing.json_strings('["prod","gpu"]'[:])


async def test_sqlite_reloads_a_slot_page_by_page(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite, "ROWS_PER_PAGE", 2)
    store = SqliteStore(f"sqlite:///{tmp_path}/pages.db")
    await store.open()
    try:
        epoch = await store.acquire_shard(0, "test")
        jobs = [dataclasses.replace(JOBS[0], job_id=f"j{i}", tags=("a", "b")) for i in range(5)]
        await store.commit(Batch(slot=0, epoch=epoch, jobs=jobs))
        loaded = await store.load_shard(0)
    finally:
        await store.close()
    assert sorted(loaded, key=lambda job: job.job_id) == jobs
    assert len({id(job.tags) for job in loaded}) == 1


def test_an_empty_version_has_the_digest_of_no_bytes():
    digest = RunningDigest(1)
    assert digest.hexdigest() == hashlib.sha256(b"").hexdigest()
    for seq, data in enumerate((b"ab", b"cd"), start=1):
        digest.feed(Chunk("acme", "a", seq, 2 * (seq - 1), data))
    assert digest.hexdigest() == hashlib.sha256(b"abcd").hexdigest()
