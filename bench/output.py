"""The output benchmark: big outputs written and read back through the whole service.

One command: `.venv/bin/python bench/output.py [--quick] [--sizes 1,10] [--noise]`
(make bench-output). `--noise`: random bytes in a binary job instead of log text (nothing
to compress: the heaviest case for the store, and for the delete's purge).

It starts a private Ray cluster and the service (HAProxy ingress, SQLite in a temp dir,
2 shards), and for each size (GiB; default 1 and 10, quick 0.25):
1. **append**: one producer POSTs the output as 64 MiB appends of log text;
2. **raw**: `GET /output/raw` (`Accept-Encoding: identity`), read as it streams;
3. **SSE**: `GET /stream`, every `output` event parsed until `end`;
4. **baseline**: a plain loopback download of a file of the same size (aiohttp's
   `FileResponse`, sendfile) in the same run: each MB/s above is printed as a ratio to it;
5. **memory**: each of the service's processes' RSS is sampled all along; its peak growth
   over its RSS before the phase is printed (the target: no process grows over 200 MB);
6. **delete**: the output's job is deleted while a second producer appends 1 KiB to a job
   on the other shard: how long the DELETE took, the longest gap between that producer's
   acks (other jobs' writes must not stall for more than a few hundred ms), how long the
   purge ran (until the store has no purge left), and the files' size before, after (the
   database and its WAL apart), and for the output (compression at rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
# `python bench/output.py` puts bench/ first on the path, where bench/http.py shadows the
# standard library's `http` (aiohttp imports it): take bench/ off, put the repository on.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import ray  # noqa: E402
from aiohttp import web  # noqa: E402

from actors.limits import MAX_APPEND_BYTES  # noqa: E402
from actors.routing import shard_for  # noqa: E402
from bench.http import free_port, marked_processes, service_settings  # noqa: E402
from cluster import bootstrap, ray_connect  # noqa: E402

T = TypeVar("T")
GiB, MiB = 1024**3, 1024**2
HOST = "127.0.0.1"
ADMIN_KEY = "bench-output-admin-key-0123456789abcdef"
NUM_SHARDS = 2
BIG = "big"
#: The other writer's namespace: one that another shard owns.
SMALL = next(f"small{i}" for i in range(99) if shard_for(f"small{i}", 2) != shard_for(BIG, 2))
MEMORY_LIMIT_MB = 200
STALL_LIMIT_MS = 500
#: Marks this run's processes (Ray's workers and Serve's HAProxy inherit the environment).
RUN_VAR = "AOS_BENCH_OUTPUT_RUN"


def log_text(size: int) -> bytes:
    line = b"2026-11-30T01:02:03.%06dZ INFO worker-%02d step=%08d loss=0.%04d status=ok\n"
    lines = b"".join(line % (i % 999999, i % 64, i, i % 9973) for i in range(size // 70 + 2))
    return lines[:size]


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Rss:
    """Each service process's resident memory (private, shared), sampled every 0.2 s while
    a phase runs."""

    before: dict[int, tuple[int, int]] = field(default_factory=dict)
    peak: dict[int, tuple[int, int]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    def growth_mb(self, part: int = 0) -> dict[str, float]:
        """The largest peak growth (MB) of `part` (0 private, 1 shared) among the processes
        of each kind."""
        grown: dict[str, float] = {}
        for pid, peak in self.peak.items():
            name, before = self.names[pid], self.before.get(pid, peak)
            grown[name] = max(grown.get(name, 0.0), (peak[part] - before[part]) / 1e6)
        return grown


def service_processes() -> dict[int, str]:
    """This run's service processes (pid: kind), found by the mark in their environment."""
    kinds = ("ShardActor", "ServeReplica:aos:Api", "haproxy", "ServeController")
    return marked_processes(
        RUN_VAR, {kind: kind.replace("ServeReplica:aos:", "") for kind in kinds}
    )


def rss_of(pid: int) -> tuple[int, int]:
    """Resident bytes of `pid`: (private, shared memory), (0, 0) once it is gone. The shared
    part is Ray's object store (an append over 100 KiB travels to the shard through it):
    its pages count in every process that touched them, though they are one store."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssShmem:")):
                found[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found.get("RssAnon", 0), found.get("RssShmem", 0)


async def sampled(phase: Awaitable[T]) -> tuple[T, Rss]:
    rss = Rss(names=service_processes())
    for pid in rss.names:
        rss.before[pid] = rss.peak[pid] = rss_of(pid)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for pid in rss.names:
                now, peak = rss_of(pid), rss.peak[pid]
                rss.peak[pid] = (max(peak[0], now[0]), max(peak[1], now[1]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        return await phase, rss
    finally:
        done.set()
        sampler.join()


async def timed(phase: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await phase
    return result, time.perf_counter() - started


# -- the phases -------------------------------------------------------------------------------


async def append(http: aiohttp.ClientSession, job: str, size: int, block: bytes) -> int:
    sent, seq = 0, 1
    while sent < size:
        body = block[: min(len(block), size - sent)]
        async with http.post(f"/api/v1/jobs/{job}/output?seq={seq}", data=body) as response:
            ack = await response.json()
            assert response.status == 200, ack
        sent, seq = sent + len(body), ack["seq"] + 1
    return sent


async def download(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    got = 0
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        async for piece in response.content.iter_chunked(1 * MiB):
            got += len(piece)
    return got


async def sse(http: aiohttp.ClientSession, job: str) -> int:
    """Output bytes (UTF-8) carried by the stream's `output` events, until `end`."""
    got, event = 0, ""
    async with http.get(f"/api/v1/jobs/{job}/stream", timeout=None) as response:
        assert response.status == 200
        buffer = b""
        async for piece in response.content.iter_any():
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: ") and event == "output":
                    got += json.loads(line[6:])["size"]
                elif line.startswith(b"data: ") and event == "end":
                    return got
    return got


async def baseline(path: Path) -> float:
    """MB/s of a plain loopback download of `path` (aiohttp FileResponse: sendfile)."""
    app = web.Application()
    app.router.add_get("/file", lambda _: web.FileResponse(path))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        async with aiohttp.ClientSession(f"http://{HOST}:{port}") as http:
            got, seconds = await timed(download(http, "/file", {}))
        assert got == path.stat().st_size
        return got / seconds / 1e6
    finally:
        await runner.cleanup()


async def other_writer(http: aiohttp.ClientSession, job: str, stop: asyncio.Event) -> float:
    """Append 1 KiB again and again until `stop`; the longest gap between acks (ms)."""
    longest, last = 0.0, time.perf_counter()
    while not stop.is_set():
        path = f"/api/v1/jobs/{job}/output?namespace={SMALL}"
        async with http.post(path, data=b"x" * 1024) as r:
            assert r.status == 200, await r.text()
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return longest * 1000


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


# -- the run -----------------------------------------------------------------------------


def start(data_dir: Path) -> tuple[bootstrap.Service, dict[str, str]]:
    os.environ[RUN_VAR] = uuid.uuid4().hex
    ray_connect.connect(None, log_to_driver=False)
    settings = service_settings(data_dir, ADMIN_KEY, num_shards=NUM_SHARDS)
    service = bootstrap.start(settings)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys = {}
    with httpx.Client(base_url=service.url, headers=admin, timeout=60) as http:
        for name in (BIG, SMALL):
            http.post("/api/v1/namespaces", json={"name": name}).raise_for_status()
            keys[name] = http.post(f"/api/v1/namespaces/{name}/keys").json()["key"]
    return service, keys


async def one_size(
    url: str, keys: dict[str, str], size: int, folder: Path, block: bytes, output_format: str
) -> None:
    gib = size / GiB
    auth = {"Authorization": f"Bearer {keys[BIG]}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    job = f"out-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(url, headers=auth, timeout=timeout) as http:
        async with http.post(
            "/api/v1/jobs", json={"jobId": job, "outputFormat": output_format}
        ) as r:
            assert r.status == 201, await r.text()
        disk_before = disk_bytes(folder)
        (sent, append_s), rss_append = await sampled(timed(append(http, job, size, block)))
        assert sent == size
        async with http.post(f"/api/v1/jobs/{job}/complete", json={"status": "Succeeded"}) as r:
            assert r.status == 200
        identity = {"Accept-Encoding": "identity"}
        raw_url = f"/api/v1/jobs/{job}/output/raw"
        (got, raw_s), rss_raw = await sampled(timed(download(http, raw_url, identity)))
        assert got == size, (got, size)
        (sse_bytes, sse_s), rss_sse = await sampled(timed(sse(http, job)))
        assert sse_bytes == size, (sse_bytes, size)
        stored = disk_bytes(folder) - disk_before

    file = folder / "baseline.bin"
    with open(file, "wb") as out:
        for start_at in range(0, size, len(block)):
            out.write(block[: min(len(block), size - start_at)])
    base = await baseline(file)
    file.unlink()

    deleted = await delete_under_load(url, keys, job, folder)
    print(
        f"\n== {gib:g} GiB of {'random bytes' if output_format == 'binary' else 'log text'}"
        f" ({size:,} bytes), baseline file download {base:,.0f} MB/s"
    )
    for name, seconds, rss in (
        ("append", append_s, rss_append),
        ("raw download", raw_s, rss_raw),
        ("SSE replay", sse_s, rss_sse),
    ):
        rate = size / seconds / 1e6
        grown = ", ".join(f"{k} +{v:.0f}" for k, v in sorted(rss.growth_mb().items()))
        shared = max(rss.growth_mb(1).values(), default=0.0)
        worst = max(rss.growth_mb().values(), default=0.0)
        verdict = "met" if worst <= MEMORY_LIMIT_MB else "MISSED"
        print(
            f"{name:>13}: {rate:7,.0f} MB/s  ratio {rate / base:.3f}  in {seconds:6.1f} s;"
            f" peak private memory growth (MB): {grown} (<= {MEMORY_LIMIT_MB} MB: {verdict});"
            f" Ray object store pages mapped: +{shared:.0f} MB"
        )
    print(f"   on disk: {stored / 1e6:,.0f} MB for {size / 1e6:,.0f} MB ({stored / size:.1%})")
    print(deleted)


async def delete_under_load(url: str, keys: dict[str, str], job: str, folder: Path) -> str:
    small = {"Authorization": f"Bearer {keys[SMALL]}"}
    async with aiohttp.ClientSession(url, headers=small) as http:
        other = f"w-{uuid.uuid4().hex[:8]}"
        async with http.post(f"/api/v1/jobs?namespace={SMALL}", json={"jobId": other}) as r:
            assert r.status == 201
        stop = asyncio.Event()
        writer = asyncio.create_task(other_writer(http, other, stop))
        await asyncio.sleep(1.0)
        before = disk_bytes(folder)
        big = {"Authorization": f"Bearer {keys[BIG]}"}
        started = time.perf_counter()
        async with http.delete(f"/api/v1/jobs/{job}?namespace={BIG}", headers=big) as r:
            assert r.status == 204, await r.text()
        delete_ms = (time.perf_counter() - started) * 1000
        purge_s = await until_purged(folder / "aos.db", started)
        await asyncio.sleep(1.0)
        stop.set()
        stall_ms = await writer
    verdict = "met" if stall_ms <= STALL_LIMIT_MS else "MISSED"
    db = folder / "aos.db"
    wal = db.with_name("aos.db-wal")
    wal_mb = wal.stat().st_size / 1e6 if wal.exists() else 0.0
    return (
        f"       delete: answered in {delete_ms:,.0f} ms, output purged in {purge_s:.1f} s;"
        f" files {before / 1e6:,.0f} MB -> {disk_bytes(folder) / 1e6:,.0f} MB"
        f" (database {db.stat().st_size / 1e6:,.1f} MB, its WAL {wal_mb:,.1f} MB);"
        f" another shard's appends meanwhile: longest gap {stall_ms:,.0f} ms"
        f" (<= {STALL_LIMIT_MS} ms: {verdict})"
    )


async def until_purged(db: Path, started: float) -> float:
    """Seconds from `started` until the store holds no purge to do (`output_purges` is
    empty: the purger removed the last chunk)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        while conn.execute("SELECT count(*) FROM output_purges").fetchone()[0]:
            await asyncio.sleep(0.1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one output of 0.25 GiB")
    parser.add_argument("--sizes", default="1,10", help="output sizes in GiB (default 1,10)")
    parser.add_argument("--noise", action="store_true", help="random bytes, a binary job")
    args = parser.parse_args()
    sizes = [0.25] if args.quick else [float(s) for s in args.sizes.split(",")]
    os.chdir(HERE.parent)  # Ray puts the driver's working directory on its workers' path
    block = os.urandom(MAX_APPEND_BYTES) if args.noise else log_text(MAX_APPEND_BYTES)
    output_format = "binary" if args.noise else "text"
    with tempfile.TemporaryDirectory(prefix="aos-bench-output-") as tmp:
        folder = Path(tmp)
        service, keys = start(folder)
        try:
            for gib in sizes:
                asyncio.run(
                    one_size(service.url, keys, int(gib * GiB), folder, block, output_format)
                )
        finally:
            bootstrap.stop(service)
            ray.shutdown()


if __name__ == "__main__":
    main()
