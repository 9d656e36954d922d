"""A flood past capacity against `aos serve` (HAProxy, replicas, shards, SQLite): every
request is answered 201 or 503 `overloaded` with `Retry-After`, never 500, never left
without an answer; afterwards submits succeed again, and every 201 is in the store."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e import served

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {served.ADMIN_KEY}"}
PARAMS = {"namespace": "default"}
FLOOD = 300
#: No timing is asserted: this only proves that no request is left without an answer.
ANSWER_WITHIN_S = 120.0
RECOVER_WITHIN_S = 120.0


async def _flood(url: str) -> list[tuple[str, httpx.Response]]:
    """`FLOOD` submits at once, each on its own connection, each a new job."""
    limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=FLOOD)
    async with httpx.AsyncClient(
        base_url=url, headers=ADMIN, timeout=ANSWER_WITHIN_S, limits=limits
    ) as http:

        async def submit(job_id: str) -> tuple[str, httpx.Response]:
            body = {"jobId": job_id, "metadata": {"title": "flood"}}
            return job_id, await http.post("/api/v1/jobs", params=PARAMS, json=body)

        return await asyncio.gather(*(submit(f"flood-{i}") for i in range(FLOOD)))


def _submit_until_created(url: str) -> None:
    """A submit, retried as each 503's `Retry-After` says, until it is 201."""
    deadline = time.monotonic() + RECOVER_WITHIN_S
    with httpx.Client(base_url=url, headers=ADMIN, timeout=ANSWER_WITHIN_S) as http:
        while True:
            answer = http.post("/api/v1/jobs", params=PARAMS, json={"jobId": "after"})
            if answer.status_code == 201:
                return
            assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
            time.sleep(int(answer.headers["Retry-After"]))


def _stored(db: str) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT job_id FROM jobs WHERE namespace = 'default'").fetchall()
    return {row[0] for row in rows}


def test_a_flood_is_answered_201_or_503_with_retry_after_and_the_service_recovers(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    # Overload made easy to reach: 8 requests in flight a replica, 4 writes queued a shard.
    monkeypatch.setenv("AOS_MAX_IN_FLIGHT", "8")
    monkeypatch.setenv("AOS_MAX_PENDING_ITEMS", "4")
    port, db = free_port(), f"{tmp_path}/aos.db"
    url = f"http://127.0.0.1:{port}"
    proc = served.start(f"sqlite:///{db}", port)
    try:
        # HAProxy stamps each request itself: a client's stamp of 10 s ago is replaced, so
        # this one is not shed as if it had waited that long.
        stale = {**ADMIN, "X-Aos-Received-Ms": str(int((time.time() - 10) * 1000))}
        early = httpx.post(
            f"{url}/api/v1/jobs", params=PARAMS, json={"jobId": "early"}, headers=stale, timeout=60
        )
        assert early.status_code == 201, early.text
        answers = asyncio.run(_flood(url))
        _submit_until_created(url)
    finally:
        served.kill_all(proc)

    statuses = sorted({answer.status_code for _, answer in answers})
    assert set(statuses) <= {201, 503}, statuses
    shed = [answer for _, answer in answers if answer.status_code == 503]
    assert shed, "the flood never passed the bounds: nothing was shed"
    for answer in shed:
        assert answer.json()["error"]["code"] == "overloaded", answer.text
        assert int(answer.headers["Retry-After"]) >= 1
    created = {job_id for job_id, answer in answers if answer.status_code == 201}
    assert created, "nothing was taken during the flood"
    assert created | {"early", "after"} <= _stored(db)  # every 201 is durable
