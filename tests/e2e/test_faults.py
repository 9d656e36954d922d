"""Faults: a killed shard actor comes back with every acknowledged write."""

from __future__ import annotations

import hashlib

import pytest
import ray

from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e


def _eventually_ok(call, timeout_s: float = 60.0):
    """The first answer that is not 503; every 503 meanwhile must say when to retry."""

    def answered():
        response = call()
        if response.status_code != 503:
            return response
        assert response.headers.get("retry-after")
        return None

    return wait_until(
        answered, timeout_s=timeout_s, what="the restarted shard to answer", interval_s=0.2
    )


def test_a_killed_shard_actor_restarts_and_serves_all_acknowledged_output(tenant):
    tenant.http.post("/api/v1/jobs", json={"jobId": "survivor"})
    for i in range(20):
        assert tenant.http.post("/api/v1/jobs/survivor/output", content=f"{i};").status_code == 200
    shard = ray.get_actor(shard_name(shard_for(tenant.namespace, 2)), namespace=RAY_NAMESPACE)
    ray.kill(shard, no_restart=False)

    status = _eventually_ok(lambda: tenant.http.get("/api/v1/jobs/survivor/status"))
    assert status.status_code == 200 and status.json()["outputSeq"] == 20
    more = _eventually_ok(lambda: tenant.http.post("/api/v1/jobs/survivor/output", content="20;"))
    assert more.json()["seq"] == 21
    output = tenant.http.get("/api/v1/jobs/survivor/output").json()["output"]
    assert output == "".join(f"{i};" for i in range(21))


def _jobs_loaded(shard) -> int:
    """The restarted shard's live jobs; the first call through a handle held across the
    restart may fail as `ActorUnavailableError` ("the actor was restarted")."""

    def loaded():
        try:
            return ray.get(shard.stats.remote())["jobsLoaded"]
        except ray.exceptions.ActorUnavailableError:
            return None

    return wait_until(loaded, timeout_s=60, what="the restarted shard's stats", interval_s=0.2)


def _live_job(i: int) -> dict[str, object]:
    """A submit body with the fields a reload shares between jobs (tags, webhook settings,
    TTL) set on some and not others."""
    body: dict[str, object] = {
        "jobId": f"live-{i}",
        "metadata": {"title": f"job {i}", "description": "reloaded", "tags": ["prod", f"t{i % 3}"]},
    }
    if i % 2:
        body |= {"webhookUrl": "http://127.0.0.1:9/hook", "webhookEvents": ["job.completed"]}
    if i % 3:
        body["retentionPolicy"] = {"ttl": 3600 + i % 2}
    return body


def test_a_restarted_shard_reloads_every_running_job_as_it_was(tenant):
    """A shard's Running jobs come back from the store field for field after a restart
    (their shared values included: DESIGN-NOTES "A million live jobs"), keep running, and
    one never written to completes with the SHA-256 of no bytes."""
    count = 300
    batch = tenant.http.post(
        "/api/v1/jobs:batch", json={"jobs": [_live_job(i) for i in range(count)]}
    )
    assert batch.status_code == 200 and {item["status"] for item in batch.json()["items"]} == {201}
    before = {i: tenant.http.get(f"/api/v1/jobs/live-{i}").json() for i in range(count)}
    shard = ray.get_actor(shard_name(shard_for(tenant.namespace, 2)), namespace=RAY_NAMESPACE)
    ray.kill(shard, no_restart=False)

    first = _eventually_ok(lambda: tenant.http.get("/api/v1/jobs/live-0"))
    assert first.json() == before[0]
    assert _jobs_loaded(shard) >= count
    for i in range(1, count):
        assert tenant.http.get(f"/api/v1/jobs/live-{i}").json() == before[i]
    done = tenant.http.post("/api/v1/jobs/live-0/complete", json={"status": "Succeeded"})
    assert done.status_code == 200 and done.json()["status"] == "Succeeded"
    [version] = tenant.http.get("/api/v1/jobs/live-0").json()["versions"]
    assert version["sha256"] == hashlib.sha256(b"").hexdigest()
