"""`aos serve` on a PostgreSQL of the test's own (tests/pg_instance.py), both started and
stopped by the test, and its shard actors killed from outside, as a fault."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from tests.conftest import free_port
from tests.e2e import served
from tests.pg_instance import PgInstance, pg_instance

_RAY_ADDRESS = "Ray address: "
#: Joins the service's cluster once, then kills the shard of each slot it reads on stdin.
_SHARD_KILLER = """
import sys, ray
from cluster import ray_connect
from actors.routing import RAY_NAMESPACE, shard_name
ray_connect.connect(sys.argv[1], log_to_driver=False)
print("joined", flush=True)
for line in sys.stdin:
    ray.kill(ray.get_actor(shard_name(int(line)), namespace=RAY_NAMESPACE), no_restart=False)
    print("killed", flush=True)
"""


@dataclass
class PgService:
    pg: PgInstance
    url: str
    admin_key: str
    ray_address: str
    #: What the service printed after it was ready (drained, so that its pipe never fills).
    output: list[str] = field(default_factory=list)

    def epochs(self) -> dict[int, int]:
        """Each slot's lease epoch, read from the database: it goes up when a shard restarts."""
        with psycopg.connect(self.pg.url) as conn:
            return dict(conn.execute("SELECT slot, epoch FROM shard_leases").fetchall())


class ShardKiller:
    """A process that has joined the service's Ray cluster (this one may run a Ray of its
    own, and joining takes seconds on a busy machine): `kill(slot)` is
    `ray.kill(..., no_restart=False)` of that shard's actor, and Ray restarts it."""

    def __init__(self, ray_address: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SHARD_KILLER, ray_address],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._said("joined")

    def kill(self, slot: int) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{slot}\n")
        self._proc.stdin.flush()
        self._said("killed")

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _said(self, word: str) -> None:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != word:
            self._proc.kill()
            raise AssertionError(f"the shard killer said {line!r}, not {word!r}")


@contextmanager
def shard_killer(ray_address: str) -> Iterator[ShardKiller]:
    killer = ShardKiller(ray_address)
    try:
        yield killer
    finally:
        killer.close()


@contextmanager
def pg_service() -> Iterator[PgService]:
    """A PostgreSQL server, and `aos serve` (two shards) on it; both gone afterwards."""
    with pg_instance() as pg:
        port = free_port()
        proc = served.start(pg.url, port)
        try:
            service = PgService(pg, f"http://127.0.0.1:{port}", served.ADMIN_KEY, "")
            assert proc.stdout is not None
            for line in proc.stdout:  # the lines after "ready at"
                service.output.append(line)
                if line.startswith(_RAY_ADDRESS):
                    service.ray_address = line[len(_RAY_ADDRESS) :].split()[0]
                    break
            drain = threading.Thread(target=service.output.extend, args=(proc.stdout,), daemon=True)
            drain.start()
            yield service
        finally:
            served.kill_all(proc)
