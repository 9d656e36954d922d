"""The live-jobs benchmark: what a Running job costs a shard, and how fast shards come back.

One command: `.venv/bin/python bench/livejobs.py [--jobs N] [--shards S] [--service-jobs M]`
(`make bench-livejobs`). Each figure is printed beside a baseline from the same run:

1. memory: `--jobs` (1,000,000) Running jobs written straight to SQLite (`bench/livejobs_data.py`),
   evenly over `--shards` (4) slots; the shard actors start on a private Ray cluster and load
   them. Each actor process's USS (and RSS) after its load, less an empty shard's (the same
   actors started on an empty store first), over its live jobs: bytes per live job
   (target < 2048).
2. one shard restart: the shard holding the most jobs is killed (`ray.kill`, restart
   allowed); the time until it answers `get` for one of its jobs (target < 30 s), beside
   the time to read its rows from SQLite alone and to turn them into records
   (`Store.load_shard`) in this process.
3. service restart: `aos serve` (its own private Ray) on a store of `--service-jobs`
   (200,000) Running jobs is killed (SIGKILL, its whole session) and started again; the
   time until it is ready and every shard answers a job of its own over HTTP (target
   < 60 s), beside the same start on an empty store.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/livejobs.py` puts bench/ on the path, whose http.py hides the standard library's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from actors.routing import shard_name  # noqa: E402
from actors.shard_actor import create_shards  # noqa: E402
from bench import livejobs_data as data  # noqa: E402
from bench import livejobs_service as service  # noqa: E402
from cluster import ray_connect  # noqa: E402
from storage.records import Job  # noqa: E402
from storage.sql import LOAD_SHARD  # noqa: E402
from storage.sqlite import SqliteStore  # noqa: E402

TARGET_BYTES_PER_JOB = 2048
TARGET_SHARD_RESTART_S = 30.0
STARTED = time.perf_counter()


def section(title: str) -> None:
    print(f"\n== [{time.perf_counter() - STARTED:5.0f} s] {title}", flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


async def filled(path: str, layout: data.Plan) -> dict[int, list[Job]]:
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        return await data.fill(store, layout)
    finally:
        await store.close()


def memory_of(pid: int) -> tuple[int, int]:
    """(USS, RSS) of a process in bytes, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) * 1024
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Rss"]


def pid_of(handle: Any) -> int:
    pid: int = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()))
    return pid


def started(url: str, shards: int) -> tuple[list[Any], float]:
    """The shard actors on `url`, each answering `ping` (its jobs loaded); the seconds that
    took."""
    begin = time.perf_counter()
    handles = create_shards(num_shards=shards, store_url=url)
    ray.get([h.ping.remote() for h in handles])
    return handles, time.perf_counter() - begin


def killed_for_good(handles: list[Any]) -> None:
    for handle in handles:
        ray.kill(handle, no_restart=True)
    for slot in range(len(handles)):  # the names are free once the actors are dead
        while True:
            try:
                ray.get_actor(shard_name(slot))
            except ValueError:
                break
            time.sleep(0.1)


def empty_shard_memory(tmp: str, shards: int) -> tuple[int, int]:
    """The mean (USS, RSS) of shard actors on an empty store: the baseline of every delta."""
    handles, took = started(f"sqlite:///{tmp}/empty.db", shards)
    time.sleep(1.0)
    sizes = [memory_of(pid_of(h)) for h in handles]
    killed_for_good(handles)
    uss, rss = (sum(s[i] for s in sizes) // len(sizes) for i in (0, 1))
    print(f"  {shards} empty shards up in {took:.1f} s; USS {uss / 2**20:.0f} MiB each", flush=True)
    return uss, rss


def loaded_memory(handles: list[Any], empty: tuple[int, int]) -> tuple[list[int], float, float]:
    """Each shard's live jobs, and the USS and RSS growth per live job over all shards."""
    time.sleep(1.0)
    live = [ray.get(h.stats.remote())["jobsLoaded"] for h in handles]
    sizes = [memory_of(pid_of(h)) for h in handles]
    for slot, (jobs, (uss, _)) in enumerate(zip(live, sizes, strict=True)):
        per_job = (uss - empty[0]) / max(jobs, 1)
        print(f"  shard {slot}: {jobs} live jobs, USS {uss / 2**20:.0f} MiB, {per_job:.0f} B/job")
    total = max(sum(live), 1)
    uss_per_job = sum(s[0] - empty[0] for s in sizes) / total
    rss_per_job = sum(s[1] - empty[1] for s in sizes) / total
    return live, uss_per_job, rss_per_job


def read_baseline(path: str, slot: int) -> tuple[float, float]:
    """Seconds to read a slot's Running rows from SQLite alone, and to read them as records
    (`Store.load_shard`), in this process."""
    begin = time.perf_counter()
    with sqlite3.connect(path) as conn:
        rows = conn.execute(LOAD_SHARD, (slot,)).fetchall()
    rows_s = time.perf_counter() - begin
    del rows

    async def records() -> float:
        store = SqliteStore(f"sqlite:///{path}")
        await store.open()
        try:
            begin = time.perf_counter()
            await store.load_shard(slot)
            return time.perf_counter() - begin
        finally:
            await store.close()

    return rows_s, asyncio.run(records())


def until(call: Callable[[], Any], *, timeout_s: float = 300.0) -> float:
    """Seconds until `call()` returns without raising (it is retried every 50 ms)."""
    begin = time.perf_counter()
    while True:
        try:
            call()
            return time.perf_counter() - begin
        except (ray.exceptions.RayError, OSError):
            if time.perf_counter() - begin > timeout_s:
                raise
            time.sleep(0.05)


class Restarting(ray.exceptions.RayError):
    """The old process still answers: the kill has not reached it yet."""


def shard_restart(handle: Any, sample: Job) -> float:
    """Seconds from killing the shard until a new process of it answers `get` for `sample`."""
    old = pid_of(handle)
    ray.kill(handle, no_restart=False)
    begin = time.perf_counter()

    def new_process() -> None:
        if pid_of(handle) == old:
            raise Restarting()

    def answered() -> None:
        got = ray.get(handle.get.remote(sample.namespace, job_id=sample.job_id), timeout=30)
        assert got.job_id == sample.job_id

    process_s = until(new_process)
    until(answered)
    took = time.perf_counter() - begin
    print(f"  a new process answered after {process_s:.1f} s, the job after {took:.1f} s")
    return took


def actors_part(args: argparse.Namespace, tmp: str, report: list[str]) -> None:
    layout = data.plan(args.jobs, args.shards)
    path = f"{tmp}/live.db"
    section(f"writing {args.jobs} Running jobs over {args.shards} slots to SQLite")
    begin = time.perf_counter()
    samples = asyncio.run(filled(path, layout))
    took = time.perf_counter() - begin
    print(f"  {args.jobs / took:.0f} jobs/s ({took:.1f} s)", flush=True)
    section("starting a private Ray cluster; empty shards first (the baseline)")
    ray_connect.connect(None, num_cpus=2, log_to_driver=False)
    try:
        empty = empty_shard_memory(tmp, args.shards)
        section(f"shards loading {args.jobs} live jobs")
        handles, load_s = started(f"sqlite:///{path}", args.shards)
        print(f"  every shard answered ping after {load_s:.1f} s", flush=True)
        live, uss_per_job, rss_per_job = loaded_memory(handles, empty)
        report.append(
            f"memory: {uss_per_job:.0f} B per live job (USS; RSS {rss_per_job:.0f}) with"
            f" {sum(live)} live jobs over {args.shards} shards, empty shard USS"
            f" {empty[0] / 2**20:.0f} MiB (target < {TARGET_BYTES_PER_JOB}:"
            f" {verdict(uss_per_job < TARGET_BYTES_PER_JOB)})"
        )
        slot = max(range(args.shards), key=live.__getitem__)
        section(f"killing shard {slot} ({live[slot]} live jobs); restart allowed")
        restart_s = shard_restart(handles[slot], samples[slot][0])
        rows_s, records_s = read_baseline(path, slot)
        report.append(
            f"shard restart: {restart_s:.1f} s until shard {slot} ({live[slot]} live jobs)"
            f" answered a get (target < {TARGET_SHARD_RESTART_S:.0f} s:"
            f" {verdict(restart_s < TARGET_SHARD_RESTART_S)}); its rows alone {rows_s:.1f} s,"
            f" as records {records_s:.1f} s (ratio {restart_s / records_s:.1f})"
        )
        killed_for_good(handles)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000, help="live jobs for part 1-2")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--service-jobs", type=int, default=200_000, help="for part 3")
    parser.add_argument("--only", choices=("actors", "service"), help="one part alone")
    args = parser.parse_args()
    os.chdir(ROOT)  # Ray puts the driver's working directory on its workers' path
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aos-bench-live-") as tmp:
        if args.only != "service":
            actors_part(args, tmp, report)
        if args.only != "actors":
            section(f"aos serve restarts, {args.service_jobs} live jobs, {args.shards} shards")
            report.append(service.restart_figure(tmp, args.service_jobs, args.shards))
    section("summary (the machine is shared: compare the ratios)")
    for line in report:
        print(line)


if __name__ == "__main__":
    main()
