"""Resuming a job's output (`actors.resume`): a resume point a client cannot have reached in
this job's committed output is refused, never silently skipped past; through the app too
(SSE `Last-Event-ID` and `?after=`, `/output/raw?after=`), without Ray."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from actors import resume
from actors.commands import JobSpec
from actors.feed import EventKind, job_events
from actors.resume import ResumePoint, event_id, incarnation, parse_resume_point, resume_after
from actors.shard_client import ShardClient
from actors.shard_types import Update
from storage.errors import Conflict, Invalid
from storage.memory import MemoryStore
from storage.records import Job
from tests.unit.fakes import WAIT_S, Watched
from tests.unit.test_api import JOBS, error_of, http, make_app, new_tenant, sse_frames, submit

JOB = Job("acme", "j1", slot=0, created_at=1_764_460_000.123456, updated_at=0.0, output_seq=2)
V1 = JOB.current_version


@pytest.fixture
async def api(store: MemoryStore, watched: Watched) -> AsyncIterator[httpx.AsyncClient]:
    async with http(make_app(store, ShardClient.in_process([watched], store=store))) as client:
        yield client


@pytest.fixture
async def acme(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant(api, "acme")


def test_an_event_id_is_the_seq_and_the_incarnation_of_its_output():
    assert event_id(JOB, 1, 2) == f"2-{incarnation(JOB, 1)}"
    point = parse_resume_point(event_id(JOB, 1, 2), what="id")
    assert point == ResumePoint(2, incarnation(JOB, 1))
    assert resume_after(JOB, V1, point) == 2


def test_incarnations_of_one_job_id_and_of_its_versions_differ_and_a_job_keeps_its_own():
    again = replace(JOB, created_at=JOB.created_at + 0.000001)
    assert incarnation(again, 1) != incarnation(JOB, 1) != incarnation(JOB, 2)
    assert incarnation(replace(JOB, revision=9, output_seq=5), 1) == incarnation(JOB, 1)


def test_an_id_of_another_output_version_is_refused():
    """Version 2 of a re-run starts again at seq 1: version 1's "after 1" is not its."""
    with pytest.raises(Conflict, match="another version"):
        resume_after(JOB, V1, parse_resume_point(event_id(JOB, 2, 1), what="id"))


@pytest.mark.parametrize("text", ["0", "2", " 2 ", "007", str(2**63 - 1)])
def test_a_bare_seq_up_to_the_output_end_is_this_jobs(text):
    point = parse_resume_point(text, what="id")
    assert point.incarnation is None
    if point.seq <= JOB.output_seq:
        assert resume_after(JOB, V1, point) == point.seq


@pytest.mark.parametrize(
    "text", ["", "x", "-1", "1.5", "²", "٣", "1" * 20, str(2**63), "2-", "-abc", "2-ABC", "2-a-b"]
)
def test_a_malformed_resume_point_is_invalid(text):
    with pytest.raises(Invalid):
        parse_resume_point(text, what="Last-Event-ID")


def test_a_seq_past_the_output_is_refused_not_skipped_to():
    """The fault: "after 5" on a job at seq 2 would have skipped 3 to 5 once they came."""
    with pytest.raises(Conflict, match="past output version 1"):
        resume_after(JOB, V1, ResumePoint(5))
    with pytest.raises(Conflict, match="past output version 1"):
        resume_after(JOB, V1, ResumePoint(3, incarnation(JOB, 1)))


def test_an_id_of_an_earlier_incarnation_is_refused_even_within_the_output():
    earlier = replace(JOB, created_at=JOB.created_at - 60)
    with pytest.raises(Conflict, match="earlier job"):
        resume_after(JOB, V1, parse_resume_point(event_id(earlier, 1, 1), what="id"))


async def test_the_feed_ends_when_the_job_is_deleted_and_submitted_again_while_read():
    recreated = replace(JOB, created_at=JOB.created_at + 5, revision=3, output_seq=4)

    async def watch(revision: int, after_seq: int, timeout_s: float) -> Update:
        return Update(recreated)

    async def read(after_seq: int, limit: int) -> list:
        return []

    events = job_events(replace(JOB, output_seq=0), watch=watch, read=read, heartbeat_s=1.0)
    kinds = [(await anext(events)).kind for _ in range(2)]
    assert kinds == [EventKind.STATUS, EventKind.PROGRESS]
    with pytest.raises(Conflict, match="deleted and submitted again"):
        await anext(events)


# -- through the app --------------------------------------------------------------------------


async def _job_at_seq_2(api: httpx.AsyncClient, acme: dict[str, str]) -> None:
    await submit(api, acme, jobId="j1")
    for part in (b"1", b"2"):
        assert (await api.post(f"{JOBS}/j1/output", content=part, headers=acme)).is_success


async def test_last_event_id_past_the_output_of_a_running_job_is_409(api, acme):
    await _job_at_seq_2(api, acme)
    for headers, query in (({"Last-Event-ID": "5"}, ""), ({}, "?after=5")):
        error_of(await api.get(f"{JOBS}/j1/stream{query}", headers=acme | headers), 409)
    error_of(await api.get(f"{JOBS}/j1/output/raw?after=5", headers=acme), 409)
    raw = await api.get(f"{JOBS}/j1/output/raw?after=2", headers=acme)
    assert raw.status_code == 200 and raw.content == b""


async def test_an_event_id_of_a_deleted_job_is_409_on_the_job_submitted_again(api, acme):
    await _job_at_seq_2(api, acme)
    await api.post(f"{JOBS}/j1/cancel", headers=acme)
    old = sse_frames((await api.get(f"{JOBS}/j1/stream", headers=acme)).text)[1]["id"]
    assert (await api.delete(f"{JOBS}/j1", headers=acme)).status_code == 204
    await _job_at_seq_2(api, acme)  # the same id, output 1 and 2 again
    stale = await api.get(f"{JOBS}/j1/stream", headers=acme | {"Last-Event-ID": old})
    assert "earlier job" in error_of(stale, 409)["message"]


async def test_events_resumed_at_the_last_id_get_every_chunk_after_it(shards):
    """The fault's input with an id this job gave out: resumed at 2, chunks 3 to 6 arrive
    live, and all four are delivered."""
    await shards.submit("acme", JobSpec(), job_id="j1")
    for part in (b"1", b"2"):
        await shards.append("acme", "j1", part)
    job = await shards.get("acme", "j1")
    point = parse_resume_point(event_id(job, 1, 2), what="id")
    events = await shards.events("acme", "j1", after_seq=point, heartbeat_s=WAIT_S)

    async def outputs() -> list[int]:
        seen = []
        async for event in events:
            if event.chunk is not None:
                seen.append(event.chunk.seq)
            if len(seen) == 4:
                return seen
        return seen

    reading = asyncio.ensure_future(outputs())
    for part in (b"3", b"4", b"5", b"6"):
        await shards.append("acme", "j1", part)
    assert await asyncio.wait_for(reading, WAIT_S) == [3, 4, 5, 6]
    with pytest.raises(Conflict):
        await shards.events("acme", "j1", after_seq=ResumePoint(7))


def test_the_module_names_its_public_parts():
    assert {"event_id", "incarnation", "parse_resume_point", "resume_after"} <= set(dir(resume))
