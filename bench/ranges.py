"""The download benchmark: a Range read's cost by its position, and the content codings' MB/s.

One command: `.venv/bin/python bench/ranges.py [--quick]` (see bench/README.md). No Ray:
a SQLite store in a temp dir, read through `ShardClient` as the API replicas read it.

1. A 1 GiB output (quick: 256 MiB) of 16 KiB chunks; a 1 MiB Range read at its start and
   at its end, each the median of several; their ratio is near 1 when the offset look-up
   is an index look-up. Baseline: the same end range reached the old way, reading every
   chunk before it.
2. A 200 MB (quick: 50 MB) log-text output, read and encoded as the raw download does
   (`serve_app.encoding.encode_stream` over the store's pages) in identity, gzip and zstd:
   MB/s of output bytes and the encoded size; each encoded body is decoded and checked.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
# `python bench/ranges.py` puts bench/ first on the path, where bench/http.py shadows the
# standard library's `http`: take bench/ off, put the repository on.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from actors.shard import Shard, ShardConfig  # noqa: E402
from actors.shard_client import ShardClient  # noqa: E402
from serve_app.encoding import Coding, encode_stream  # noqa: E402
from storage.records import Batch, Chunk, Job, JobStatus  # noqa: E402
from storage.sql import SEQ_AT_OFFSET  # noqa: E402
from storage.sqlite import SqliteStore  # noqa: E402

MiB = 1024 * 1024
NAMESPACE = "bench"
CHUNK_BYTES = 16 * 1024
TEXT_CHUNK_BYTES = 64 * 1024
RANGE_BYTES = MiB
COMMIT_BYTES = 64 * MiB
REPEATS = 15


async def write_output(store: SqliteStore, job_id: str, chunks: AsyncIterator[bytes]) -> Job:
    """A finished job whose output is `chunks`, committed in batches of COMMIT_BYTES."""
    seq, offset, batch = 0, 0, []
    async for data in chunks:
        seq += 1
        batch.append(Chunk(NAMESPACE, job_id, seq, offset, data))
        offset += len(data)
        if len(batch) * len(data) >= COMMIT_BYTES:
            await store.commit(Batch(chunks=batch))
            batch = []
    await store.commit(Batch(chunks=batch))
    now = time.time()
    job = Job(NAMESPACE, job_id, slot=0, created_at=now, updated_at=now, completed_at=now)
    job = job.evolve(status=JobStatus.SUCCEEDED, output_seq=seq, output_size=offset)
    await store.commit(Batch(jobs=[job]))
    return job


async def random_chunks(total: int) -> AsyncIterator[bytes]:
    block = os.urandom(COMMIT_BYTES)
    for start in range(0, total, CHUNK_BYTES):
        at = start % COMMIT_BYTES
        yield block[at : at + CHUNK_BYTES]


async def log_chunks(total: int) -> AsyncIterator[bytes]:
    """Ordinary log text: timestamps, levels, ids, a handful of message shapes."""
    rng = random.Random(11)
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
    shapes = [
        "request {id} GET /api/v1/jobs/{id}/status 200 in {n} ms",
        "worker-{n} picked job {id} (attempt {m})",
        "flushed {n} rows to shard {m} in {n} us",
        "retrying delivery {id}: connection reset by peer after {n} ms",
        "epoch {m}: lease renewed by node-{n}",
    ]
    made, buffer = 0, bytearray()
    clock = 1_700_000_000.0
    while made < total:
        clock += rng.random() / 50
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock))
        message = rng.choice(shapes).format(
            id=f"{rng.getrandbits(48):012x}", n=rng.randrange(1, 5000), m=rng.randrange(1, 64)
        )
        buffer += (
            f"{stamp}.{int(clock % 1 * 1000):03d}Z {rng.choice(levels):5} {message}\n".encode()
        )
        if len(buffer) >= TEXT_CHUNK_BYTES:
            made += len(buffer)
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def read_range(client: ShardClient, job: Job, start: int, length: int) -> float:
    """Seconds to read bytes start..start+length-1 as the raw download's 206 does."""
    began, got, end = time.perf_counter(), 0, start + length - 1
    async for chunk in client.output(job.current_version, span=(start, end + 1)):
        got += len(chunk.data[max(start - chunk.offset, 0) : end + 1 - chunk.offset])
        if chunk.end > end:
            break
    assert got == length, (got, length)
    return time.perf_counter() - began


async def scan_to(client: ShardClient, job: Job, start: int, length: int) -> float:
    """The baseline: the same range reached by reading every chunk from the first."""
    began, end = time.perf_counter(), start + length - 1
    async for chunk in client.output(job.current_version):
        if chunk.end > end:
            break
    return time.perf_counter() - began


async def ranges(client: ShardClient, store: SqliteStore, total: int) -> None:
    began = time.perf_counter()
    job = await write_output(store, "big", random_chunks(total))
    written = time.perf_counter() - began
    chunks = job.output_seq
    print(f"  wrote {total / MiB:.0f} MiB in {chunks} chunks of 16 KiB in {written:.1f} s")
    plan = await store._fetch(f"EXPLAIN QUERY PLAN {SEQ_AT_OFFSET}", (NAMESPACE, "big", 1, 0))
    print(f"  offset look-up plan: {' / '.join(str(row[-1]) for row in plan)}")
    at_end = job.output_size - RANGE_BYTES
    starts, ends = [], []
    for _ in range(REPEATS):  # interleaved, so the machine's load drifts alike on both
        starts.append(await read_range(client, job, 0, RANGE_BYTES))
        ends.append(await read_range(client, job, at_end, RANGE_BYTES))
    start_ms, end_ms = statistics.median(starts) * 1000, statistics.median(ends) * 1000
    print(f"  1 MiB range at the start: {start_ms:.1f} ms (median of {REPEATS})")
    print(f"  1 MiB range at the end:   {end_ms:.1f} ms, ratio {end_ms / start_ms:.2f} to start")
    scan_ms = await scan_to(client, job, at_end, RANGE_BYTES) * 1000
    print(f"  baseline, the end range by reading every chunk before it: {scan_ms:.0f} ms")
    print(f"ranges: end/start {end_ms / start_ms:.2f}; scan/end {scan_ms / end_ms:.0f}x")


async def encodings(client: ShardClient, store: SqliteStore, total: int) -> None:
    job = await write_output(store, "text", log_chunks(total))
    size = job.output_size
    digest = hashlib.sha256()
    async for chunk in client.output(job.current_version):
        digest.update(chunk.data)
    print(f"  {size / 1e6:.0f} MB of log text in {job.output_seq} chunks of 64 KiB")
    rates = {}
    for coding in (Coding.IDENTITY, Coding.GZIP, Coding.ZSTD):
        began, sent, kept = time.perf_counter(), 0, []
        pages = (chunk.data async for chunk in client.output(job.current_version))
        async for piece in encode_stream(pages, coding):
            sent += len(piece)
            if coding is not Coding.IDENTITY:
                kept.append(piece)
        elapsed = time.perf_counter() - began
        rates[coding] = size / 1e6 / elapsed
        if kept:
            assert hashlib.sha256(decode(coding, b"".join(kept))).digest() == digest.digest()
        print(
            f"  {coding.value:8}: {rates[coding]:6.0f} MB/s of output, {sent / 1e6:6.1f} MB sent"
            f" ({sent / size:.1%})"
        )
    identity = rates[Coding.IDENTITY]
    print(
        f"encodings: gzip {rates[Coding.GZIP] / identity:.2f} zstd"
        f" {rates[Coding.ZSTD] / identity:.2f} of identity's {identity:.0f} MB/s"
    )


def decode(coding: Coding, data: bytes) -> bytes:
    if coding is Coding.GZIP:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="aos-bench-ranges-") as data:
        store = SqliteStore(f"sqlite:///{data}/aos.db")
        await store.open()
        shard = Shard(store, ShardConfig(slot=0, num_shards=1))
        await shard.start()
        client = ShardClient.in_process([shard], store=store)
        try:
            print("== Range reads by position (SQLite)")
            await ranges(client, store, (256 if quick else 1024) * MiB)
            print("== Content codings of the raw download (store pages -> encoder)")
            await encodings(client, store, (50 if quick else 200) * 1_000_000)
        finally:
            await shard.stop()
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB and 50 MB instead")
    asyncio.run(main(parser.parse_args().quick))
