"""Big output end to end: appends over the chunk size, bounded reads, deletes in steps."""

from __future__ import annotations

import json

import httpx
import pytest

from actors.limits import MAX_CHUNK_BYTES

pytestmark = pytest.mark.e2e
IDENTITY = {"Accept-Encoding": "identity"}


def _text(size: int) -> bytes:
    line = "step %08d: résumé ✓ ok\n"  # multi-byte characters: cuts must fall between them
    return "".join(line % i for i in range(size // 24 + 1)).encode()[:size]


def _utf8_prefix(data: bytes) -> bytes:
    return data.decode("utf-8", errors="ignore").encode()


def test_an_append_over_the_chunk_size_is_stored_in_chunks_and_read_back_whole(tenant):
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "big"}).status_code == 201
    body = _utf8_prefix(_text(2 * MAX_CHUNK_BYTES + 12345))
    ack = tenant.http.post("/api/v1/jobs/big/output?seq=1", content=body, timeout=60)
    assert ack.status_code == 200, ack.text
    assert ack.json() == {"seq": 3, "offset": 0, "size": len(body), "chunks": 3, "version": 1}
    retried = tenant.http.post("/api/v1/jobs/big/output?seq=1", content=body, timeout=60)
    assert retried.json() == ack.json()  # acknowledged whole, not written twice
    tail = tenant.http.post("/api/v1/jobs/big/output?seq=4", content=b"end\n")
    assert tail.json()["seq"] == 4 and tail.json()["offset"] == len(body)
    raw = tenant.http.get("/api/v1/jobs/big/output/raw", headers=IDENTITY, timeout=60)
    assert raw.content == body + b"end\n"
    tenant.http.post("/api/v1/jobs/big/complete", json={"status": "Succeeded"})
    with tenant.http.stream("GET", "/api/v1/jobs/big/stream", timeout=60) as stream:
        outputs = _output_events(stream)
    assert [event["seq"] for event in outputs] == [1, 2, 3, 4]
    assert all(event["size"] <= MAX_CHUNK_BYTES for event in outputs)
    assert "".join(event["data"] for event in outputs).encode() == body + b"end\n"


def test_a_deleted_jobs_id_is_reused_with_none_of_its_old_output(tenant):
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "again"}).status_code == 201
    old = _utf8_prefix(_text(3 * MAX_CHUNK_BYTES))
    assert tenant.http.post("/api/v1/jobs/again/output", content=old, timeout=60).is_success
    tenant.http.post("/api/v1/jobs/again/complete", json={"status": "Succeeded"})
    assert tenant.http.delete("/api/v1/jobs/again").status_code == 204
    assert tenant.http.get("/api/v1/jobs/again/output/raw").status_code == 404
    # Created again at once: the submit waits for the old output's purge, then starts empty.
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "again"}).status_code == 201
    assert tenant.http.post("/api/v1/jobs/again/output", content=b"new\n").json()["seq"] == 1
    raw = tenant.http.get("/api/v1/jobs/again/output/raw", headers=IDENTITY)
    assert raw.content == b"new\n"


def _output_events(stream: httpx.Response) -> list[dict]:
    events, kind = [], ""
    for line in stream.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind == "output":
            events.append(json.loads(line[6:]))
        elif line.startswith("data: ") and kind == "end":
            return events
    return events
