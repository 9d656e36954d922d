"""A caller that goes away while its append commits: no other writer fails, nothing is torn.

A shard group-commits: concurrent appends share one batch and wait on one future
(`actors.committer`). When an HTTP client hangs up, Serve cancels its request and, with
it, the shard call waiting on that future; `durable()` shields the future, so the
cancellation ends that one caller's wait, never the batch the other writers wait on.
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
import ray
from ray.exceptions import TaskCancelledError

from actors.routing import RAY_NAMESPACE, shard_for, shard_name
from tests.e2e.sse import until_end
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e

JOB = "shared"
NUM_SHARDS = 2  # the e2e service's (tests/e2e/conftest.py)
WRITERS = 6
WRITER_BYTES = 64_000
MIN_APPENDS_PER_WRITER = 3
HANG_UP_BYTES = 2_000_000
CANCELLED_BYTES = 4_000_000  # just under the largest chunk: a slow commit
ROUNDS = 6
#: When the clients of the first round hang up, in seconds into their request.
FIRST_HANG_UPS_S = tuple(0.05 * i for i in range(1, 13))

Acked = dict[int, tuple[int, str]]  # seq -> (offset, body) of every acknowledged append


@dataclass
class HangUp:
    """One append whose client hung up `after_s` into the request."""

    body: str = field(repr=False)
    after_s: float
    answered: bool  # an answer had begun to arrive when the client hung up
    committed: bool = False

    @property
    def mid_write(self) -> bool:
        """The client left before any answer, yet the write reached the store."""
        return self.committed and not self.answered


def test_a_client_hanging_up_mid_append_fails_no_other_writer_and_tears_nothing(service, tenant):
    _job(tenant)
    acked: Acked = {}
    hang_ups: list[HangUp] = []
    moments = list(FIRST_HANG_UPS_S)
    for n in range(ROUNDS):
        done = _round(service.url, tenant, n, moments, acked)
        hang_ups += done
        if any(h.mid_write for h in done):
            break
        moments = _next_moments(done)
    assert any(h.mid_write for h in hang_ups), f"no hang-up landed mid-write: {hang_ups}"

    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service.url}/readyz").json() == {"status": "ready"}
    status = tenant.http.get(f"/api/v1/jobs/{JOB}/status").json()
    later = tenant.http.post(f"/api/v1/jobs/{JOB}/output", content="later")
    assert later.status_code == 200, later.text
    assert later.json() == {
        "seq": status["outputSeq"] + 1,
        "offset": status["outputSize"],
        "size": 5,
        "chunks": 1,
        "version": 1,
    }
    acked[later.json()["seq"]] = (status["outputSize"], "later")
    _complete(tenant)
    _assert_whole_output(tenant, acked, maybe=[h.body for h in hang_ups])


def test_a_cancelled_append_call_fails_no_other_append_in_its_batch(tenant):
    _job(tenant)
    namespace = tenant.namespace
    shard = ray.get_actor(shard_name(shard_for(namespace, NUM_SHARDS)), namespace=RAY_NAMESPACE)
    acked: Acked = {}
    cancelled: list[str] = []
    for n in range(ROUNDS):
        victim = _cancel_one_of_many(shard, namespace, n, acked)
        if victim is not None:
            cancelled.append(victim)
            # Cancelled, yet committed: the cancellation came while the write was in flight.
            if victim in _raw_output(tenant):
                break
    else:
        pytest.fail(f"no cancellation landed mid-write in {ROUNDS} rounds")
    later = ray.get(shard.append.remote(namespace, job_id=JOB, chunks=[b"later"]), timeout=30)
    acked[later.seq] = (later.offset, "later")
    _complete(tenant)
    _assert_whole_output(tenant, acked, maybe=cancelled)


def _job(tenant) -> None:
    assert tenant.http.post("/api/v1/jobs", json={"jobId": JOB}).status_code == 201


def _complete(tenant) -> None:
    done = tenant.http.post(f"/api/v1/jobs/{JOB}/complete", json={"status": "Succeeded"})
    assert done.status_code == 200, done.text


def _done(ref: ray.ObjectRef) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


def _raw_output(tenant) -> str:
    return tenant.http.get(f"/api/v1/jobs/{JOB}/output/raw").text


def _cancel_one_of_many(shard, namespace: str, n: int, acked: Acked) -> str | None:
    """Append a large chunk and 20 small ones at once, and cancel the large one's call once
    the shard is committing; the body of the cancelled append, None if it was acknowledged."""
    victim_body = f"r{n}v:" + "v" * CANCELLED_BYTES
    victim = shard.append.remote(namespace, job_id=JOB, chunks=[victim_body.encode()])
    others = {
        body: shard.append.remote(namespace, job_id=JOB, chunks=[body.encode()])
        for body in (f"r{n}o{i};" for i in range(20))
    }
    wait_until(
        lambda: ray.get(shard.stats.remote())["pendingWrites"] or _done(victim),
        timeout_s=30,
        what="the appends to reach the shard's committer",
        interval_s=0.0,
    )
    ray.cancel(victim)
    for body, ref in others.items():
        ack = ray.get(ref, timeout=30)  # raises if the cancellation failed this call too
        acked[ack.seq] = (ack.offset, body)
    try:
        ack = ray.get(victim, timeout=30)
    except TaskCancelledError:
        return victim_body
    acked[ack.seq] = (ack.offset, victim_body)
    return None


def _round(url: str, tenant, n: int, moments: list[float], acked: Acked) -> list[HangUp]:
    """Writers append without pause while clients hang up at `moments` into their appends."""
    stop = threading.Event()
    with ThreadPoolExecutor(WRITERS + len(moments)) as pool:
        writers = [
            pool.submit(_write_until, url, tenant.key, f"r{n}w{i}", stop) for i in range(WRITERS)
        ]
        hang_ups = [
            pool.submit(_hang_up, url, tenant.key, f"r{n}h{j}:" + "h" * HANG_UP_BYTES, after_s)
            for j, after_s in enumerate(moments)
        ]
        done = [h.result() for h in hang_ups]
        stop.set()
        for writer in writers:
            acked.update(writer.result())  # raises if any append of a writer was refused
    output = _raw_output(tenant)
    for hang_up in done:
        hang_up.committed = hang_up.body in output
    return done


def _write_until(url: str, key: str, name: str, stop: threading.Event) -> Acked:
    """Append (each one acknowledged, or fail) until told to stop."""
    acked: Acked = {}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        for k in itertools.count():
            if stop.is_set() and k >= MIN_APPENDS_PER_WRITER:
                return acked
            body = f"{name}.{k}:" + "w" * WRITER_BYTES
            r = http.post(f"/api/v1/jobs/{JOB}/output", content=body)
            assert r.status_code == 200, f"{name}.{k}: {r.status_code} {r.text}"
            ack = r.json()
            assert ack["size"] == len(body)
            acked[ack["seq"]] = (ack["offset"], body)
    raise AssertionError("unreachable")


def _hang_up(url: str, key: str, body: str, after_s: float) -> HangUp:
    """Send a whole append, then close the connection `after_s` later without reading."""
    where = urlsplit(url)
    request = (
        f"POST /api/v1/jobs/{JOB}/output HTTP/1.1\r\nHost: {where.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(request)
        time.sleep(after_s)  # the scenario: how far into its request the client hangs up
        answered = bool(select.select([sock], [], [], 0)[0])
    return HangUp(body, after_s, answered)


def _next_moments(done: list[HangUp]) -> list[float]:
    """Hang-up moments for the next round: spread between the latest one that came too early
    (nothing committed) and the earliest that came too late (the answer was on its way)."""
    early = max((h.after_s for h in done if not h.answered), default=0.0)
    late = min((h.after_s for h in done if h.answered), default=2 * max(h.after_s for h in done))
    low, high = sorted((early, late))
    width = max(high - low, 0.2)
    start = max(0.0, (low + high - width) / 2)
    return [start + width * i / (len(done) - 1) for i in range(len(done))]


def _assert_whole_output(tenant, acked: Acked, *, maybe: list[str]) -> None:
    """The (finished) job's output is whole: seqs 1..n without a gap, each chunk starting
    where the one before ended, size the sum of the chunks, every acknowledged append at
    its seq and offset, and nothing else but appends whose callers left, each whole and at
    most once."""
    with tenant.http.stream("GET", f"/api/v1/jobs/{JOB}/stream") as r:
        chunks = [f["data"] for f in until_end(r) if f.get("event") == "output"]
    status = tenant.http.get(f"/api/v1/jobs/{JOB}/status").json()
    sizes = [len(c["data"]) for c in chunks]
    assert [c["seq"] for c in chunks] == list(range(1, status["outputSeq"] + 1))
    assert [c["offset"] for c in chunks] == list(itertools.accumulate(sizes, initial=0))[:-1]
    assert status["outputSize"] == sum(sizes)
    got = {c["seq"]: (c["offset"], c["data"]) for c in chunks}
    lost = [seq for seq, append in sorted(acked.items()) if got.get(seq) != append]
    assert not lost, f"acknowledged appends missing or moved: seqs {lost}"
    others = [c["data"] for c in chunks if c["seq"] not in acked]
    invented = [body[:20] for body in others if body not in maybe]
    assert not invented, f"output nobody appended: {invented}"
    assert len(others) == len(set(others)), "an append whose caller left was written twice"
