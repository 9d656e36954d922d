"""Many streams of one job share one watch on its shard per `Api` replica (actors/watch_hub.py):
each stream still gets every chunk in order, and closing them ends the watch."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest
import ray

from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from tests.e2e.sse import frames, read_until
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e

STREAMS = 16
CHUNKS = 5
NUM_SHARDS = 2  # the e2e service's (tests/e2e/conftest.py)
LIVE_S = 30.0


def _watches(shard: ray.actor.ActorHandle) -> int:
    return int(ray.get(shard.stats.remote(), timeout=30)["watches"])


def _quiet_watches(shard: ray.actor.ActorHandle) -> int:
    """The shard's watches held by other tests' readers (the session's soak long-polls one
    job again and again: a sample may fall between two polls): the most of a few samples."""
    most = 0
    for _ in range(5):
        most = max(most, _watches(shard))
        time.sleep(0.05)  # spreads the samples, not synchronisation
    return most


def test_streams_of_one_job_share_one_watch_per_replica_and_each_gets_every_chunk(
    tenant, service, settings
):
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "fan"}).status_code == 201
    shard = ray.get_actor(
        shard_name(shard_for(tenant.namespace, NUM_SHARDS)), namespace=RAY_NAMESPACE
    )
    before = _quiet_watches(shard)
    with contextlib.ExitStack() as held:
        streams = []
        for _ in range(STREAMS):  # one connection each: HAProxy spreads them over replicas
            http = held.enter_context(
                httpx.Client(base_url=service.url, headers=dict(tenant.http.headers), timeout=60)
            )
            response = held.enter_context(http.stream("GET", "/api/v1/jobs/fan/stream"))
            assert response.status_code == 200
            stream = frames(response)
            read_until(stream, _event("progress"), timeout_s=LIVE_S, what="the first progress")
            streams.append(stream)
        during = wait_until(
            lambda: _watches(shard) - before >= 1 and _watches(shard),
            timeout_s=LIVE_S,
            what="the streams' watch",
        )
        assert during - before <= settings.num_replicas, (before, during)

        for n in range(1, CHUNKS + 1):
            posted = tenant.http.post("/api/v1/jobs/fan/output", content=f"chunk {n}")
            assert posted.status_code == 200, posted.text
        for stream in streams:
            got = read_until(stream, _event("output", CHUNKS), timeout_s=LIVE_S, what="output")
            outputs = [f for f in got if f.get("event") == "output"]
            assert [f["data"]["seq"] for f in outputs] == list(range(1, CHUNKS + 1))
            assert [f["data"]["data"] for f in outputs] == [f"chunk {n}" for n in range(1, 6)]
        assert _watches(shard) - before <= settings.num_replicas

    wait_until(
        lambda: _watches(shard) <= before,
        timeout_s=LIVE_S,
        what="the watch to end with the last stream",
        state=lambda: (before, _watches(shard)),
    )


def _event(kind: str, seq: int | None = None):
    def match(frame) -> bool:
        return frame.get("event") == kind and (seq is None or frame["data"].get("seq") == seq)

    return match
