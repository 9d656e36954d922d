"""The HTTP API end to end: real Ray Serve, real shard actors, real SQLite."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.e2e
JSON_TYPE = {"content-type": "application/json"}


def _submit(t, job_id="job-1", **body):
    return t.http.post("/api/v1/jobs", json={"jobId": job_id, **body})


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    return body["error"]


def test_health_needs_no_key_and_ready_checks_shards(service):
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service.url}/readyz").json() == {"status": "ready"}


def test_submit_returns_201_with_location_then_200_then_409(tenant):
    body = {"metadata": {"title": "export", "tags": ["nightly"]}}
    first = _submit(tenant, **body)
    assert first.status_code == 201
    assert first.headers["location"] == f"/api/v1/jobs/job-1?namespace={tenant.namespace}"
    job = first.json()
    assert job["status"] == "Running" and job["metadata"]["tags"] == ["nightly"]
    again = _submit(tenant, **body)
    assert again.status_code == 200 and again.json()["jobId"] == "job-1"
    clash = _submit(tenant, metadata={"title": "other"})
    assert clash.status_code == 409 and _error(clash)["code"] == "conflict"


def test_job_lifecycle_with_output_progress_and_completion(tenant):
    _submit(tenant, retentionPolicy={"ttl": "7d"})
    for i, text in enumerate(["hello ", "world"], start=1):
        r = tenant.http.post(
            "/api/v1/jobs/job-1/output", content=text, headers={"content-type": "text/plain"}
        )
        assert r.status_code == 200 and r.json()["seq"] == i
    patch = tenant.http.patch(
        "/api/v1/jobs/job-1",
        json={"progress": 42.5, "estimatedCompletion": "2030-01-01T00:00:00Z"},
    )
    assert patch.json()["progress"] == 42.5
    status = tenant.http.get("/api/v1/jobs/job-1/status").json()
    assert status["estimatedCompletion"] == "2030-01-01T00:00:00.000Z"
    done = tenant.http.post("/api/v1/jobs/job-1/complete", json={"status": "Succeeded"})
    assert done.json()["status"] == "Succeeded"
    output = tenant.http.get("/api/v1/jobs/job-1/output").json()
    assert output["output"] == "hello world" and output["format"] == "text"
    assert output["size"] == 11 and output["completedAt"].endswith("Z")
    assert tenant.http.get("/api/v1/jobs/job-1").json()["retentionPolicy"] == {"ttl": 604800}


def test_binary_output_is_base64_in_json_and_exact_bytes_raw(tenant):
    _submit(tenant, outputFormat="binary")
    blob = bytes(range(256)) * 1000
    for part in (blob[:100_000], blob[100_000:]):
        tenant.http.post(
            "/api/v1/jobs/job-1/output",
            content=part,
            headers={"content-type": "application/octet-stream"},
        )
    output = tenant.http.get("/api/v1/jobs/job-1/output").json()
    assert base64.b64decode(output["output"]) == blob
    raw = tenant.http.get("/api/v1/jobs/job-1/output/raw", headers={"Accept-Encoding": "identity"})
    assert raw.content == blob and raw.headers["content-type"] == "application/octet-stream"
    assert int(raw.headers["content-length"]) == len(blob)
    rest = tenant.http.get("/api/v1/jobs/job-1/output/raw", params={"after": 1})
    assert rest.content == blob[100_000:]


def test_producer_seq_makes_a_retried_append_safe(tenant):
    _submit(tenant)
    url = "/api/v1/jobs/job-1/output"
    first = tenant.http.post(url, params={"seq": 1}, content=b"once")
    retry = tenant.http.post(url, params={"seq": 1}, content=b"once")
    acked = {"seq": 1, "offset": 0, "size": 4, "chunks": 1, "version": 1}
    assert first.json() == retry.json() == acked
    assert tenant.http.post(url, params={"seq": 1}, content=b"other").status_code == 409
    assert tenant.http.post(url, params={"seq": 9}, content=b"gap").status_code == 409
    assert tenant.http.get("/api/v1/jobs/job-1/output").json()["output"] == "once"


def test_status_etag_gives_304_and_long_poll_wakes_on_change(tenant):
    _submit(tenant)
    first = tenant.http.get("/api/v1/jobs/job-1/status")
    etag = first.headers["etag"]
    same = tenant.http.get("/api/v1/jobs/job-1/status", headers={"If-None-Match": etag})
    assert same.status_code == 304

    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        poll = pool.submit(
            tenant.http.get,
            "/api/v1/jobs/job-1/status",
            params={"wait": 20},
            headers={"If-None-Match": etag},
        )
        # The scenario, not synchronisation: while nothing changes, the poll stays open.
        with pytest.raises(TimeoutError):
            poll.result(timeout=0.5)
        tenant.http.patch("/api/v1/jobs/job-1", json={"progress": 10})
        polled = poll.result(timeout=15)
    assert polled.status_code == 200 and polled.json()["progress"] == 10
    assert polled.headers["etag"] != etag
    assert time.monotonic() - started < 15


def test_long_poll_without_change_returns_304_after_the_wait(tenant):
    _submit(tenant)
    etag = tenant.http.get("/api/v1/jobs/job-1/status").headers["etag"]
    started = time.monotonic()
    r = tenant.http.get(
        "/api/v1/jobs/job-1/status", params={"wait": 0.3}, headers={"If-None-Match": etag}
    )
    assert r.status_code == 304
    assert time.monotonic() - started >= 0.3  # held for the whole wait, not answered at once


def test_cancel_and_delete_rules(tenant):
    _submit(tenant)
    assert tenant.http.delete("/api/v1/jobs/job-1").status_code == 409
    assert tenant.http.post("/api/v1/jobs/job-1/cancel").json()["status"] == "Cancelled"
    assert tenant.http.post("/api/v1/jobs/job-1/cancel").status_code == 409
    assert tenant.http.delete("/api/v1/jobs/job-1").status_code == 204
    assert tenant.http.get("/api/v1/jobs/job-1").status_code == 404
    assert tenant.http.delete("/api/v1/jobs/job-1").status_code == 404


def test_list_filters_and_paginates_without_gaps(tenant):
    for i in range(7):
        _submit(tenant, f"job-{i}", metadata={"tags": ["even" if i % 2 == 0 else "odd"]})
    tenant.http.post("/api/v1/jobs/job-0/complete", json={"status": "Succeeded"})
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = tenant.http.get("/api/v1/jobs", params=params).json()
        seen += [j["jobId"] for j in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"job-{i}" for i in range(7)] and len(seen) == len(set(seen))
    assert seen == [f"job-{i}" for i in reversed(range(7))]  # newest first
    even = tenant.http.get("/api/v1/jobs", params={"tag": "even"}).json()["items"]
    assert {j["jobId"] for j in even} == {"job-0", "job-2", "job-4", "job-6"}
    done = tenant.http.get("/api/v1/jobs", params={"status": "Succeeded"}).json()["items"]
    assert [j["jobId"] for j in done] == ["job-0"]
    future = tenant.http.get("/api/v1/jobs", params={"createdAfter": "2100-01-01T00:00:00Z"})
    assert future.json() == {"items": [], "nextCursor": None}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/api/v1/jobs", {"content": b"{not json", "headers": JSON_TYPE}, 400),
        ("post", "/api/v1/jobs", {"json": {"jobId": 5}}, 422),
        ("post", "/api/v1/jobs", {"json": {"jobId": "x" * 200}}, 413),
        ("post", "/api/v1/jobs", {"json": {"jobId": "a/b"}}, 422),
        ("post", "/api/v1/jobs", {"json": {"unknown": 1}}, 422),
        ("post", "/api/v1/jobs", {"json": {"metadata": {"tags": "x"}}}, 422),
        ("post", "/api/v1/jobs", {"json": {"outputFormat": "xml"}}, 422),
        ("post", "/api/v1/jobs", {"json": {"retentionPolicy": {"ttl": "forever"}}}, 422),
        ("post", "/api/v1/jobs", {"json": {"metadata": {"title": "t" * 600}}}, 413),
        ("patch", "/api/v1/jobs/job-1", {"json": {"progress": 101}}, 422),
        ("patch", "/api/v1/jobs/job-1", {"json": {"progress": "half"}}, 422),
        ("post", "/api/v1/jobs/job-1/complete", {"json": {"status": "Done"}}, 422),
        ("post", "/api/v1/jobs/job-1/output", {"content": b""}, 422),
        ("post", "/api/v1/jobs/job-1/output", {"content": b"\xff\xfe"}, 422),
        ("post", "/api/v1/jobs/job-1/output", {"content": b"x", "params": {"seq": 0}}, 422),
        ("get", "/api/v1/jobs/nope/status", {}, 404),
        ("get", "/api/v1/jobs", {"params": {"cursor": "!!"}}, 400),
        ("get", "/api/v1/jobs", {"params": {"status": "Sleeping"}}, 422),
        ("get", "/api/v1/jobs", {"params": {"limit": 0}}, 422),
        ("get", "/api/v1/jobs/job-1/status", {"params": {"wait": -1}}, 422),
        ("get", "/api/v1/jobs/job-1/stream", {"headers": {"Last-Event-ID": "abc"}}, 422),
        ("get", "/api/v1/jobs/job-1/output", {"params": {"version": 2}}, 404),
    ],
)
def test_bad_input_gets_a_json_error_with_the_right_status(tenant, method, path, kwargs, status):
    _submit(tenant)
    response = getattr(tenant.http, method)(path, **kwargs)
    assert response.status_code == status, response.text
    _error(response)


def test_an_append_just_over_the_chunk_size_is_kept_in_two_chunks(tenant, service):
    _submit(tenant)
    r = tenant.http.post("/api/v1/jobs/job-1/output", content=b"x" * (4 * 1024 * 1024 + 1))
    ack = {"seq": 2, "offset": 0, "size": 4 * 1024 * 1024 + 1, "chunks": 2, "version": 1}
    assert r.json() == ack
