"""The spine benchmark: the service's latency, throughput and memory, each beside a baseline.

One command: `.venv/bin/python bench/spine.py [--quick]` (see bench/README.md). Every
figure and its baseline come from the same run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import math
import os
import socket
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from fastapi import FastAPI
from ray import serve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/spine.py` puts bench/, not the repo, on the path

from actors.commands import JobSpec  # noqa: E402
from actors.namespace_settings import NamespaceChanges  # noqa: E402
from actors.shard import Shard, ShardConfig  # noqa: E402
from actors.shard_client import ShardClient  # noqa: E402
from cluster import bootstrap, ray_connect  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from serve_app.deployment import OPTIONS as API_OPTIONS  # noqa: E402
from storage.sqlite import SqliteStore  # noqa: E402

HOST = "127.0.0.1"
ADMIN_KEY = "bench"
NAMESPACE = "bench"
NUM_SHARDS = 2
NOOP_APP = "noop"
WARMUP_REQUESTS = 20
HTTP_IN_FLIGHT = 64
DIRECT_IN_FLIGHT = 1000
MEMORY_CHUNK = 2000
APPEND_BODY = b"x" * 199 + b"\n"
SAFETY_TIMEOUT_S = 120.0
TARGET_SUBMIT_P99_MS = 100.0
TARGET_STATUS_P99_MS = 50.0
TARGET_RATIO = 0.7
TARGET_BYTES_PER_JOB = 2048
STARTED = time.perf_counter()


@dataclass(frozen=True)
class Sizes:
    latency_n: int
    concurrent_n: int
    direct_n: int
    memory_jobs: int
    #: A throughput round stops taking new requests after this long, whatever its count.
    round_cap_s: float


FULL = Sizes(
    latency_n=300, concurrent_n=3000, direct_n=20_000, memory_jobs=100_000, round_cap_s=30.0
)
QUICK = Sizes(latency_n=100, concurrent_n=1000, direct_n=5000, memory_jobs=20_000, round_cap_s=6.0)


# -- the baseline: a Serve ingress that does nothing, deployed like `Api` ---------------------

noop_api = FastAPI(title="noop baseline")


@noop_api.post("/jobs", status_code=201)
async def noop_submit(body: dict[str, Any]) -> dict[str, bool]:
    return {"ok": True}


@noop_api.get("/status")
async def noop_status() -> dict[str, str]:
    return {"jobId": "noop", "status": "Running"}


@serve.deployment(name="Noop", **API_OPTIONS)
@serve.ingress(noop_api)
class Noop:
    """What HTTP, the Serve proxy and FastAPI cost on their own, with `Api`'s options."""


# -- figures ----------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def hist_percentile(hist: collections.Counter[int], q: float) -> int:
    """Nearest-rank percentile of a histogram {value: count}."""
    target, seen = q / 100 * sum(hist.values()), 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= target:
            return value
    return 0


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples_s: list[float]) -> Latency:
        return cls(percentile(samples_s, 50) * 1e3, percentile(samples_s, 99) * 1e3)

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:.1f} ms p99 {self.p99_ms:.1f} ms"


@dataclass(frozen=True)
class Commits:
    """Group-commit batch sizes seen during one run (writes per commit)."""

    hist: collections.Counter[int]

    @property
    def count(self) -> int:
        return sum(self.hist.values())

    def __str__(self) -> str:
        if not self.count:
            return "commits 0"
        mean = sum(k * v for k, v in self.hist.items()) / self.count
        return (
            f"commits {self.count}, writes/commit mean {mean:.1f}"
            f" p50 {hist_percentile(self.hist, 50)} p99 {hist_percentile(self.hist, 99)}"
            f" max {max(self.hist)}"
        )


@dataclass
class Report:
    """The summary: one line per figure, printed at the end."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


# -- the service --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start(data_dir: str) -> tuple[bootstrap.Service, str]:
    """Ray, the service, the noop app, and a namespace key. Returns (service, key)."""
    # log_to_driver=False: the replicas' access logs (one line a request) would flood this output.
    ray_connect.connect(None, log_to_driver=False)  # a private cluster, never another's
    settings = Settings(
        storage_url=f"sqlite:///{data_dir}/aos.db",
        http_host=HOST,
        http_port=free_port(),
        admin_key=ADMIN_KEY,
        num_shards=NUM_SHARDS,
    )
    service = bootstrap.start(settings)
    serve.run(Noop.bind(), name=NOOP_APP, route_prefix=f"/{NOOP_APP}")
    return service, create_key(service.url)


def create_key(url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=admin, timeout=30) as http:
        http.post("/api/v1/namespaces", json={"name": NAMESPACE}).raise_for_status()
        created = http.post(f"/api/v1/namespaces/{NAMESPACE}/keys")
        created.raise_for_status()
        key: str = created.json()["key"]
        return key


def stop(service: bootstrap.Service | None) -> None:
    """Delete the noop app and the service; ending Ray ends Serve with it."""
    try:
        if service is not None:
            serve.delete(NOOP_APP)
            bootstrap.stop(service)
    finally:
        ray.shutdown()


def submit_body(job_id: str) -> dict[str, Any]:
    return {"jobId": job_id, "metadata": {"title": "t", "tags": ["a"]}}


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


# -- 2. sequential latency over HTTP ------------------------------------------------------


def timed(call: Callable[[str], httpx.Response], args: list[str], expect: int) -> list[float]:
    """Run `call(arg)` for each arg in turn; seconds per call. Any other status is an error."""
    samples = []
    for arg in args:
        start = time.perf_counter()
        response = call(arg)
        samples.append(time.perf_counter() - start)
        if response.status_code != expect:
            raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return samples


def sequential(url: str, key: str, n: int, run: str) -> dict[str, Latency]:
    """p50/p99 of submit, status and append, and of the noop POST and GET, one at a time."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        calls: dict[str, tuple[Callable[[str], httpx.Response], int]] = {
            "submit": (lambda j: http.post("/api/v1/jobs", json=submit_body(j)), 201),
            "status": (lambda j: http.get(f"/api/v1/jobs/{j}/status"), 200),
            "append": (lambda j: http.post(f"/api/v1/jobs/{j}/output", content=APPEND_BODY), 200),
            "noop POST": (lambda j: http.post("/noop/jobs", json=submit_body(j)), 201),
            "noop GET": (lambda j: http.get("/noop/status"), 200),
        }
        warm, jobs = ids(f"{run}-warm", WARMUP_REQUESTS), ids(f"{run}-seq", n)
        results = {}
        for name, (call, expect) in calls.items():
            timed(call, warm, expect)
            results[name] = Latency.of(timed(call, jobs, expect))
            print(f"  {name:<10} {results[name]}", flush=True)
        return results


# -- 3 and 4: throughput, `in_flight` at once, bounded in count and time ----------------------


@dataclass(frozen=True)
class Rate:
    done: int
    elapsed_s: float
    failures: int = 0

    @property
    def per_s(self) -> float:
        return self.done / self.elapsed_s

    def __str__(self) -> str:
        return f"{self.per_s:.0f}/s ({self.done} in {self.elapsed_s:.1f} s, failed {self.failures})"


async def saturate(
    call: Callable[[str], Awaitable[bool]], job_ids: list[str], in_flight: int, cap_s: float
) -> Rate:
    """`call(id)` for every id, `in_flight` at once, until all are done or `cap_s` has passed
    (then each worker stops after its current call). `call` returns False on a failure."""
    queue: Iterator[str] = iter(job_ids)  # shared by all workers: each id is sent once
    done = failures = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done, failures
        for job_id in queue:
            failures += not await call(job_id)
            done += 1
            if time.perf_counter() - start > cap_s:
                return

    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(in_flight))), cap_s + SAFETY_TIMEOUT_S
    )
    return Rate(done, time.perf_counter() - start, failures)


# -- 3. concurrent submits over HTTP ------------------------------------------------------


async def http_rate(url: str, key: str, path: str, n: int, cap_s: float, run: str) -> Rate:
    """Submits/s POSTed to `path` over warm keep-alive connections; non-201 answers fail."""
    limits = httpx.Limits(max_connections=HTTP_IN_FLIGHT, max_keepalive_connections=HTTP_IN_FLIGHT)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:

        async def post(job_id: str) -> bool:
            return (await http.post(path, json=submit_body(job_id))).status_code == 201

        await saturate(post, ids(f"{run}-warm", HTTP_IN_FLIGHT), HTTP_IN_FLIGHT, cap_s)
        return await saturate(post, ids(run, n), HTTP_IN_FLIGHT, cap_s)


def concurrent(url: str, key: str, sizes: Sizes, run: str) -> dict[str, Rate]:
    """The better of two rounds for noop and aos, run alternately (noop, aos, noop, aos)."""
    best: dict[str, Rate] = {}
    for round_ in (1, 2):
        for name, path in (("noop", "/noop/jobs"), ("aos", "/api/v1/jobs")):
            run_id = f"{run}-{name}-{round_}"
            rate = asyncio.run(
                http_rate(url, key, path, sizes.concurrent_n, sizes.round_cap_s, run_id)
            )
            print(f"  round {round_} {name:<4} {rate}", flush=True)
            if name not in best or rate.per_s > best[name].per_s:
                best[name] = rate
    return best


# -- 4. the direct Python client ------------------------------------------------------------


async def batch_sizes(shards: ShardClient) -> collections.Counter[int]:
    """The shards' group-commit histograms, summed."""
    total: collections.Counter[int] = collections.Counter()
    for slot in range(shards.num_shards):
        stats = await shards.shard(slot).stats()
        total.update({int(k): v for k, v in stats["batchSizes"].items()})
    return total


async def direct_rate(shards: ShardClient, job_ids: list[str], cap_s: float) -> Rate:
    async def submit(job_id: str) -> bool:
        await shards.submit(NAMESPACE, JobSpec(), job_id=job_id, actor="bench")
        return True

    return await saturate(submit, job_ids, DIRECT_IN_FLIGHT, cap_s)


def direct(sizes: Sizes, run: str) -> tuple[Rate, Commits]:
    """Submits/s through the typed shard client, straight to the owning shard actor."""

    async def measure() -> tuple[Rate, Commits]:
        shards = ShardClient(num_shards=NUM_SHARDS)
        await direct_rate(shards, ids(f"{run}-direct-warm", DIRECT_IN_FLIGHT), sizes.round_cap_s)
        before = await batch_sizes(shards)
        rate = await direct_rate(shards, ids(f"{run}-direct", sizes.direct_n), sizes.round_cap_s)
        return rate, Commits(await batch_sizes(shards) - before)

    return asyncio.run(measure())


# -- 5. memory per live job -----------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    bytes_per_job: float
    jobs_loaded: int
    top_sites: list[str]


async def fill(store: SqliteStore, n: int) -> None:
    """`n` Running jobs in namespace "mem", written by a real shard."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    await shard.start()
    await shard.namespaces.create("mem", NamespaceChanges(), actor="bench")
    shards = ShardClient.in_process([shard])
    spec = JobSpec(title="t", tags=("a",))
    for first in range(0, n, MEMORY_CHUNK):
        chunk = range(first, min(n, first + MEMORY_CHUNK))
        await asyncio.gather(
            *(shards.submit("mem", spec, job_id=f"job-{i}", actor="bench") for i in chunk)
        )
    await shard.stop()


async def reload_cost(store: SqliteStore) -> Memory:
    """Bytes retained by a fresh shard's `start()`, which loads every Running job."""
    shard = Shard(store, ShardConfig(slot=0, num_shards=1))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        base = tracemalloc.get_traced_memory()[0]
        await shard.start()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - base
        top = tracemalloc.take_snapshot().compare_to(before, "lineno")[:3]
    finally:
        tracemalloc.stop()
    loaded = len(shard._jobs)  # the shard is still referenced here: its jobs are live
    await shard.stop()
    sites = [f"{s.size_diff / loaded:.0f} B/job {s.traceback[0]}" for s in top]
    return Memory(retained / loaded, loaded, sites)


async def memory(n: int) -> Memory:
    with tempfile.TemporaryDirectory(prefix="aos-bench-mem-") as tmp:
        store = SqliteStore(f"sqlite:///{tmp}/mem.db")
        await store.open()
        try:
            await fill(store, n)
            return await reload_cost(store)
        finally:
            await store.close()


# -- the run ------------------------------------------------------------------------------


def section(title: str) -> None:
    print(f"\n== [{time.perf_counter() - STARTED:4.0f} s] {title}", flush=True)


@dataclass(frozen=True)
class ServiceFigures:
    latency: dict[str, Latency]
    concurrent: dict[str, Rate]
    direct: Rate
    commits: Commits


def service_figures(sizes: Sizes) -> ServiceFigures:
    """Sections 2-4: everything that needs Ray, with the service up only meanwhile."""
    run = uuid.uuid4().hex[:8]
    service = None
    with tempfile.TemporaryDirectory(prefix="aos-bench-") as tmp:
        try:
            section("starting Ray, the service and the noop baseline app")
            service, key = start(tmp)
            section(f"sequential latency over HTTP, n={sizes.latency_n} each, keep-alive")
            latency = sequential(service.url, key, sizes.latency_n, run)
            section(
                f"concurrent submits over HTTP: {HTTP_IN_FLIGHT} in flight, up to"
                f" {sizes.concurrent_n} requests or {sizes.round_cap_s:.0f} s a round;"
                " noop and aos alternate twice, the better round of each counts"
            )
            rates = concurrent(service.url, key, sizes, run)
            section(
                f"direct client: {DIRECT_IN_FLIGHT} in flight, up to {sizes.direct_n} submits"
                f" or {sizes.round_cap_s:.0f} s"
            )
            rate, commits = direct(sizes, run)
            print(f"  {rate}\n  {commits}", flush=True)
        finally:
            section("tearing down")
            stop(service)
    return ServiceFigures(latency, rates, rate, commits)


def report_service(report: Report, figures: ServiceFigures) -> None:
    lat = figures.latency
    submit, status = lat["submit"], lat["status"]
    ok_submit = submit.p99_ms < TARGET_SUBMIT_P99_MS
    ok_status = status.p99_ms < TARGET_STATUS_P99_MS
    report.add(f"submit {submit} (target p99 < 100 ms: {verdict(ok_submit)})")
    report.add(f"status {status} (target p99 < 50 ms: {verdict(ok_status)})")
    report.add(f"append {lat['append']} (200-byte text chunk)")
    report.add(f"noop baseline: POST {lat['noop POST']}, GET {lat['noop GET']}")
    aos, noop = figures.concurrent["aos"], figures.concurrent["noop"]
    ratio = aos.per_s / noop.per_s
    report.add(
        f"concurrent submit: aos {aos.per_s:.0f}/s noop {noop.per_s:.0f}/s ratio {ratio:.2f}"
        f" (target >= 0.7: {verdict(ratio >= TARGET_RATIO)}; better of 2 alternating rounds,"
        f" {HTTP_IN_FLIGHT} in flight, failed aos {aos.failures} noop {noop.failures})"
    )
    report.add(f"direct client: {figures.direct.per_s:.0f} submits/s, {figures.commits}")


def report_memory(report: Report, mem: Memory, n: int) -> None:
    ok = mem.bytes_per_job < TARGET_BYTES_PER_JOB
    report.add(
        f"memory: {mem.bytes_per_job:.0f} bytes per live job with {n} jobs"
        f" (target < 2048: {verdict(ok)}; len(shard._jobs) = {mem.jobs_loaded})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, under ~90 s")
    sizes = QUICK if parser.parse_args().quick else FULL
    os.chdir(ROOT)  # Ray puts the driver's working directory on its workers' path
    report = Report()
    report_service(report, service_figures(sizes))
    section(f"memory per live job: {sizes.memory_jobs} jobs, in-process, no Ray")
    mem = asyncio.run(memory(sizes.memory_jobs))
    print(
        f"  loaded {mem.jobs_loaded} jobs; {mem.bytes_per_job:.0f} B/job retained; largest sites:"
    )
    for site in mem.top_sites:
        print(f"    {site}")
    report_memory(report, mem, sizes.memory_jobs)
    section(
        f"summary ({'quick' if sizes is QUICK else 'full'} run, "
        f"{time.perf_counter() - STARTED:.0f} s)"
    )
    for line in report.lines:
        print(line)


if __name__ == "__main__":
    main()
