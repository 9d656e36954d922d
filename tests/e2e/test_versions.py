"""Output versions and json outputs through real HTTP, Ray and SQLite: a re-run's new version,
each version read back every way, the SHA-256 of each, json documents, and a shard restart."""

from __future__ import annotations

import hashlib

import pytest
import ray

from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from tests.e2e.conftest import Tenant
from tests.e2e.sse import frames, until_end
from tests.e2e.test_faults import _eventually_ok

pytestmark = pytest.mark.e2e

JOBS = "/api/v1/jobs"
#: Bytes as sent: httpx would offer zstd and decode it, hiding Content-Length.
PLAIN = {"Accept-Encoding": "identity"}
FIRST = [b"first run, line %d\n" % i for i in range(50)]
SECOND = [b"second run \xe2\x9c\x93 %d\n" % i for i in range(30)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def append(tenant: Tenant, job_id: str, data: bytes, query: str = "") -> dict:
    response = tenant.http.post(f"{JOBS}/{job_id}/output{query}", content=data)
    assert response.status_code == 200, response.text
    return response.json()


def complete(tenant: Tenant, job_id: str, status: str = "Succeeded"):
    return tenant.http.post(f"{JOBS}/{job_id}/complete", json={"status": status})


def rerun(tenant: Tenant, job_id: str) -> dict:
    response = tenant.http.post(f"{JOBS}/{job_id}/versions")
    assert response.status_code == 201, response.text
    return response.json()


def versions(tenant: Tenant, job_id: str) -> list[dict]:
    return tenant.http.get(f"{JOBS}/{job_id}").json()["versions"]


def test_a_rerun_writes_a_new_version_and_each_is_read_back_every_way(tenant: Tenant) -> None:
    assert tenant.http.post(JOBS, json={"jobId": "rerun", "retentionPolicy": {"ttl": 3600}})
    for part in FIRST:
        append(tenant, "rerun", part)
    assert complete(tenant, "rerun", "Failed").status_code == 200
    finished = tenant.http.get(f"{JOBS}/rerun").json()
    assert finished["expiresAt"] is not None

    started = rerun(tenant, "rerun")
    assert (started["version"], started["size"], started["status"]) == (2, 0, "Running")
    record = tenant.http.get(f"{JOBS}/rerun").json()
    assert record["status"] == "Running" and record["expiresAt"] is None
    assert record["completedAt"] is None and record["outputVersion"] == 2
    acks = [append(tenant, "rerun", part) for part in SECOND]
    assert [ack["seq"] for ack in acks] == list(range(1, 31))
    assert {ack["version"] for ack in acks} == {2}

    one, two = b"".join(FIRST), b"".join(SECOND)
    for query, data in (("?version=1", one), ("?version=2", two), ("", two)):
        raw = tenant.http.get(f"{JOBS}/rerun/output/raw{query}", headers=PLAIN)
        assert raw.content == data and raw.headers["content-length"] == str(len(data))
        document = tenant.http.get(f"{JOBS}/rerun/output{query}").json()
        assert document["output"] == data.decode()
    ranged = tenant.http.get(
        f"{JOBS}/rerun/output/raw?version=1", headers=PLAIN | {"Range": "bytes=-10"}
    )
    assert ranged.status_code == 206 and ranged.content == one[-10:]
    etag = ranged.headers["etag"]
    assert etag.startswith('"v1.50.')
    again = tenant.http.get(
        f"{JOBS}/rerun/output/raw?version=1",
        headers=PLAIN | {"Range": "bytes=0-4", "If-Range": etag},
    )
    assert again.status_code == 206 and again.content == one[:5]
    with tenant.http.stream("GET", f"{JOBS}/rerun/stream?version=1") as stream:
        replayed = until_end(stream)
    outputs = [f["data"]["data"].encode() for f in replayed if f.get("event") == "output"]
    assert b"".join(outputs) == one and replayed[-1]["data"]["outputVersion"] == 2

    assert complete(tenant, "rerun").status_code == 200
    [v1, v2] = versions(tenant, "rerun")
    assert (v1["version"], v1["size"], v1["seq"], v1["sha256"]) == (1, len(one), 50, sha(one))
    assert (v2["version"], v2["size"], v2["seq"], v2["sha256"]) == (2, len(two), 30, sha(two))
    assert v1["completedAt"] == finished["completedAt"] and v2["completedAt"] is not None


def test_appends_to_a_completed_or_missing_version_and_bad_versions_are_refused(
    tenant: Tenant,
) -> None:
    tenant.http.post(JOBS, json={"jobId": "strict"})
    append(tenant, "strict", b"v1")
    rerun(tenant, "strict")
    late = tenant.http.post(f"{JOBS}/strict/output?version=1", content=b"late")
    assert late.status_code == 409 and late.json()["error"]["code"] == "conflict"
    early = tenant.http.post(f"{JOBS}/strict/output?version=3", content=b"early")
    assert early.status_code == 404 and early.json()["error"]["code"] == "not_found"
    for path in ("/output", "/output/raw", "/stream"):
        missing = tenant.http.get(f"{JOBS}/strict{path}?version=3")
        assert missing.status_code == 404, (path, missing.text)
        for bad in ("0", "-2", "two", "99999999999999999999"):
            refused = tenant.http.get(f"{JOBS}/strict{path}?version={bad}")
            assert refused.status_code == 422, (path, bad, refused.text)
    unknown = tenant.http.post(f"{JOBS}/nobody/versions")
    assert unknown.status_code == 404
    retried = tenant.http.post(f"{JOBS}/strict/versions")  # version 2 is still empty
    assert retried.status_code == 200 and retried.json()["version"] == 2
    assert [v["version"] for v in versions(tenant, "strict")] == [1, 2]


def test_a_live_stream_of_the_latest_version_ends_when_a_rerun_starts(tenant: Tenant) -> None:
    tenant.http.post(JOBS, json={"jobId": "live"})
    append(tenant, "live", b"a")
    with tenant.http.stream("GET", f"{JOBS}/live/stream") as stream:
        seen = []
        for frame in frames(stream):
            seen.append(frame)
            if frame.get("event") == "progress":
                append(tenant, "live", b"b")
                rerun(tenant, "live")
                append(tenant, "live", b"not in this stream")
            if frame.get("event") == "end":
                break
    outputs = [f["data"]["data"] for f in seen if f.get("event") == "output"]
    assert outputs == ["a", "b"] and seen[-1]["event"] == "end"


def test_a_json_job_completes_only_as_one_document_and_output_is_the_value(
    tenant: Tenant,
) -> None:
    tenant.http.post(JOBS, json={"jobId": "doc", "outputFormat": "json"})
    for part in (b'{"rows": [', b"1, 2, 3", b'], "ok": tr'):
        append(tenant, "doc", part)
    refused = complete(tenant, "doc")
    assert refused.status_code == 422, refused.text
    assert "not one JSON document" in refused.json()["error"]["message"]
    assert tenant.http.get(f"{JOBS}/doc/status").json()["status"] == "Running"
    partial = tenant.http.get(f"{JOBS}/doc/output").json()
    assert partial["output"] is None and partial["text"] == '{"rows": [1, 2, 3], "ok": tr'
    append(tenant, "doc", b"ue}")
    done = complete(tenant, "doc")
    assert done.status_code == 200 and done.json()["status"] == "Succeeded"
    for coding in ("identity", "gzip", "zstd"):
        answer = tenant.http.get(f"{JOBS}/doc/output", headers={"Accept-Encoding": coding})
        assert answer.json()["output"] == {"rows": [1, 2, 3], "ok": True}
        assert answer.json()["format"] == "json"
    assert versions(tenant, "doc")[0]["sha256"] == sha(b'{"rows": [1, 2, 3], "ok": true}')


def test_versions_and_their_sha256_survive_a_shard_restart(tenant: Tenant) -> None:
    tenant.http.post(JOBS, json={"jobId": "kept"})
    for part in FIRST:
        append(tenant, "kept", part)
    rerun(tenant, "kept")
    for part in SECOND[:10]:
        append(tenant, "kept", part)
    shard = ray.get_actor(shard_name(shard_for(tenant.namespace, 2)), namespace=RAY_NAMESPACE)
    ray.kill(shard, no_restart=False)  # the running SHA-256 of version 2 dies with it

    more = _eventually_ok(lambda: tenant.http.post(f"{JOBS}/kept/output", content=SECOND[10]))
    assert more.json() | {"offset": 0} == {
        "seq": 11,
        "offset": 0,
        "size": len(SECOND[10]),
        "chunks": 1,
        "version": 2,
    }
    for part in SECOND[11:]:
        append(tenant, "kept", part)
    assert complete(tenant, "kept").status_code == 200
    one, two = b"".join(FIRST), b"".join(SECOND)
    [v1, v2] = versions(tenant, "kept")
    assert (v1["sha256"], v2["sha256"]) == (sha(one), sha(two))
    old = tenant.http.get(f"{JOBS}/kept/output/raw?version=1", headers=PLAIN)
    assert old.content == one
