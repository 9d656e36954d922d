"""The fan-out benchmark: N SSE streams open on one machine, and an append reaching them all.

One command: `.venv/bin/python bench/fanout.py [--streams 10000] [--jobs 10] [--appends 10]`
(make bench-fanout; `--quick`: 1,000 streams, 3 appends). It starts a private Ray cluster
and the service (HAProxy ingress, SQLite in a temp dir, 2 shards, 2 `Api` replicas), then:

1. **before**: the latency of other requests (GET a job, a submit) with no stream open, and
   the `Api` replicas' and HAProxy's memory (USS: private pages, /proc/<pid>/smaps_rollup);
2. **open**: N streams (stream i follows job i mod J) from a Go client (bench/sse_client,
   stdlib only, built into ~/.cache/aos-bench; a Python client of 10,000 streams would be
   the bottleneck on two cores), waits until every stream has had its first events;
3. **held**: memory growth per open stream (USS delta / N), the watch calls the shards hold
   (their stats' `watches`: the target is one per job per replica, not one per stream),
   and the latency of other requests again, as a ratio to before;
4. **fan-out**: M rounds of one append to each job; for every (append, stream) pair, the
   time from the append's request to that stream's receipt: p50, p99, max;
5. **closed**: the streams close; the shards' watches must drop back.

The streams go over HTTP/2 without TLS by default (`--http1`: a connection each), as a
browser multiplexes its EventSource streams to one origin: HAProxy needs two descriptors
per proxied HTTP/1.1 connection, and the open-file limit here (20,000, hard) fits fewer
than 8,000 of them (cluster/ingress.py `fit_maxconn`). Replicas still get one connection
per stream from HAProxy.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `python bench/fanout.py` puts bench/ first on the path, where bench/http.py shadows the
# standard library's `http`: take bench/ off, put the repository on.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import httpx  # noqa: E402
import ray  # noqa: E402

from actors.routing import RAY_NAMESPACE, shard_name  # noqa: E402
from bench.http import marked_processes, service_settings  # noqa: E402
from cluster import bootstrap, ray_connect  # noqa: E402

HOST = "127.0.0.1"
ADMIN_KEY = "bench-fanout-admin-key-0123456789abcdef"
NAMESPACE = "fanout"
NUM_SHARDS = 2
#: Marks this run's processes (Ray's workers and Serve's HAProxy inherit the environment).
RUN_VAR = "AOS_BENCH_FANOUT_RUN"
CACHE = Path.home() / ".cache" / "aos-bench"
PROBES = 60
TARGET_KB_PER_STREAM = 20.0
TARGET_P99_MS = 500.0
#: Seconds between append rounds: each round's deliveries end before the next begins.
ROUND_GAP_S = 2.0
OPEN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Probe:
    """Latency (ms) of the other requests: a job's GET and a submit, p50 and p99."""

    get_p50: float
    get_p99: float
    submit_p50: float
    submit_p99: float


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_client() -> Path:
    """The Go stream client, built once into the cache (rebuilt when its source changes)."""
    source = HERE / "sse_client"
    binary = CACHE / "sse_client"
    newest = max(p.stat().st_mtime for p in source.iterdir())
    if not binary.exists() or binary.stat().st_mtime < newest:
        CACHE.mkdir(parents=True, exist_ok=True)
        go = shutil.which("go") or "/usr/local/go/bin/go"
        subprocess.run([go, "build", "-o", str(binary), "."], cwd=source, check=True)
    return binary


def service_processes() -> dict[int, str]:
    """This run's `Api` replicas, shards and HAProxy (pid: kind), by the mark in their
    environment."""
    kinds = {"ServeReplica:aos:Api": "Api", "ShardActor": "ShardActor", "haproxy -db": "haproxy"}
    return marked_processes(RUN_VAR, kinds)


def uss(pid: int) -> int:
    """Bytes only `pid` holds (private clean + dirty pages)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def memory() -> dict[str, int]:
    """USS bytes of each kind of process, summed over its processes."""
    found: dict[str, int] = {}
    for pid, kind in service_processes().items():
        try:
            found[kind] = found.get(kind, 0) + uss(pid)
        except OSError:
            continue
    return found


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the Go client, once waited for)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def watches() -> int:
    """The watch calls every shard holds now."""
    total = 0
    for slot in range(NUM_SHARDS):
        shard = ray.get_actor(shard_name(slot), namespace=RAY_NAMESPACE)
        total += ray.get(shard.stats.remote(), timeout=60)["watches"]
    return total


def probe(http: httpx.Client, job_id: str) -> Probe:
    """`PROBES` GETs of a job and `PROBES` submits, one at a time."""
    gets, submits = [], []
    for _ in range(PROBES):
        began = time.perf_counter()
        http.get(f"/api/v1/jobs/{job_id}").raise_for_status()
        gets.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        http.post("/api/v1/jobs", json={"metadata": {"title": "probe"}}).raise_for_status()
        submits.append((time.perf_counter() - began) * 1000)
    return Probe(
        quantile(gets, 0.5), quantile(gets, 0.99), quantile(submits, 0.5), quantile(submits, 0.99)
    )


def start(data_dir: Path) -> tuple[bootstrap.Service, str]:
    os.environ[RUN_VAR] = uuid.uuid4().hex
    ray_connect.connect(None, log_to_driver=False)
    settings = service_settings(data_dir, ADMIN_KEY, num_shards=NUM_SHARDS)
    service = bootstrap.start(settings)
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
    ) as http:
        http.post("/api/v1/namespaces", json={"name": NAMESPACE}).raise_for_status()
        key: str = http.post(f"/api/v1/namespaces/{NAMESPACE}/keys").json()["key"]
    return service, key


def open_streams(
    client: Path, url: str, key: str, jobs: list[str], streams: int, *, http1: bool, out: Path
) -> subprocess.Popen[str]:
    """The Go client, once every stream is open (its "open N" line)."""
    args = [str(client), f"-url={url}", f"-key={key}", f"-jobs={','.join(jobs)}"]
    args += [f"-streams={streams}", f"-out={out}"] + ([] if http1 else ["-h2"])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    line = proc.stdout.readline()
    if not line.startswith("open ") or time.monotonic() > deadline:
        proc.kill()
        raise RuntimeError(f"the streams did not all open: {line!r}")
    return proc


def fan_out(http: httpx.Client, jobs: list[str], rounds: int) -> dict[tuple[int, int], int]:
    """`rounds` appends to each job: (job index, seq) -> unix ns just before the request."""
    sent = {}
    for seq in range(1, rounds + 1):
        for index, job_id in enumerate(jobs):
            sent[(index, seq)] = time.time_ns()
            answer = http.post(f"/api/v1/jobs/{job_id}/output", content=f"round {seq}\n")
            answer.raise_for_status()
            assert answer.json()["seq"] == seq
        time.sleep(ROUND_GAP_S)
    return sent


def latencies(
    out: Path, sent: dict[tuple[int, int], int], jobs: int, streams: int, rounds: int
) -> tuple[list[float], int]:
    """Ms from each append to each stream's receipt, and how many pairs never arrived."""
    got: dict[tuple[int, int], int] = {}
    for line in out.read_text().splitlines():
        stream, seq, at = (int(field) for field in line.split())
        got[(stream, seq)] = at
    delays = []
    missing = 0
    for stream in range(streams):
        for seq in range(1, rounds + 1):
            at = got.get((stream, seq))
            if at is None:
                missing += 1
            else:
                delays.append((at - sent[(stream % jobs, seq)]) / 1e6)
    return delays, missing


def report(n: int, grown: dict[str, int], held: int, before: Probe, during: Probe) -> None:
    print(f"\n== {n} streams open ==")
    for kind, delta in sorted(grown.items()):
        print(f"  {kind:<10} USS growth {delta / 1e6:8.1f} MB = {delta / n / 1024:6.2f} KB/stream")
    api_kb = grown.get("Api", 0) / n / 1024
    print(f"  Api replicas: {api_kb:.2f} KB/stream (target < {TARGET_KB_PER_STREAM:g})")
    print(f"  watch calls held by the shards: {held}")
    for what in ("get_p50", "get_p99", "submit_p50", "submit_p99"):
        was, now = getattr(before, what), getattr(during, what)
        print(f"  {what:<10} before {was:7.1f} ms, with streams {now:7.1f} ms: x{now / was:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000, help="streams to open")
    parser.add_argument("--jobs", type=int, default=10, help="jobs the streams follow")
    parser.add_argument("--appends", type=int, default=10, help="append rounds (M)")
    parser.add_argument("--quick", action="store_true", help="1,000 streams, 3 appends")
    parser.add_argument("--http1", action="store_true", help="a connection per stream")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.appends = 1000, 3
    os.chdir(HERE.parent)  # Ray puts the driver's working directory on its workers' path
    client = build_client()
    with tempfile.TemporaryDirectory(prefix="aos-bench-fanout-") as tmp:
        service, key = start(Path(tmp))
        try:
            run(service.url, key, client, args, Path(tmp) / "received.txt")
        finally:
            bootstrap.stop(service)
            ray.shutdown()


def run(url: str, key: str, client: Path, args: argparse.Namespace, out: Path) -> None:
    n, jobs = args.streams, [f"fan-{i}" for i in range(args.jobs)]
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        for job_id in jobs:
            http.post("/api/v1/jobs", json={"jobId": job_id}).raise_for_status()
        probe(http, jobs[0])  # warm-up
        before, mem_before, held_before = probe(http, jobs[0]), memory(), watches()
        began, spent = time.monotonic(), children_cpu_s()
        proc = open_streams(client, url, key, jobs, n, http1=args.http1, out=out)
        print(f"{n} streams over {len(jobs)} jobs open in {time.monotonic() - began:.1f} s")
        time.sleep(3)  # the replicas settle (their last frames written)
        mem_held, held = memory(), watches() - held_before
        during = probe(http, jobs[0])
        grown = {kind: mem_held.get(kind, 0) - mem_before.get(kind, 0) for kind in mem_held}
        report(n, grown, held, before, during)
        sent = fan_out(http, jobs, args.appends)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    print(f"  client: {proc.stdout.read().strip()}")
    proc.wait(timeout=120)
    busy_s, lasted_s = children_cpu_s() - spent, time.monotonic() - began
    print(f"  the Go client used {busy_s:.1f} s of CPU in {lasted_s:.0f} s (not the bottleneck)")
    delays, missing = latencies(out, sent, len(jobs), n, args.appends)
    print(f"\n== fan-out: {args.appends} appends x {len(jobs)} jobs, {len(delays)} deliveries ==")
    p50, p99 = quantile(delays, 0.5), quantile(delays, 0.99)
    print(f"  append -> stream: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(delays):.0f} ms,")
    mean = statistics.fmean(delays)
    print(f"  mean {mean:.0f} ms (target p99 < {TARGET_P99_MS:g}); missing {missing}")
    deadline = time.monotonic() + 60
    while (left := watches() - held_before) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"\n== closed: watch calls left on the shards: {left} ==")


if __name__ == "__main__":
    main()
