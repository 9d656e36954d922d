"""`aos serve` restarted on a store of Running jobs, for `bench/livejobs.py`: the time from
launching the process until it is ready and every shard answers a job of its own over HTTP.

Each `aos serve` runs its own private Ray cluster in its own session; it is stopped with
SIGKILL to every process of that session (a crash), never with `ray stop`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import livejobs_data as data
from storage.records import Job
from storage.sqlite import SqliteStore
from tests.e2e.served import kill_all

TARGET_SERVICE_RESTART_S = 60.0
ADMIN_KEY = "bench-livejobs-admin"
READY_LINE = "Async Output Service ready at"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch(path: str, shards: int, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "AOS_STORAGE_URL": f"sqlite:///{path}",
        "AOS_HTTP_PORT": str(port),
        "AOS_ADMIN_KEY": ADMIN_KEY,
        "AOS_NUM_SHARDS": str(shards),
        "AOS_HAPROXY_STATS_PORT": str(free_port()),
        "AOS_HAPROXY_METRICS_PORT": str(free_port()),
        "AOS_FALLBACK_PROXY_PORT": str(free_port()),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def start_time(path: str, shards: int, samples: list[Job], *, timeout_s: float = 600) -> float:
    """Seconds from launching `aos serve` on `path` until it said it is ready and every job of
    `samples` was read over HTTP; the service is then killed."""
    port = free_port()
    begin = time.perf_counter()
    proc = launch(path, shards, port)
    try:
        assert proc.stdout is not None
        said: list[str] = []
        for line in proc.stdout:
            said.append(line)
            if READY_LINE in line:
                break
            if time.perf_counter() - begin > timeout_s:
                raise RuntimeError("aos serve not ready:\n" + "".join(said[-30:]))
        else:
            raise RuntimeError("aos serve ended:\n" + "".join(said[-30:]))
        ready_s = time.perf_counter() - begin
        read_all(f"http://127.0.0.1:{port}", samples)
        took = time.perf_counter() - begin
        print(f"  ready after {ready_s:.1f} s, every shard's job read after {took:.1f} s")
        return took
    finally:
        kill_all(proc)


def read_all(url: str, samples: list[Job]) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for job in samples:
            params = {"namespace": job.namespace}
            reply = http.get(f"/api/v1/jobs/{job.job_id}", params=params)
            if reply.status_code != 200:
                raise RuntimeError(f"GET job {job.job_id}: {reply.status_code} {reply.text}")


async def _filled(path: str, jobs: int, shards: int) -> list[Job]:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        samples = await data.fill(store, data.plan(jobs, shards, prefix="svc"))
    finally:
        await store.close()
    return [found[0] for found in samples.values()]


def restart_figure(tmp: str, jobs: int, shards: int) -> str:
    """Start on an empty store (the baseline), then on `jobs` live jobs, killed, started again:
    the second start on the filled store is the restart."""
    empty_path, path = f"{tmp}/svc-empty.db", f"{tmp}/svc.db"
    print("  empty store:", flush=True)
    empty_s = start_time(empty_path, shards, [])
    samples = asyncio.run(_filled(path, jobs, shards))
    print(f"  {jobs} live jobs, first start:", flush=True)
    start_time(path, shards, samples)
    print("  killed (SIGKILL); started again:", flush=True)
    restart_s = start_time(path, shards, samples)
    ok = restart_s < TARGET_SERVICE_RESTART_S
    return (
        f"service restart: {restart_s:.1f} s until ready and every shard answered, with"
        f" {jobs} live jobs over {shards} shards (target < {TARGET_SERVICE_RESTART_S:.0f} s:"
        f" {'met' if ok else 'MISSED'}); an empty store {empty_s:.1f} s"
        f" (ratio {restart_s / empty_s:.2f})"
    )
