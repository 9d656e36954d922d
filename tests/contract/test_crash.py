"""A process killed in the middle of a group commit: after reopening (and taking the shard's
lease, as a restarted shard does), each commit is there whole or not at all, and every
commit the dead process saw acknowledged is there.

The writer is a child process that commits batches of 40 jobs, each with a 32 KiB chunk,
plus 6 MiB of output for the batch's first job (past one DynamoDB transaction, one
Cassandra mutation bound), printing each acknowledged batch's number. It is SIGKILLed at
a random moment of a later commit.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from storage.records import JobQuery
from storage.registry import open_store

JOBS = 40
SMALL = 32 * 1024
BIG = 6 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]

WRITER = f"""
import asyncio, sys
from storage.records import Batch, Chunk, Job
from storage.registry import open_store

async def main(url):
    store = open_store(url)
    await store.open()
    epoch = await store.acquire_shard(0, "writer")
    for k in range(1_000_000):
        jobs = [Job("acme", f"b{{k}}-{{i}}", 0, float(k), float(k)) for i in range({JOBS})]
        chunks = [Chunk("acme", j.job_id, 1, 0, bytes([k % 251]) * {SMALL}) for j in jobs]
        chunks.append(Chunk("acme", f"b{{k}}-0", 2, {SMALL}, bytes([k % 13]) * {BIG}))
        await store.commit(Batch(slot=0, epoch=epoch, jobs=jobs, chunks=chunks))
        print(k, flush=True)

asyncio.run(main(sys.argv[1]))
"""


def _write_until_killed(url: str, after_acks: int) -> int:
    """Run the writer until it acknowledged `after_acks` batches, then kill it at a random
    moment within about one more commit; the last batch number it saw acknowledged."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acked, started = -1, time.monotonic()
    for line in child.stdout:
        acked = int(line)
        if acked == after_acks - 1:
            break
    one_commit_s = (time.monotonic() - started) / after_acks
    time.sleep(random.uniform(0, one_commit_s))
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=30)
    assert acked == after_acks - 1, f"the writer died early (acked {acked}): {rest}"
    return max([acked, *(int(line) for line in rest.split())])


async def test_a_commit_cut_by_a_kill_is_whole_or_absent_after_reopening(fresh_url: str) -> None:
    acked = await asyncio.to_thread(_write_until_killed, fresh_url, 2)
    store = open_store(fresh_url)
    await store.open()
    try:
        await store.acquire_shard(0, "after the crash")  # a restarted shard's first call
        jobs = await store.list_jobs("acme", JobQuery(limit=100_000))
        batches = {int(job.job_id[1:].split("-")[0]) for job in jobs}
        assert set(range(acked + 1)) <= batches, "an acknowledged commit was lost"
        assert batches <= set(range(acked + 2)), "a commit appeared that was never sent"
        for k in batches:
            ids = {job.job_id for job in jobs if job.job_id.startswith(f"b{k}-")}
            assert ids == {f"b{k}-{i}" for i in range(JOBS)}, f"commit {k} is cut"
            for i in range(JOBS):
                chunks = await store.read_output("acme", f"b{k}-{i}")
                assert chunks[0].data == bytes([k % 251]) * SMALL, (k, i)
                if i == 0:
                    assert [c.seq for c in chunks] == [1, 2]
                    assert chunks[1].data == bytes([k % 13]) * BIG
                else:
                    assert [c.seq for c in chunks] == [1]
    finally:
        await store.close()
