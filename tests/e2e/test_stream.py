"""SSE: live output, resume by Last-Event-ID (also from the store), heartbeats, many streams."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e.sse import event, frames, read_until, until_end

pytestmark = pytest.mark.e2e
#: How soon a change must reach an open stream (the e2e service's heartbeat is 1 s).
LIVE_S = 10.0


def _job(t, job_id="job-1", **body):
    assert t.http.post("/api/v1/jobs", json={"jobId": job_id, **body}).status_code == 201


def _append(t, text, job_id="job-1"):
    assert t.http.post(f"/api/v1/jobs/{job_id}/output", content=text).status_code == 200


def test_a_live_stream_carries_output_progress_status_and_end(tenant):
    _job(tenant)
    with tenant.http.stream("GET", "/api/v1/jobs/job-1/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        stream = frames(r)
        # The first status event follows the replay of all output so far: caught up.
        got = read_until(stream, event("status"), timeout_s=LIVE_S, what="the first status")
        assert not [f for f in got if f.get("event") == "output"]  # no output yet, none replayed
        # Each change is made only now, so it can reach this open stream only live.
        _append(tenant, "a")
        got += read_until(stream, event("output", seq=1), timeout_s=LIVE_S, what="output 1")
        tenant.http.patch("/api/v1/jobs/job-1", json={"progress": 50})
        got += read_until(stream, event("progress", progress=50), timeout_s=LIVE_S, what="50%")
        _append(tenant, "b")
        got += read_until(stream, event("output", seq=2), timeout_s=LIVE_S, what="output 2")
        tenant.http.post("/api/v1/jobs/job-1/complete", json={"status": "Succeeded"})
        got += read_until(stream, event("end"), timeout_s=LIVE_S, what="the end event")
    assert got[0] == {"retry": "3000"}
    outputs = [f for f in got if f.get("event") == "output"]
    incarnation = outputs[0]["id"].split("-")[1]  # ids are <seq>-<incarnation>
    assert [(f["id"], f["data"]["data"]) for f in outputs] == [
        (f"1-{incarnation}", "a"),
        (f"2-{incarnation}", "b"),
    ]
    assert 50 in [f["data"]["progress"] for f in got if f.get("event") == "progress"]
    statuses = [f["data"]["status"] for f in got if f.get("event") == "status"]
    assert statuses[0] == "Running" and statuses[-1] == "Succeeded"
    assert got[-1]["event"] == "end" and got[-1]["data"]["status"] == "Succeeded"


def test_a_terminal_job_replays_its_output_then_ends(tenant):
    _job(tenant)
    for text in ("x", "y", "z"):
        _append(tenant, text)
    tenant.http.post("/api/v1/jobs/job-1/complete", json={"status": "Failed", "error": "oom"})
    with tenant.http.stream("GET", "/api/v1/jobs/job-1/stream") as r:
        got = until_end(r)
    assert [f["data"]["data"] for f in got if f.get("event") == "output"] == ["x", "y", "z"]
    assert got[-1]["data"] == {
        "status": "Failed",
        "outputVersion": 1,
        "outputSeq": 3,
        "error": "oom",
    }


def test_last_event_id_resumes_exactly_after_that_event_from_the_store(tenant):
    _job(tenant)
    big = "q" * 100_000  # 12 x 100 kB is past the shard's in-memory tail for one job
    for i in range(12):
        _append(tenant, f"{i}:{big}")
    with tenant.http.stream(
        "GET", "/api/v1/jobs/job-1/stream", headers={"Last-Event-ID": "2"}
    ) as r:
        seen = []
        for frame in frames(r):
            if frame.get("event") == "output":
                seen.append((int(frame["id"].split("-")[0]), frame["data"]["data"].split(":")[0]))
            if len(seen) == 10:
                break
    assert seen == [(i + 1, str(i)) for i in range(2, 12)]
    with tenant.http.stream("GET", "/api/v1/jobs/job-1/stream", params={"after": 11}) as r:
        first = next(f for f in frames(r) if f.get("event") == "output")
    assert first["id"].startswith("12-")


def test_an_idle_stream_gets_heartbeat_comments(tenant):
    _job(tenant)
    with tenant.http.stream("GET", "/api/v1/jobs/job-1/stream") as r:
        started = time.monotonic()
        comment = next(f for f in frames(r) if "comment" in f)
    assert comment == {"comment": "keepalive"}
    assert time.monotonic() - started < 10


def test_many_open_streams_do_not_block_other_requests(tenant, service):
    for i in range(12):
        _job(tenant, f"s{i}")
    opened = threading.Barrier(13)
    stop = threading.Event()

    def hold(job_id):
        with (
            httpx.Client(base_url=service.url, timeout=60) as c,
            c.stream(
                "GET",
                f"/api/v1/jobs/{job_id}/stream",
                headers={"Authorization": f"Bearer {tenant.key}"},
            ) as r,
        ):
            next(frames(r))
            opened.wait()
            stop.wait(30)

    threads = [threading.Thread(target=hold, args=(f"s{i}",)) for i in range(12)]
    for t in threads:
        t.start()
    opened.wait(timeout=60)
    started = time.monotonic()
    r = tenant.http.get("/api/v1/jobs/s0/status", timeout=10)
    elapsed = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join()
    assert r.status_code == 200 and elapsed < 5


def test_a_client_that_disconnects_never_affects_the_job(tenant):
    _job(tenant)
    with tenant.http.stream("GET", "/api/v1/jobs/job-1/stream") as r:
        next(frames(r))
    _append(tenant, "after the client left")
    done = tenant.http.post("/api/v1/jobs/job-1/complete", json={"status": "Succeeded"})
    assert done.status_code == 200
    assert tenant.http.get("/api/v1/jobs/job-1/output").json()["output"] == "after the client left"


def test_stream_of_an_unknown_job_is_404(tenant):
    r = tenant.http.get("/api/v1/jobs/nope/stream")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
