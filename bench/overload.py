"""The overload benchmark: a flood of concurrent submitters, and how the service sheds it.

One command: `.venv/bin/python bench/overload.py [--connections 512] [--duration 25]` (see
bench/README.md). wrk (bench/wrk/flood.lua) floods `POST /api/v1/jobs`, every request a new
jobId, and counts the answers by status and each 503's `Retry-After`. Beside it, in the same
run: the same flood at `--baseline` connections (the service under a load it carries), and
the flood at full width against a no-op Serve app (what wrk and the ingress do alone). The
memory of the Api replicas, the shard actors and HAProxy is sampled throughout; one submit
is timed as soon as the flood stops.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/http.py would shadow the standard library's `http`: take bench/ off the path.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from bench.http import (  # noqa: E402
    NOOP_APP,
    Noop,
    bare_uvicorn,
    create_key,
    service_settings,
)
from cluster import bootstrap, ray_connect  # noqa: E402

HOST = "127.0.0.1"
ADMIN_KEY = "bench"
NAMESPACE = "bench"
SUBMIT_PATH = "/api/v1/jobs"
NOOP_PATH = f"/{NOOP_APP}/jobs"
LUA = HERE / "wrk" / "flood.lua"
MARK = "AOS-FLOOD "
WRK_THREADS = 2
#: wrk gives up on a request after this long: far past the 10 s target, so a request that
#: waits longer shows in the maximum latency (or as a timeout), never hidden by wrk.
WRK_TIMEOUT_S = 60
SAMPLE_EVERY_S = 0.5
AFTER_TIMEOUT_S = 60.0
TARGET_MAX_S = 10.0
TARGET_AFTER_S = 2.0
STARTED = time.perf_counter()


# -- wrk ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flood:
    """One wrk flood's figures, as bench/wrk/flood.lua's `done` hook prints them."""

    requests: int
    duration_s: float
    socket_errors: int
    timeouts: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    retry_after: dict[str, int]
    bare_503: int

    @classmethod
    def parse(cls, output: str) -> Flood:
        line = next((ln for ln in output.splitlines() if ln.startswith(MARK)), None)
        if line is None:
            raise RuntimeError(f"wrk printed no figures:\n{output}")
        f = json.loads(line.removeprefix(MARK))
        errors = f["connect_errors"] + f["read_errors"] + f["write_errors"]
        return cls(
            requests=f["requests"],
            duration_s=f["duration_us"] / 1e6,
            socket_errors=errors,
            timeouts=f["timeouts"],
            p50_ms=f["p50_us"] / 1e3,
            p99_ms=f["p99_us"] / 1e3,
            max_ms=f["max_us"] / 1e3,
            statuses=dict(sorted(f["statuses"].items())),
            retry_after=dict(sorted(f["retry_after"].items(), key=lambda kv: float(kv[0]))),
            bare_503=f["bare_503"],
        )

    @property
    def per_s(self) -> float:
        return self.requests / self.duration_s

    def count(self, status: str) -> int:
        return self.statuses.get(status, 0)

    @property
    def others(self) -> int:
        """Answers that are neither 201 nor 503."""
        return sum(n for status, n in self.statuses.items() if status not in ("201", "503"))

    def __str__(self) -> str:
        return (
            f"{self.per_s:.0f} answers/s ({self.count('201') / self.duration_s:.0f} 201/s)"
            f" p50 {self.p50_ms:.0f} ms p99 {self.p99_ms:.0f} ms max {self.max_ms:.0f} ms;"
            f" statuses {self.statuses}; 503 without Retry-After {self.bare_503};"
            f" Retry-After values {self.retry_after}; socket errors {self.socket_errors},"
            f" timeouts {self.timeouts}"
        )


def flood(url: str, path: str, key: str, *, connections: int, duration_s: int, run: str) -> Flood:
    """`connections` keep-alive connections POSTing new jobs to `path` for `duration_s`."""
    command = [
        "wrk", f"-t{min(WRK_THREADS, connections)}", f"-c{connections}", f"-d{duration_s}s",
        f"--timeout={WRK_TIMEOUT_S}s", f"--script={LUA}",
        "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
        url + path,
    ]  # fmt: skip
    done = subprocess.run(
        command,
        env={**os.environ, "AOS_FLOOD_RUN": run},
        capture_output=True,
        text=True,
        timeout=duration_s + WRK_TIMEOUT_S + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return Flood.parse(done.stdout)


# -- memory ---------------------------------------------------------------------------------

ROLES = {"Api replicas": "ServeReplica:aos:Api", "shards": "ShardActor", "HAProxy": "haproxy"}


def descendants(root: int) -> list[int]:
    """Every process under `root` (this driver started Ray, so every Ray process is one)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found += children.get(pid, [])
        todo += children.get(pid, [])
    return found


def rss_by_role() -> dict[str, int]:
    """Resident bytes of each role's processes, summed."""
    totals = dict.fromkeys(ROLES, 0)
    for pid in descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        role = next((r for r, mark in ROLES.items() if mark in cmdline), None)
        rss = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), None)
        if role is not None and rss is not None:
            totals[role] += int(rss.split()[1]) * 1024
    return totals


@dataclass
class Memory:
    """Each role's RSS before a flood, its peak during it, and after it."""

    before: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        mib = 1024 * 1024
        return [
            f"memory {role}: before {self.before[role] / mib:.0f} MiB, peak"
            f" {self.peak[role] / mib:.0f} MiB, after {self.after[role] / mib:.0f} MiB"
            for role in ROLES
        ]


@contextmanager
def sampled(memory: Memory) -> Iterator[None]:
    """Sample every role's RSS in a thread while the block runs, keeping the peak."""
    memory.before = memory.peak = rss_by_role()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_EVERY_S):
            now = rss_by_role()
            memory.peak = {role: max(memory.peak[role], now[role]) for role in ROLES}

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()


# -- where requests waited -----------------------------------------------------------------

#: HAProxy's columns per server (its stats CSV): queued now and at most, sessions at most,
#: connection errors, retries, redispatches, and mean queue/connect/response/total ms over
#: its last 1,024 requests.
HAPROXY_COLUMNS = (
    "qmax",
    "smax",
    "econ",
    "eresp",
    "wretr",
    "wredis",
    "qtime",
    "ctime",
    "rtime",
    "ttime",
)


def haproxy_servers(stats_url: str) -> list[str]:
    """One line per server (the replicas of each app), from HAProxy's stats page: since
    HAProxy started, so over every flood of the run."""
    rows = csv.DictReader(io.StringIO(httpx.get(stats_url, timeout=10).text.lstrip("# ")))
    return [
        f"HAProxy {row['pxname']}/{row['svname']}: "
        + " ".join(f"{column} {row[column] or 0}" for column in HAPROXY_COLUMNS)
        for row in rows
        if row["svname"] not in ("FRONTEND", "BACKEND")
    ]


def listen_overflows() -> int:
    """The kernel's count of connections dropped from a full accept queue (whole machine)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    names, values = next(
        (lines[i].split(), lines[i + 1].split())
        for i in range(0, len(lines), 2)
        if lines[i].startswith("TcpExt:")
    )
    return int(values[names.index("ListenOverflows")])


# -- after the flood ------------------------------------------------------------------------


@dataclass(frozen=True)
class After:
    """The first submit made once the flood stopped: its status and how long it took."""

    status: int
    seconds: float
    first_201_s: float


def submit_after(url: str, key: str, run: str) -> After:
    """One submit as soon as the flood stops; if it is shed, retries as `Retry-After` says,
    until a 201 (`first_201_s`: from the first try)."""
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    first: tuple[int, float] | None = None
    with httpx.Client(base_url=url, headers=headers, timeout=AFTER_TIMEOUT_S) as http:
        while True:
            sent = time.perf_counter()
            answer = http.post(SUBMIT_PATH, json={"jobId": f"{run}-after", "metadata": {}})
            first = first or (answer.status_code, time.perf_counter() - sent)
            if answer.status_code in (200, 201):
                return After(first[0], first[1], time.perf_counter() - start)
            if answer.status_code != 503 or time.perf_counter() - start > AFTER_TIMEOUT_S:
                raise RuntimeError(f"submit after the flood: {answer.status_code} {answer.text}")
            time.sleep(float(answer.headers.get("Retry-After", "1")))


def stored_jobs(db: Path, run: str) -> int:
    """Jobs of this run the store holds."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE namespace = ? AND job_id LIKE ?",
            (NAMESPACE, f"{run}-%"),
        ).fetchone()
    return int(row[0])


# -- the run --------------------------------------------------------------------------------


def section(title: str) -> None:
    print(f"\n== [{time.perf_counter() - STARTED:4.0f} s] {title}", flush=True)


def start(data_dir: str) -> tuple[bootstrap.Service, str, str]:
    """Ray, the service (every other setting from AOS_*), the no-op app, a namespace key;
    returns the service, the key and HAProxy's stats CSV URL."""
    ray_connect.connect(None, log_to_driver=False)  # a private cluster, never another's
    settings = service_settings(data_dir, ADMIN_KEY)
    service = bootstrap.start(settings)
    noop = Noop.options(num_replicas=settings.num_replicas)  # type: ignore[attr-defined]
    serve.run(noop.bind(), name=NOOP_APP, route_prefix=f"/{NOOP_APP}")
    stats = f"http://{settings.haproxy_admin_host}:{settings.haproxy_stats_port}/stats;csv"
    return service, create_key(service.url), stats


@dataclass(frozen=True)
class Results:
    baseline: Flood
    bare: Flood
    noop: Flood
    full: Flood
    memory: Memory
    after: After
    stored: int
    #: Where the flood's requests waited: HAProxy's servers, the kernel's dropped connections.
    waits: list[str]


def measure(args: argparse.Namespace, data_dir: str) -> Results:
    run = uuid.uuid4().hex[:8]
    service = None
    try:
        section("starting Ray, the service (SQLite, HAProxy ingress) and the Serve no-op app")
        service, key, stats = start(data_dir)
        url, width = service.url, args.connections
        section(f"baseline: {args.baseline} submitters for {args.duration} s")
        baseline = flood(url, SUBMIT_PATH, key, connections=args.baseline,
                         duration_s=args.duration, run=f"{run}-b")  # fmt: skip
        print(f"  {baseline}", flush=True)
        section(f"generator: {width} submitters, the no-op app on bare uvicorn, then on Serve")
        with bare_uvicorn() as bare_url:
            bare = flood(bare_url, "/jobs", key, connections=width,
                         duration_s=args.duration, run=run)  # fmt: skip
        print(f"  {bare}", flush=True)
        noop = flood(url, NOOP_PATH, key, connections=width, duration_s=args.duration, run=run)
        print(f"  {noop}", flush=True)
        time.sleep(args.settle)
        section(f"the flood: {width} submitters for {args.duration} s")
        memory, overflows = Memory(), listen_overflows()
        with sampled(memory):
            full = flood(url, SUBMIT_PATH, key, connections=width,
                         duration_s=args.duration, run=f"{run}-f")  # fmt: skip
            after = submit_after(url, key, f"{run}-f")
        waits = [
            *haproxy_servers(stats),
            f"listen queue overflows (whole machine): {listen_overflows() - overflows}",
        ]
        print(f"  {full}", flush=True)
        print(f"  submit after the flood: {after.status} in {after.seconds:.2f} s", flush=True)
        time.sleep(args.settle)
        memory.after = rss_by_role()
        stored = stored_jobs(Path(data_dir, "aos.db"), f"{run}-f")
        return Results(baseline, bare, noop, full, memory, after, stored, waits)
    finally:
        section("tearing down")
        try:
            if service is not None:
                serve.delete(NOOP_APP)
                bootstrap.stop(service)
        finally:
            ray.shutdown()


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summary(args: argparse.Namespace, r: Results) -> list[str]:
    full, base = r.full, r.baseline
    only = full.others == 0 and full.bare_503 == 0 and full.timeouts == 0
    created = full.count("201")
    rate = created / full.duration_s
    return [
        f"baseline ({args.baseline} submitters): {base}",
        f"no-op on bare uvicorn ({args.connections} submitters): {r.bare}",
        f"no-op on Serve ({args.connections} submitters): {r.noop}",
        f"flood ({args.connections} submitters): {full}",
        f"answers only 201 or 503 with Retry-After: {met(only)} (others {full.others},"
        f" bare 503 {full.bare_503}, timeouts {full.timeouts}, socket errors"
        f" {full.socket_errors})",
        f"max latency {full.max_ms / 1e3:.2f} s (target < {TARGET_MAX_S:.0f} s:"
        f" {met(full.max_ms < TARGET_MAX_S * 1e3)}); {full.max_ms / base.max_ms:.1f}x the"
        f" baseline's max, p50 {full.p50_ms / base.p50_ms:.1f}x; bare uvicorn's max at the"
        f" same width {r.bare.max_ms / 1e3:.2f} s (this machine and wrk alone)",
        f"201/s {rate:.0f}, {rate / (base.count('201') / base.duration_s):.2f}x the baseline's;"
        f" wrk drove bare uvicorn at {r.bare.per_s / full.per_s:.1f}x the flood's answers/s,"
        f" the Serve no-op at {r.noop.per_s / full.per_s:.1f}x",
        f"submit after the flood: {r.after.status} in {r.after.seconds:.2f} s, a 201 after"
        f" {r.after.first_201_s:.2f} s (target < {TARGET_AFTER_S:.0f} s:"
        f" {met(r.after.first_201_s < TARGET_AFTER_S)})",
        f"store holds {r.stored} of the flood's jobs, {created} answered 201 (at least those:"
        f" {met(r.stored >= created)})",
        *r.memory.lines(),
        *r.waits,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=512, help="submitters (512)")
    parser.add_argument("--baseline", type=int, default=16, help="baseline submitters (16)")
    parser.add_argument("--duration", type=int, default=25, help="seconds a flood (25)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between floods (3)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/overload.py needs wrk, the HTTP load generator: apt-get install wrk")
    os.chdir(ROOT)  # Ray puts the driver's working directory on its workers' path
    # HAProxy's wrapper (`aos-haproxy`, cluster/ingress.py) runs as its own program: it must
    # import this checkout's rules too, not those of whichever checkout the venv installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    with tempfile.TemporaryDirectory(prefix="aos-bench-overload-") as tmp:
        results = measure(args, tmp)
    section(f"summary ({time.perf_counter() - STARTED:.0f} s, a shared 2-core machine)")
    for line in summary(args, results):
        print(line)


if __name__ == "__main__":
    main()
