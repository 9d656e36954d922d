"""A history checker: concurrent clients drive a running service over HTTP while a fault is
injected, record every acknowledged operation (and every one whose outcome is unknown), then
check that the service holds exactly what was acknowledged.

Each client is a producer: it submits a job, appends chunks with `?seq=`, then completes it,
cancels it or leaves it Running. Every operation is retried with the same identity (the
jobId, the seq and its bytes, the same completion) after a 503, a timeout or a lost
connection, as a real producer does, until it is answered or the run's settle time is over
(then its outcome is unknown). A chunk's bytes name its job and seq, so the output read
back tells which appends it holds, in which order, and whether any twice.

The contract checked, answer by answer: a 2xx, or a 503 with `Retry-After`; never a 5xx
other than that, no answer within `REQUEST_TIMEOUT_S` (a hang), or an unexpected 4xx. And
afterwards, through the API: every acknowledged submit exists, every acknowledged append is
present once at its seq with its bytes, the output seqs run 1..n without a gap, no job or
chunk is one nobody sent, and each status agrees with the acknowledged completes and cancels.

`check_history(base_url, admin_key, duration_s=..., fault=...)` returns a `Report`; any
test that can run a service and break it (a database restart, a killed shard, a lost node)
can call it.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from actors.routing import shard_for
from tests.history_check import JobHistory, Report, verify

#: An answer slower than this is a hang (the store's own timeouts are ~10 s).
REQUEST_TIMEOUT_S = 30.0
#: A client waits `Retry-After`, capped by this (the checker wants many attempts per fault).
MAX_RETRY_WAIT_S = 0.5
#: After the run ends, how long clients keep retrying what they started.
SETTLE_S = 60.0

__all__ = ["REQUEST_TIMEOUT_S", "JobHistory", "Report", "check_history", "run_history"]


def check_history(
    base_url: str,
    admin_key: str,
    *,
    duration_s: float,
    fault: Callable[[], object] | None = None,
    fault_at_s: float | None = None,
    clients: int = 8,
    num_shards: int = 2,
) -> Report:
    """Run `clients` producers against `base_url` for `duration_s`, call `fault` (blocking,
    in a thread of its own) `fault_at_s` after the start (default: a quarter of the run),
    wait for it to return and the clients to settle, then read everything back.

    The clients use namespaces made for the run, two on each of the `num_shards` slots."""
    return asyncio.run(
        run_history(
            base_url,
            admin_key,
            duration_s=duration_s,
            fault=fault,
            fault_at_s=fault_at_s,
            clients=clients,
            num_shards=num_shards,
        )
    )


async def run_history(
    base_url: str,
    admin_key: str,
    *,
    duration_s: float,
    fault: Callable[[], object] | None = None,
    fault_at_s: float | None = None,
    clients: int = 8,
    num_shards: int = 2,
) -> Report:
    """`check_history`, for a caller already in an event loop."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as http:
        run = _Run(http, time.monotonic(), duration_s)
        run.report.started = run.started
        namespaces = await _namespaces(run, num_shards)
        producers = [
            asyncio.create_task(_producer(run, f"c{i}", namespaces)) for i in range(clients)
        ]
        if fault is not None:
            await asyncio.sleep(duration_s / 4 if fault_at_s is None else fault_at_s)
            started = run.now()
            await asyncio.to_thread(fault)
            run.report.fault_s = (started, run.now())
        await asyncio.gather(*producers)
        await verify(run.http, run.jobs, namespaces, run.report)
    return run.report


@dataclass
class _Run:
    http: httpx.AsyncClient
    started: float
    duration_s: float
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    jobs: list[JobHistory] = field(default_factory=list)
    report: Report = field(default_factory=Report)

    def now(self) -> float:
        return time.monotonic() - self.started

    @property
    def running(self) -> bool:
        return self.now() < self.duration_s

    async def answered(
        self, method: str, url: str, **kwargs: Any
    ) -> tuple[httpx.Response | None, bool]:
        """Send until answered with anything but a retryable failure: (the answer or None
        once the settle time is over, whether an earlier attempt may have taken effect)."""
        uncertain = False
        deadline = self.duration_s + SETTLE_S
        while self.now() < deadline:
            sent = self.now()
            try:
                response = await self.http.request(method, url, **kwargs)
            except httpx.TimeoutException:
                self._answer(0, f"{method} {url}: no answer within {REQUEST_TIMEOUT_S} s")
                uncertain = True
                continue
            except httpx.TransportError as exc:
                self._answer(-1, None)  # the connection went: the request may have arrived
                self.report.transport_errors.append(f"{method} {url}: {exc!r}")
                uncertain = True
                await asyncio.sleep(MAX_RETRY_WAIT_S)
                continue
            status = response.status_code
            self.report.slowest_s = max(self.report.slowest_s, self.now() - sent)
            if status >= 300:
                self.report.codes[f"{status} {_code(response)}"] += 1
            if status < 500:
                self._answer(status, None)
                return response, uncertain
            retry_after = response.headers.get("Retry-After")
            bad = None
            if status != 503 or not retry_after:
                bad = f"{method} {url}: {status} {response.text[:200]}"
            self._answer(status, bad)
            uncertain = True  # even a 503: a commit can land and its answer still fail
            await asyncio.sleep(min(float(retry_after or 1), MAX_RETRY_WAIT_S))
        return None, True

    def _answer(self, status: int, bad: str | None) -> None:
        self.report.answers[status] += 1
        self.report.timeline.append((self.now(), status))
        if bad is not None:
            self.report.bad.append(f"{self.now():.1f}s {bad}")


async def _namespaces(run: _Run, num_shards: int, per_slot: int = 2) -> list[str]:
    """Namespaces made for this run, `per_slot` on each slot (rendezvous hashing)."""
    chosen: list[str] = []
    counts: Counter[int] = Counter()
    index = 0
    while len(chosen) < per_slot * num_shards:
        name = f"h{run.run_id}-{index}"
        index += 1
        slot = shard_for(name, num_shards)
        if counts[slot] < per_slot:
            counts[slot] += 1
            chosen.append(name)
    for name in chosen:
        response, _ = await run.answered("POST", "/api/v1/namespaces", json={"name": name})
        if response is None or response.status_code not in (201, 409):
            raise AssertionError(f"could not create namespace {name}: {response}")
    return chosen


async def _producer(run: _Run, name: str, namespaces: list[str]) -> None:
    rng = random.Random(f"{run.run_id}-{name}")
    number = 0
    while run.running:
        number += 1
        job = JobHistory(rng.choice(namespaces), f"{name}-{number}")
        run.jobs.append(job)
        await _one_job(run, job, rng)


async def _one_job(run: _Run, job: JobHistory, rng: random.Random) -> None:
    params = {"namespace": job.namespace}
    response, _ = await run.answered(
        "POST", "/api/v1/jobs", params=params, json={"jobId": job.job_id}
    )
    job.submitted = _outcome(run, response, (200, 201))
    if job.submitted != "acked":
        return
    for seq in range(1, rng.randint(2, 8) + 1):
        data = f"{job.job_id}:{seq}:{'x' * rng.randint(0, 300)};".encode()
        response, _ = await run.answered(
            "POST",
            f"/api/v1/jobs/{job.job_id}/output",
            params={**params, "seq": str(seq)},
            content=data,
        )
        outcome = _outcome(run, response, (200,))
        if outcome == "acked" and response is not None and response.json().get("seq") != seq:
            run.report.bad.append(f"append {job.job_id} seq {seq} answered {response.text}")
        job.chunks.append((seq, data, outcome))
        if outcome != "acked" or not run.running:
            return
    await _finish(run, job, rng.choice(["complete", "cancel", "running"]))


async def _finish(run: _Run, job: JobHistory, how: str) -> None:
    if how == "running":
        return
    params = {"namespace": job.namespace}
    body = {"status": "Succeeded"} if how == "complete" else None
    path = f"/api/v1/jobs/{job.job_id}/{how}"
    response, uncertain = await run.answered("POST", path, params=params, json=body)
    if response is not None and response.status_code == 409 and uncertain and how == "cancel":
        # a cancel that took effect before its answer was lost: a retry finds it finished
        job.finish = (how, "unknown")
        return
    job.finish = (how, _outcome(run, response, (200,)))


def _outcome(run: _Run, response: httpx.Response | None, ok: tuple[int, ...]) -> str:
    """acked (a 2xx), unknown (no answer in time), or refused (an unexpected 4xx: a bug)."""
    if response is None:
        return "unknown"
    if response.status_code in ok:
        return "acked"
    run.report.bad.append(f"{response.request.url}: {response.status_code} {response.text[:200]}")
    return "refused"


def _code(response: httpx.Response) -> str:
    """The error's `code`, or what the body was when it was not the API's JSON error."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"not JSON: {response.text[:60]!r}"
