"""The stores benchmark: each backend's group commits per second, appends per second with 32
concurrent writers, and mean rows per commit, beside SQLite's in the same run.

One command: `.venv/bin/python bench/stores.py [--quick] [--backends sqlite,postgres,...]`
(`make bench-stores`). Each backend runs on a fresh location of the server `make services`
started (tests/backends: the same locations the contract suite uses); a backend whose
server is not running is reported as such and left out.

- group commits/s: one writer, one commit at a time, each a job's new revision and a 64-byte
  chunk (what one append commits when nothing else is waiting): the store's round trip.
- appends/s: 32 writers append 64-byte chunks to jobs of their own through one
  `GroupCommitter`, as a shard does: each commit takes every append that waited for it.
- rows/commit: the records (jobs and chunks) one commit of the 32 writers wrote, on average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python bench/stores.py` puts bench/ on the path, whose http.py hides the standard library's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from actors.committer import GroupCommitter  # noqa: E402
from storage.base import Store  # noqa: E402
from storage.records import Batch, Chunk, Job  # noqa: E402
from storage.registry import open_store  # noqa: E402
from tests.backends import BACKENDS  # noqa: E402

WRITERS = 32
CHUNK = b"x" * 64


@dataclass
class Figures:
    commits_per_s: float
    commit_p50_ms: float
    appends_per_s: float
    rows_per_commit: float


class Counting:
    """A store whose commits are counted, with their rows."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.commits = 0
        self.rows = 0

    async def commit(self, batch: Batch) -> None:
        await self.store.commit(batch)
        self.commits += 1
        self.rows += len(batch)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


async def group_commits(store: Store, epoch: int, count: int) -> tuple[float, float]:
    job = Job("bench", "serial", 0, time.time(), time.time())
    await store.commit(Batch(slot=0, epoch=epoch, jobs=[job]))
    took: list[float] = []
    started = time.perf_counter()
    for seq in range(1, count + 1):
        job = job.evolve(output_seq=seq, output_size=seq * len(CHUNK))
        chunk = Chunk("bench", "serial", seq, (seq - 1) * len(CHUNK), CHUNK)
        before = time.perf_counter()
        await store.commit(Batch(slot=0, epoch=epoch, jobs=[job], chunks=[chunk]))
        took.append(time.perf_counter() - before)
    return count / (time.perf_counter() - started), statistics.median(took) * 1000


async def appends(store: Store, epoch: int, seconds: float) -> tuple[float, float]:
    counting = Counting(store)
    committer = GroupCommitter(
        counting,  # type: ignore[arg-type]
        slot=0,
        epoch=epoch,
        on_committed=lambda batch: None,
        on_failed=lambda batch, exc: None,
    )
    committer.start()
    done = 0
    stop_at = time.perf_counter() + seconds

    async def writer(n: int) -> None:
        nonlocal done
        job = Job("bench", f"w{n}", 0, time.time(), time.time())
        await committer.add(jobs=[job])
        seq = 0
        while time.perf_counter() < stop_at:
            seq += 1
            job = job.evolve(output_seq=seq, output_size=seq * len(CHUNK))
            chunk = Chunk("bench", job.job_id, seq, (seq - 1) * len(CHUNK), CHUNK)
            await committer.add(jobs=[job], chunks=[chunk])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    elapsed = time.perf_counter() - started
    await committer.stop()
    return done / elapsed, counting.rows / max(1, counting.commits)


async def measure(url: str, commits: int, seconds: float) -> Figures:
    store = open_store(url)
    await store.open()
    try:
        epoch = await store.acquire_shard(0, "bench")
        per_s, p50 = await group_commits(store, epoch, commits)
        appends_per_s, rows = await appends(store, epoch, seconds)
        return Figures(per_s, p50, appends_per_s, rows)
    finally:
        await store.close()


def reachable(name: str, url: str) -> bool:
    backend = BACKENDS[name]
    if not backend.has_server:
        return True
    try:
        socket.create_connection(backend.server(url), timeout=1).close()
    except OSError:
        return False
    return True


def main() -> None:
    # The local DynamoDB server (moto) takes any credentials; botocore wants some.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 commits, 3 s of appends")
    parser.add_argument(
        "--backends",
        default=",".join(name for name, b in BACKENDS.items() if b.persistent),
        help="comma-separated (default: every persistent backend)",
    )
    args = parser.parse_args()
    commits, seconds = (200, 3.0) if args.quick else (1000, 10.0)
    names = ["sqlite", *(n for n in args.backends.split(",") if n != "sqlite")]
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="aos-bench-stores-") as tmp:
        for name in names:
            backend = BACKENDS[name]
            with backend.session(Path(tmp)) as url:
                if not reachable(name, url):
                    print(f"{name:>9}: its server is not running (make services): left out")
                    continue
                results[name] = asyncio.run(measure(url, commits, seconds))
            print_row(name, results[name], results["sqlite"])


def print_row(name: str, got: Figures, base: Figures) -> None:
    print(
        f"{name:>9}: {got.commits_per_s:7,.0f} group commits/s"
        f" (p50 {got.commit_p50_ms:5.1f} ms, x{got.commits_per_s / base.commits_per_s:.2f} SQLite)"
        f"  {got.appends_per_s:8,.0f} appends/s with {WRITERS} writers"
        f" (x{got.appends_per_s / base.appends_per_s:.2f} SQLite)"
        f"  {got.rows_per_commit:6.1f} rows/commit",
        flush=True,
    )


if __name__ == "__main__":
    main()
