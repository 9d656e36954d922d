"""Concurrent submits of one job id through real HTTP (HAProxy, two Api replicas, the shard
actors, SQLite): exactly one request creates the job, the same request again is 200 once it
is durable, another request is 409; never a 404 for the job being created."""

from __future__ import annotations

import asyncio
import collections

import httpx
import pytest

pytestmark = pytest.mark.e2e

TRIALS = 12
SAME = 8


async def _trial(url: str, key: str, job_id: str) -> list[tuple[str, int]]:
    """`SAME` identical submits, the same job in a batch, and one other request for the id,
    all at once, each on its own connection: (which body, status) of every answer."""
    same = {"jobId": job_id, "metadata": {"title": "same"}}
    other = {"jobId": job_id, "metadata": {"title": "other"}}
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=30) for _ in range(10)]
    try:
        calls = [c.post("/api/v1/jobs", json=same) for c in clients[:SAME]]
        calls.append(clients[SAME].post("/api/v1/jobs:batch", json={"jobs": [same]}))
        calls.append(clients[SAME + 1].post("/api/v1/jobs", json=other))
        replies = await asyncio.gather(*calls)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    batch = replies[SAME].json()["items"][0]["status"]
    return [
        *(("same", r.status_code) for r in replies[:SAME]),
        ("same", batch),
        ("other", replies[SAME + 1].status_code),
    ]


def test_concurrent_submits_of_one_id_are_one_201_then_200_or_409(tenant, service):
    seen = collections.Counter()
    for trial in range(TRIALS):
        job_id = f"race-{trial}"
        answers = asyncio.run(_trial(service.url, tenant.key, job_id))
        seen.update(status for _, status in answers)
        creators = [body for body, status in answers if status == 201]
        assert len(creators) == 1, answers
        winner = creators[0]
        for body, status in answers:
            assert status in ((200, 201) if body == winner else (409,)), answers
        job = tenant.http.get(f"/api/v1/jobs/{job_id}").json()
        assert job["metadata"]["title"] == winner
    assert seen[404] == 0
