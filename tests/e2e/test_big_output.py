"""Big output end to end: appends over the chunk size, bounded reads, deletes in steps."""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import ray

from actors.limits import MAX_APPEND_BYTES, MAX_CHUNK_BYTES
from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from tests.e2e.waiting import wait_until

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
    # Created again at once: a submit waits briefly for the old output's purge, then 503
    # with Retry-After until it is done (a client asks again); the new job starts empty.
    again = _retry(lambda: tenant.http.post("/api/v1/jobs", json={"jobId": "again"}).status_code)
    assert again == 201
    assert tenant.http.post("/api/v1/jobs/again/output", content=b"new\n").json()["seq"] == 1
    raw = tenant.http.get("/api/v1/jobs/again/output/raw", headers=IDENTITY)
    assert raw.content == b"new\n"


def test_readers_that_stall_hold_a_few_pages_in_the_service_not_the_output(tenant):
    """Each reader's buffer is bounded whatever its speed: four readers (two raw downloads,
    two SSE replays) of a 192 MiB output read 1 MiB each, then stop reading. Before pages
    were bounded in bytes, one such reader took the API replica up 263 MB and HAProxy up
    280 MB (the output read ahead into memory); now each holds about a page (4 MiB)."""
    assert tenant.http.post("/api/v1/jobs", json={"jobId": "stalled"}).status_code == 201
    body = _utf8_prefix(_text(MAX_APPEND_BYTES))
    for _ in range(3):
        ack = tenant.http.post("/api/v1/jobs/stalled/output", content=body, timeout=120)
        assert ack.status_code == 200, ack.text
    tenant.http.post("/api/v1/jobs/stalled/complete", json={"status": "Succeeded"})
    before = {pid: _private_bytes(pid) for pid in _ingress_processes()}
    assert set(_ingress_processes().values()) == {"Api", "haproxy"}
    with ExitStack() as readers:
        for path in ["output/raw", "output/raw", "stream", "stream"]:
            url = f"/api/v1/jobs/stalled/{path}"
            stream = readers.enter_context(tenant.http.stream("GET", url, headers=IDENTITY))
            assert stream.status_code == 200
            got = 0
            for piece in stream.iter_raw(64 * 1024):
                got += len(piece)
                if got >= 1024 * 1024:
                    break  # and read nothing more: the service may not read ahead for it
        time.sleep(3)
        grown_mib = {
            f"{kind} {pid}": (_private_bytes(pid) - before[pid]) / 2**20
            for pid, kind in _ingress_processes().items()
            if pid in before
        }
    # A page (4 MiB) or so per reader, all four on one process at worst, not the 192 MiB
    # each could read ahead: measured +0.4 MiB; with pages of 512 MiB, +124 MiB.
    assert max(grown_mib.values()) < 48, grown_mib


def test_uploads_that_declare_64_mib_and_send_nothing_starve_no_one(service, tenant, other_tenant):
    """A tester's attack: connections that declare the largest append and send nothing held
    every replica's append budget, so every tenant's appends were 503. A body now counts as
    it arrives, and a namespace holds at most half a replica's budget."""
    host, port = urlsplit(service.url).hostname, urlsplit(service.url).port
    for who in (tenant, other_tenant):
        assert who.http.post("/api/v1/jobs", json={"jobId": "small"}).status_code == 201
    head = (
        f"POST /api/v1/jobs/small/output HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {tenant.key}\r\nContent-Length: {MAX_APPEND_BYTES}\r\n\r\n"
    ).encode()
    with ExitStack() as held:
        for _ in range(8):
            held.enter_context(socket.create_connection((host, port))).sendall(head)
        time.sleep(1)  # the requests reach the replicas and wait for their bodies
        for who in (other_tenant, tenant):
            for _ in range(4):  # whichever replica HAProxy picks
                ack = who.http.post("/api/v1/jobs/small/output", content=b"ok\n")
                assert ack.status_code == 200, ack.text


def _ingress_processes() -> dict[int, str]:
    """The processes a download passes through (pid: kind): API replicas and HAProxy."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ServeReplica:aos:Api" in argv[0]:
            found[int(entry)] = "Api"
        elif os.path.basename(argv[0]) == b"haproxy":
            found[int(entry)] = "haproxy"
    return found


def _private_bytes(pid: int) -> int:
    """Resident private memory of `pid` (RssAnon), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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


@pytest.mark.parametrize("delay_s", [0.2, 0.8])
def test_a_shard_killed_during_a_big_append_leaves_it_whole_or_absent(tenant, delay_s):
    """The append is one commit of many chunks: after a kill -9 of its shard the output
    holds all of it or none of it, never some chunks; acknowledged means kept; and the
    producer's retry with the same seq completes it exactly once."""
    job = f"crash-{int(delay_s * 10)}"
    assert tenant.http.post("/api/v1/jobs", json={"jobId": job}).status_code == 201
    assert tenant.http.post(f"/api/v1/jobs/{job}/output?seq=1", content=b"head\n").is_success
    body = _utf8_prefix(_text(8 * MAX_CHUNK_BYTES))
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(_post, tenant, f"/api/v1/jobs/{job}/output?seq=2", body)
        time.sleep(delay_s)
        shard = ray.get_actor(shard_name(shard_for(tenant.namespace, 2)), namespace=RAY_NAMESPACE)
        ray.kill(shard, no_restart=False)
        answer = sent.result()
    size = wait_until(lambda: _output_size(tenant, job), timeout_s=60, what="the shard back")
    assert size in (5, 5 + len(body)), size  # whole or absent, never a part
    if answer == 200:
        assert size == 5 + len(body)  # acknowledged: kept
    retried = _retry(lambda: _post(tenant, f"/api/v1/jobs/{job}/output?seq=2", body))
    assert retried == 200
    raw = tenant.http.get(f"/api/v1/jobs/{job}/output/raw", headers=IDENTITY, timeout=60)
    assert raw.content == b"head\n" + body


def _post(tenant, path: str, body: bytes) -> int | None:
    try:
        return tenant.http.post(path, content=body, timeout=60).status_code
    except httpx.HTTPError:
        return None  # the connection was cut: the outcome is unknown to the producer


def _output_size(tenant, job: str) -> int | None:
    response = tenant.http.get(f"/api/v1/jobs/{job}")
    return response.json()["outputSize"] if response.status_code == 200 else None


def _retry(call, timeout_s: float = 60) -> int | None:
    deadline = time.monotonic() + timeout_s
    while (status := call()) in (None, 503) and time.monotonic() < deadline:
        time.sleep(0.5)
    return status
