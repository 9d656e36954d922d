"""`If-None-Match` through real HTTP (RFC 9110 §13.1.2): any listed tag that matches the
status's ETag is a 304, and with `?wait=` the request is held while one does."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.e2e
STATUS = "/api/v1/jobs/job-1/status"


def _job_at_revision_2(tenant) -> str:
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "job-1"}).status_code == 201
    assert tenant.http.patch("/api/v1/jobs/job-1", json={"progress": 10}).status_code == 200
    response = tenant.http.get(STATUS)
    assert response.json()["revision"] == 2
    return response.headers["etag"]


def test_a_matching_tag_after_another_in_the_list_is_304(tenant):
    etag = _job_at_revision_2(tenant)
    for value in (f'"zzz", {etag}', f"W/{etag}", f'"a",,  {etag}', "*"):
        same = tenant.http.get(STATUS, headers={"If-None-Match": value})
        assert same.status_code == 304 and same.content == b"", value
        assert same.headers["etag"] == etag
    job = tenant.http.get("/api/v1/jobs/job-1", headers={"If-None-Match": f'"zzz", {etag}'})
    assert job.status_code == 304
    for value in ('"zzz", "2"', etag.strip('"'), f"{etag} junk"):  # not it, or ignored
        assert tenant.http.get(STATUS, headers={"If-None-Match": value}).status_code == 200


def test_a_long_poll_with_the_tag_second_in_the_list_holds_then_304(tenant):
    """The fault: with `?wait=3` it answered 200 at once."""
    etag = _job_at_revision_2(tenant)
    began = time.monotonic()
    held = tenant.http.get(STATUS, params={"wait": 3}, headers={"If-None-Match": f'"zzz", {etag}'})
    assert held.status_code == 304 and held.headers["etag"] == etag
    assert time.monotonic() - began >= 2.9


def test_a_long_poll_with_the_tag_second_in_the_list_answers_a_change(tenant):
    etag = _job_at_revision_2(tenant)
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(
            tenant.http.get,
            STATUS,
            params={"wait": 30},
            headers={"If-None-Match": f'"zzz", {etag}'},
        )
        time.sleep(1.0)
        assert not poll.done()
        began = time.monotonic()
        assert tenant.http.patch("/api/v1/jobs/job-1", json={"progress": 20}).status_code == 200
        answer = poll.result(timeout=30)
    assert answer.status_code == 200 and answer.json()["progress"] == 20
    assert answer.headers["etag"] != etag and time.monotonic() - began < 10
