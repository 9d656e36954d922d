"""Batch submit end to end: real Ray Serve, real shard actors (two), real SQLite; over HTTP and
from the Python client. Prints how long a 1,000-job batch takes (`-s` shows it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from actors.limits import MAX_BATCH_JOBS
from actors.routing import shard_for
from cluster import bootstrap
from cluster.client import Client
from storage.errors import Conflict, Invalid

pytestmark = pytest.mark.e2e
BATCH = "/api/v1/jobs:batch"
NUM_SHARDS = 2  # as tests/e2e/conftest.py deploys


@pytest.fixture
def namespaces(admin: httpx.Client) -> list[str]:
    """Four fresh namespaces, two owned by each shard."""
    names: list[str] = []
    for slot in range(NUM_SHARDS):
        while sum(shard_for(n, NUM_SHARDS) == slot for n in names) < 2:
            name = f"b-{uuid.uuid4().hex[:12]}"
            if shard_for(name, NUM_SHARDS) == slot:
                names.append(name)
    for name in names:
        assert admin.post("/api/v1/namespaces", json={"name": name}).status_code == 201
    return names


@pytest.fixture
def client(service: bootstrap.Service) -> Iterator[Client]:
    yield Client.connect()


def spread(namespaces: list[str], count: int, prefix: str = "job") -> list[dict[str, object]]:
    """`count` submit bodies, round-robin over `namespaces`."""
    return [
        {
            "jobId": f"{prefix}-{i}",
            "namespace": namespaces[i % len(namespaces)],
            "metadata": {"title": f"batch job {i}", "tags": ["batch"]},
        }
        for i in range(count)
    ]


def post_batch(http: httpx.Client, jobs: list[dict[str, object]]) -> list[dict[str, object]]:
    response = http.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 200, response.text
    items: list[dict[str, object]] = response.json()["items"]
    assert len(items) == len(jobs)
    return items


def test_a_batch_across_shards_is_created_then_200_and_each_job_can_be_read(admin, namespaces):
    jobs = spread(namespaces, 300)
    created = post_batch(admin, jobs)
    assert [item["status"] for item in created] == [201] * 300
    again = post_batch(admin, jobs)
    assert [item["status"] for item in again] == [200] * 300
    assert [item["job"] for item in again] == [item["job"] for item in created]
    for job, item in zip(jobs, created, strict=True):
        read = admin.get(f"/api/v1/jobs/{job['jobId']}", params={"namespace": job["namespace"]})
        assert read.status_code == 200 and read.json() == item["job"]


def test_each_job_has_its_own_status_through_the_actors(admin, namespaces):
    ns = namespaces[0]
    post_batch(admin, [{"jobId": "taken", "namespace": ns, "metadata": {"title": "a"}}])
    items = post_batch(
        admin,
        [
            {"jobId": "taken", "namespace": ns, "metadata": {"title": "a"}},
            {"jobId": "taken", "namespace": ns, "metadata": {"title": "other"}},
            {"jobId": "new", "namespace": ns},
            {"jobId": "bad/id", "namespace": ns},
            {"jobId": "lost", "namespace": "no-such-namespace"},
        ],
    )
    assert [item["status"] for item in items] == [200, 409, 201, 422, 404]
    assert [item["error"]["code"] for item in items if "error" in item] == [
        "conflict",
        "invalid",
        "not_found",
    ]


def test_a_batch_over_the_most_jobs_is_413(admin, namespaces):
    jobs = spread(namespaces, MAX_BATCH_JOBS + 1)
    response = admin.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


def test_the_largest_batch_over_http_and_its_time(admin, namespaces):
    jobs = spread(namespaces, MAX_BATCH_JOBS, prefix="big")
    started = time.perf_counter()
    items = post_batch(admin, jobs)
    elapsed_s = time.perf_counter() - started
    assert [item["status"] for item in items] == [201] * MAX_BATCH_JOBS
    again_started = time.perf_counter()
    assert [item["status"] for item in post_batch(admin, jobs)] == [200] * MAX_BATCH_JOBS
    again_s = time.perf_counter() - again_started
    print(
        f"\nbatch of {MAX_BATCH_JOBS} over HTTP: {elapsed_s * 1000:.0f} ms new"
        f" ({MAX_BATCH_JOBS / elapsed_s:.0f} jobs/s), {again_s * 1000:.0f} ms resubmitted"
    )


def test_the_python_client_submits_a_batch_to_the_shards(client, admin, namespaces):
    jobs = spread(namespaces, MAX_BATCH_JOBS, prefix="py")
    started = time.perf_counter()
    results = client.submit_many(None, jobs)
    elapsed_s = time.perf_counter() - started
    assert [r.created for r in results] == [True] * MAX_BATCH_JOBS
    print(f"\nbatch of {MAX_BATCH_JOBS} from the Python client: {elapsed_s * 1000:.0f} ms")
    again = client.submit_many(None, [*jobs[:3], {**jobs[3], "metadata": {"title": "x"}}])
    assert [r.created for r in again[:3]] == [False] * 3
    assert [r.job for r in again[:3]] == [r.job for r in results[:3]]
    assert isinstance(again[3].error, Conflict)
    bad = client.submit_many(namespaces[0], [{"jobId": "a b"}])
    assert isinstance(bad[0].error, Invalid)
    seen = admin.get(f"/api/v1/jobs/{jobs[5]['jobId']}", params={"namespace": jobs[5]["namespace"]})
    assert seen.status_code == 200 and seen.json()["metadata"]["title"] == "batch job 5"
