"""Faults: a killed shard actor comes back with every acknowledged write."""

from __future__ import annotations

import time

import pytest
import ray

from actors.routing import RAY_NAMESPACE, shard_for, shard_name

pytestmark = pytest.mark.e2e


def _eventually_ok(call, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        response = call()
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        assert response.headers.get("retry-after")
        time.sleep(0.2)


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
