"""Webhooks end to end at rate: batch-submitted jobs with `job.created` webhooks, received.

Part of `bench/webhooks.py`. The whole service (`cluster.bootstrap.start`) joins the Serve
the benchmark runs; jobs go in over HTTP as `POST /api/v1/jobs:batch` (1,000 a request,
all requests at once), each with `webhookUrl` (the receiver's `/record`) and
`webhookEvents: ["job.created"]`. The figure is deliveries received per second, from the
first batch request sent to the last delivery received, with the lag from each event's
`timestamp` to its receipt; then every delivery is checked: signed with the namespace's
secret (both headers and body, by the `standardwebhooks` reference verifier), one per
job, none lost, none for a job not submitted, and a repeat only as a retry (the same
`webhook-id`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import standardwebhooks
from pydantic import SecretStr

from cluster import bootstrap
from cluster.settings import Settings

ADMIN_KEY = "bench"
BATCH_PATH = "/api/v1/jobs:batch"
BATCH_JOBS = 1000
WARMUP_JOBS = 200
POLL_S = 0.2
#: After the last expected delivery, how long to wait for duplicates.
SETTLE_S = 1.0
HOST = "127.0.0.1"


@dataclass(frozen=True)
class EndToEnd:
    jobs: int
    received: int
    elapsed_s: float  # first batch request sent -> last delivery received
    submit_s: float  # first batch request sent -> last batch answered
    receipt_span_s: float  # first delivery received -> last
    lag_p50_ms: float
    lag_p99_ms: float
    problems: tuple[str, ...]
    #: Deliveries received again with the same webhook-id (retries), and why the first failed.
    repeats: int = 0
    repeat_errors: tuple[str, ...] = ()

    @property
    def per_s(self) -> float:
        return self.jobs / self.elapsed_s

    def __str__(self) -> str:
        checked = "; ".join(self.problems) or (
            "every job's delivery received once, each signed with the namespace's secret"
        )
        flag = " [FLAGGED]" if self.problems else ""
        if self.repeats:
            why = "; ".join(self.repeat_errors)
            checked += f"; {self.repeats} received again with the same webhook-id (retries: {why})"
        return (
            f"end to end: {self.per_s:.0f} deliveries/s ({self.jobs} jobs in"
            f" {-(-self.jobs // BATCH_JOBS)} batch requests of up to {BATCH_JOBS}: {self.received}"
            f" deliveries in {self.elapsed_s:.2f} s from the first request, submits answered"
            f" in {self.submit_s:.2f} s, deliveries spread over {self.receipt_span_s:.2f} s);"
            f" lag p50 {self.lag_p50_ms:.0f} ms p99 {self.lag_p99_ms:.0f} ms; {checked}{flag}"
        )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_service(serve_port: int, data_dir: str) -> bootstrap.Service:
    """The whole service, joining the Serve already running on `serve_port` (a running
    Serve keeps its port, and the service refuses another), the receiver's network
    allowed past the SSRF guard."""
    settings = Settings(
        storage_url=f"sqlite:///{data_dir}/aos.db",
        http_host=HOST,
        http_port=serve_port,
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
        fallback_proxy_port=free_port(),
        admin_key=SecretStr(ADMIN_KEY),
        num_shards=2,
        webhook_allowed_networks="127.0.0.0/8",
    )
    return bootstrap.start(settings)


def tenant(base_url: str) -> tuple[str, str]:
    """A fresh namespace and a key of it: (key, the namespace's webhook secret)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, headers=admin, timeout=30) as http:
        created = http.post("/api/v1/namespaces", json={"name": name})
        created.raise_for_status()
        key = http.post(f"/api/v1/namespaces/{name}/keys")
        key.raise_for_status()
        return key.json()["key"], created.json()["webhookSecret"]


def bodies(receiver_url: str, job_ids: list[str]) -> list[bytes]:
    """The batch request bodies, `BATCH_JOBS` jobs each, serialised before the clock starts."""
    hook = {"webhookUrl": receiver_url + "/record", "webhookEvents": ["job.created"]}
    jobs = [{"jobId": job_id, **hook} for job_id in job_ids]
    return [
        json.dumps({"jobs": jobs[i : i + BATCH_JOBS]}).encode()
        for i in range(0, len(jobs), BATCH_JOBS)
    ]


async def submit(base_url: str, key: str, requests: list[bytes]) -> None:
    """Every batch request at once; each of their jobs must be 201."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        answers = await asyncio.gather(*(http.post(BATCH_PATH, content=r) for r in requests))
    for request, answer in zip(requests, answers, strict=True):
        answer.raise_for_status()
        statuses = collections.Counter(item["status"] for item in answer.json()["items"])
        if statuses != {201: len(json.loads(request)["jobs"])}:
            raise RuntimeError(f"a batch's item statuses: {dict(statuses)}")


async def collect(receiver_url: str, job_ids: set[str], timeout_s: float) -> list[list[Any]]:
    """The receiver's records once every job's delivery is in (or after `timeout_s`), then
    `SETTLE_S` more for anything sent twice. While they arrive only the count is polled:
    the records are fetched when it is high enough, so checking costs the receiver and
    this process little CPU during the measurement."""
    records: list[list[Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=30) as http:
        while not job_ids <= seen and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            if int((await http.get(receiver_url + "/count")).text) < len(job_ids) - len(seen):
                continue
            got = (await http.get(receiver_url + "/records")).json()  # the count starts over
            records += got
            seen.update(json.loads(r[3])["data"]["jobId"] for r in got)
        await asyncio.sleep(SETTLE_S)
        records += (await http.get(receiver_url + "/records")).json()
    return records


def check(records: list[list[Any]], job_ids: set[str], secret: str) -> list[str]:
    """What is wrong with the deliveries received, if anything (see the module's doc)."""
    problems = []
    verifier = standardwebhooks.Webhook(secret)
    unsigned = 0
    ids_by_job: dict[str, set[str]] = collections.defaultdict(set)
    for msg_id, stamp, signature, body, _ in records:
        headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}
        try:
            verifier.verify(body, headers)
        except standardwebhooks.webhooks.WebhookVerificationError:
            unsigned += 1
        event = json.loads(body)
        if event["type"] != "job.created":
            problems.append(f"an event of type {event['type']!r}")
        ids_by_job[event["data"]["jobId"]].add(msg_id)
    if unsigned:
        problems.append(f"{unsigned} deliveries not signed with the namespace's secret")
    if lost := job_ids - set(ids_by_job):
        problems.append(f"{len(lost)} jobs' deliveries lost")
    if invented := set(ids_by_job) - job_ids:
        problems.append(f"{len(invented)} deliveries for jobs never submitted")
    if twice := [job for job, ids in ids_by_job.items() if len(ids) > 1]:
        problems.append(f"{len(twice)} jobs got two messages (different webhook-ids)")
    return problems


def percentile(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else 0.0


async def run_once(base_url: str, key: str, secret: str, receiver_url: str, jobs: int) -> EndToEnd:
    run = uuid.uuid4().hex[:8]
    job_ids = [f"{run}-{i}" for i in range(jobs)]
    requests = bodies(receiver_url, job_ids)
    started = time.time()
    await submit(base_url, key, requests)
    submitted = time.time()
    records = await collect(receiver_url, set(job_ids), timeout_s=60 + jobs / 100)
    lags, received = [], [r[4] for r in records]
    for r in records:
        stamp = json.loads(r[3])["timestamp"]
        lags.append(r[4] - _epoch(stamp))
    problems = check(records, set(job_ids), secret)
    repeated = _repeated(records)
    last = max(received, default=started)
    return EndToEnd(
        jobs=jobs,
        received=len(records),
        elapsed_s=last - started,
        submit_s=submitted - started,
        receipt_span_s=last - min(received, default=last),
        lag_p50_ms=percentile(lags, 50) * 1000,
        lag_p99_ms=percentile(lags, 99) * 1000,
        problems=tuple(problems),
        repeats=sum(repeated.values()),
        repeat_errors=await _failed_attempts(base_url, key, list(repeated)[:3]),
    )


def _repeated(records: list[list[Any]]) -> dict[str, int]:
    """Job id -> how many more times than once its delivery arrived."""
    jobs = collections.Counter(json.loads(r[3])["data"]["jobId"] for r in records)
    return {job: n - 1 for job, n in jobs.items() if n > 1}


async def _failed_attempts(base_url: str, key: str, job_ids: list[str]) -> tuple[str, ...]:
    """The recorded errors of these jobs' failed attempts (`GET /api/v1/jobs/{id}/webhooks`)."""
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        for job_id in job_ids:
            for delivery in (await http.get(f"/api/v1/jobs/{job_id}/webhooks")).json()["items"]:
                errors += [
                    f"{a['statusCode']} {a['error']}"
                    for a in delivery["attempts"]
                    if not (a["statusCode"] and 200 <= a["statusCode"] < 300)
                ]
    return tuple(errors)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def end_to_end(receiver_url: str, serve_port: int, jobs: int) -> EndToEnd:
    """Start the service, warm it up with a small batch, measure `jobs`, stop it."""
    with tempfile.TemporaryDirectory(prefix="aos-bench-hooks-") as data_dir:
        service = start_service(serve_port, data_dir)
        try:
            key, secret = tenant(service.url)
            asyncio.run(run_once(service.url, key, secret, receiver_url, WARMUP_JOBS))
            return asyncio.run(run_once(service.url, key, secret, receiver_url, jobs))
        finally:
            bootstrap.stop(service)
