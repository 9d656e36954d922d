"""Faults: a killed shard actor comes back with every acknowledged write."""

from __future__ import annotations

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
