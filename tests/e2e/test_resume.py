"""Resuming SSE through real HTTP: a resume point never makes a client miss output it has
not seen, whatever history it comes from (`actors.resume`)."""

from __future__ import annotations

import pytest

from tests.e2e.sse import event, frames, read_until

pytestmark = pytest.mark.e2e
LIVE_S = 10.0
STREAM = "/api/v1/jobs/job-1/stream"


def _job_at_seq_2(tenant) -> None:
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "job-1"}).status_code == 201
    for text in ("1", "2"):
        assert tenant.http.post("/api/v1/jobs/job-1/output", content=text).status_code == 200


def _append(tenant, *texts: str) -> None:
    for text in texts:
        assert tenant.http.post("/api/v1/jobs/job-1/output", content=text).status_code == 200


def _error(response) -> dict:
    return response.json()["error"]


def test_last_event_id_past_the_output_is_409_not_a_silent_skip(tenant):
    """The fault's exact input: Last-Event-ID 5 on a running job at seq 2; before, chunks 3
    to 6 came and the stream delivered only 6."""
    _job_at_seq_2(tenant)
    refused = tenant.http.get(STREAM, headers={"Last-Event-ID": "5"})
    assert refused.status_code == 409 and _error(refused)["code"] == "conflict"
    assert "past output version 1" in _error(refused)["message"]
    assert tenant.http.get(STREAM, params={"after": 5}).status_code == 409
    assert tenant.http.get("/api/v1/jobs/job-1/output/raw", params={"after": 5}).status_code == 409
    _append(tenant, "3", "4", "5", "6")
    assert tenant.http.get(STREAM, headers={"Last-Event-ID": "7"}).status_code == 409


def test_a_stream_resumed_at_its_last_id_gets_3_to_6_as_they_arrive(tenant):
    _job_at_seq_2(tenant)
    with tenant.http.stream("GET", STREAM) as r:
        got = read_until(frames(r), event("output", seq=2), timeout_s=LIVE_S, what="output 2")
    last_id = got[-1]["id"]
    assert last_id.startswith("2-")
    with tenant.http.stream("GET", STREAM, headers={"Last-Event-ID": last_id}) as r:
        stream = frames(r)
        read_until(stream, event("status"), timeout_s=LIVE_S, what="the first status")
        _append(tenant, "3", "4", "5", "6")
        got = read_until(stream, event("output", seq=6), timeout_s=LIVE_S, what="output 6")
    outputs = [f for f in got if f.get("event") == "output"]
    assert [f["data"]["data"] for f in outputs] == ["3", "4", "5", "6"]
    assert [f["id"].split("-")[0] for f in outputs] == ["3", "4", "5", "6"]


def test_an_id_from_a_deleted_job_is_409_on_the_job_submitted_again(tenant):
    _job_at_seq_2(tenant)
    assert tenant.http.post("/api/v1/jobs/job-1/cancel").status_code == 200
    with tenant.http.stream("GET", STREAM) as r:
        got = read_until(frames(r), event("end"), timeout_s=LIVE_S, what="the end")
    old_id = next(f for f in got if f.get("event") == "output")["id"]  # seq 1 of the old job
    assert tenant.http.delete("/api/v1/jobs/job-1").status_code == 204
    _job_at_seq_2(tenant)  # the same id again: seq 1 exists, but is other output
    refused = tenant.http.get(STREAM, headers={"Last-Event-ID": old_id})
    assert refused.status_code == 409 and "earlier job" in _error(refused)["message"]
    with tenant.http.stream("GET", STREAM) as r:  # from the start: the new job's output
        got = read_until(frames(r), event("output", seq=2), timeout_s=LIVE_S, what="output 2")
    new_ids = [f["id"] for f in got if f.get("event") == "output"]
    assert new_ids[0] != old_id and new_ids[0].startswith("1-")


@pytest.mark.parametrize("value", ["x", "2-", "1.5", "2-ABC", "-3"])
def test_a_malformed_id_is_422(tenant, value):
    _job_at_seq_2(tenant)
    refused = tenant.http.get(STREAM, headers={"Last-Event-ID": value})
    assert refused.status_code == 422 and _error(refused)["code"] == "invalid"
