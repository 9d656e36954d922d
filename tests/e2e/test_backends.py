"""The whole service on each database: `aos serve --storage <url>` for every backend with a
server (SQLite runs under every other end-to-end test), through HTTP, then kill -9 of the
whole service and a restart on the same store, with nothing acknowledged lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import BACKENDS, WITH_A_SERVER
from tests.conftest import free_port
from tests.e2e import served
from tests.e2e.sse import event, frames, read_until

pytestmark = pytest.mark.e2e

LIVE_S = 15.0
NS = {"namespace": "default"}


@pytest.fixture(params=WITH_A_SERVER)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend = BACKENDS[request.param]
    backend.need()
    with backend.fresh(tmp_path) as url:
        yield url


def client(port: int) -> httpx.Client:
    headers = {"Authorization": f"Bearer {served.ADMIN_KEY}"}
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)


def submit(http: httpx.Client, job_id: str, **body: Any) -> httpx.Response:
    return http.post("/api/v1/jobs", params=NS, json={"jobId": job_id, **body})


def append(http: httpx.Client, job_id: str, seq: int, text: str) -> None:
    answer = http.post(f"/api/v1/jobs/{job_id}/output", params={**NS, "seq": seq}, content=text)
    assert answer.status_code == 200, answer.text
    assert answer.json()["seq"] == seq


def listed(http: httpx.Client, **query: Any) -> list[str]:
    page = http.get("/api/v1/jobs", params={**NS, **query})
    assert page.status_code == 200, page.text
    return [job["jobId"] for job in page.json()["items"]]


def resumed_after_1(http: httpx.Client) -> list[str]:
    """Job a's output after seq 1, from an SSE stream resumed there."""
    stream = "/api/v1/jobs/a/stream"
    with http.stream("GET", stream, params={**NS, "after": 1}) as response:
        assert response.status_code == 200
        got = read_until(frames(response), event("output", seq=3), timeout_s=LIVE_S, what="3")
    return [f["data"]["data"] for f in got if f.get("event") == "output"]


def test_the_service_on_each_backend_keeps_every_acknowledged_write_through_kill_9(
    storage_url: str,
) -> None:
    port = free_port()
    proc = served.start(storage_url, port)
    try:
        with client(port) as http:
            assert submit(http, "a", metadata={"tags": ["x"]}).status_code == 201
            assert submit(http, "a", metadata={"tags": ["x"]}).status_code == 200  # idempotent
            assert submit(http, "a", metadata={"tags": ["y"]}).status_code == 409
            for job_id in ("b", "c"):
                assert submit(http, job_id).status_code == 201
            for seq, text in enumerate(["one,", "two,", "three,"], start=1):
                append(http, "a", seq, text)
            append(http, "a", 3, "three,")  # a retry of an acknowledged append: kept once
            assert resumed_after_1(http) == ["two,", "three,"]
            done = http.post("/api/v1/jobs/b/complete", params=NS, json={"status": "Succeeded"})
            assert done.status_code == 200, done.text
            assert http.post("/api/v1/jobs/c/cancel", params=NS).status_code == 200
            assert http.delete("/api/v1/jobs/c", params=NS).status_code == 204
            assert listed(http) == ["b", "a"]
            assert listed(http, status="Succeeded") == ["b"]
            assert listed(http, tag="x") == ["a"]
            first = http.get("/api/v1/jobs", params={**NS, "limit": 1}).json()
            assert [job["jobId"] for job in first["items"]] == ["b"]
            assert listed(http, limit=1, cursor=first["nextCursor"]) == ["a"]
    finally:
        served.kill_all(proc)

    proc = served.start(storage_url, port)
    try:
        with client(port) as http:
            raw = http.get("/api/v1/jobs/a/output/raw", params=NS)
            assert raw.status_code == 200 and raw.text == "one,two,three,"
            assert resumed_after_1(http) == ["two,", "three,"]  # from the store, after restart
            assert http.get("/api/v1/jobs/b", params=NS).json()["status"] == "Succeeded"
            assert http.get("/api/v1/jobs/c", params=NS).status_code == 404
            assert listed(http, status="Running") == ["a"]
            assert listed(http, tag="x") == ["a"]
            append(http, "a", 4, "four,")
            done = http.post("/api/v1/jobs/a/complete", params=NS, json={"status": "Succeeded"})
            assert done.status_code == 200, done.text
            assert http.get("/api/v1/jobs/a/output/raw", params=NS).text == "one,two,three,four,"
    finally:
        served.kill_all(proc)
