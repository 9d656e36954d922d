"""Node loss on a real three-node Ray cluster on loopback, while a producer appends.

One command: `.venv/bin/python bench/nodeloss.py` (or `make bench-nodeloss`; see
bench/README.md). It starts `ray start --head` and two `ray start --address` workers (each
its own ports, in its own session), `aos serve --address` on them (SQLite in a temp dir,
2 shards on the workers, the `Api` replica and the ingress on the head), a producer
appending with `?seq=` over HTTP, and SIGKILLs every process of the worker that holds the
producer's shard (its `ray start`, raylet and workers). Then it prints: the longest gap
between acknowledged appends (beside the longest before the kill, the baseline), the
acknowledged appends lost, the time until that shard served again on a live node, and what
the producer was answered meanwhile. It kills exactly the processes it started (their
sessions), never `ray stop`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# `python bench/nodeloss.py` puts bench/ first on the path, where bench/http.py shadows the
# standard library's `http` (httpx imports it): take bench/ off, put the repository on.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import httpx  # noqa: E402

from actors.routing import shard_for  # noqa: E402
from tests.e2e.appender import Appender  # noqa: E402

ADMIN_KEY = "nodeloss-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SHARD_RESOURCE = "aos_shard"
NUM_SHARDS = 2
TARGET_GAP_S = 60.0
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Started:
    """The sessions this run started, each killed whole at the end (or at the node loss)."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self, name: str) -> list[int]:
        """SIGKILL every process of `name`'s session; the PIDs killed."""
        proc = self.procs.pop(name)
        killed = kill_session(proc.pid)
        proc.wait(timeout=30)
        return killed

    def kill_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def kill_session(sid: int) -> list[int]:
    rows = subprocess.run(
        ["ps", "-e", "-o", "pid=,sess="], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    killed = []
    for row in rows:
        pid, sess = (int(part) for part in row.split())
        if sess == sid:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    return killed


#: On a loaded machine a node's agents took longer to start than Ray waits by default.
PATIENT = {"RAY_agent_register_timeout_ms": "120000", "RAY_raylet_start_wait_time_s": "120"}
#: The cluster's own auth token: every process of it, and each driver joining it, has it.
TOKEN = secrets.token_hex(32)


def ray_env(detect: dict[str, str]) -> dict[str, str]:
    """The environment of every process started: this repository's code on every node, and
    the cluster's token (Ray 2.60 turns token auth on for a new head; a `ray start
    --address` without the token is refused)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AOS_"))}
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    return env | detect | auth | PATIENT | {"PYTHONPATH": str(HERE.parent)}


def node_args(*, head: bool) -> list[str]:
    """A node's ports, each free: several raylets share this machine."""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    if head:
        ports["--ray-client-server-port"] = free_port()
    args = [f"{flag}={port}" for flag, port in ports.items()]
    args += ["--node-ip-address=127.0.0.1", "--min-worker-port=0", "--max-worker-port=0"]
    return [*args, "--disable-usage-stats"]


@contextmanager
def three_nodes(tmp: Path, detect: dict[str, str]) -> Iterator[tuple[Started, str, list[int]]]:
    """Head + two workers; yields (sessions, GCS address, each worker's node manager port)."""
    started = Started()
    gcs = f"127.0.0.1:{free_port()}"
    env = ray_env(detect)
    try:
        head = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs.rpartition(':')[2]}"]
        head += ["--num-cpus=1", "--include-dashboard=false", f"--temp-dir={tmp / 'ray'}"]
        started.start("head", [*head, *node_args(head=True)], env, tmp / "head.log")
        wait_for_port(gcs, 60)
        ports = []
        for name in ("worker-1", "worker-2"):
            ports.append(start_worker(started, name, gcs, tmp, env))
        yield started, gcs, ports
    finally:
        started.kill_all()


def start_worker(started: Started, name: str, gcs: str, tmp: Path, env: dict[str, str]) -> int:
    """A worker node that may hold shards; its node manager port. One at a time: two nodes
    starting together on one machine took the same raylet socket and log file names, and
    one raylet died on the bind. Tried again when it does not come up (on a loaded machine
    a raylet gave up waiting for its agent)."""
    for attempt in range(1, 4):
        args = node_args(head=False)
        worker = [str(BIN / "ray"), "start", "--block", f"--address={gcs}", "--num-cpus=0"]
        worker += [f"--resources={json.dumps({SHARD_RESOURCE: 1})}"]
        log = tmp / f"{name}-{attempt}.log"
        started.start(name, [*worker, *args], env, log)
        try:
            wait_for_line(started, name, log, "Ray runtime started")
            return int(args[0].partition("=")[2])
        except RuntimeError as exc:
            print(f"{name}: attempt {attempt} failed ({str(exc).splitlines()[-1]})", flush=True)
            started.kill(name)
    raise RuntimeError(f"{name} did not start; logs in {tmp}")


def wait_for_line(started: Started, name: str, log: Path, line: str) -> None:
    deadline = time.monotonic() + 120
    while line not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or started.procs[name].poll() is not None:
            raise RuntimeError(f"{name} did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.2)


def wait_for_port(address: str, timeout_s: float) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def node_ids(gcs: str) -> dict[int, str]:
    """Each alive node's node manager port -> its node id, asked by a short-lived driver."""
    code = (
        "import json, ray; from cluster import ray_connect;"
        f"ray_connect.connect({gcs!r}, log_to_driver=False);"
        "print('NODES', json.dumps({n['NodeManagerPort']: n['NodeID'] for n in ray.nodes()"
        " if n['Alive']}))"
    )
    env = ray_env({})
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("NODES ")), None)
    if line is None:
        raise RuntimeError("could not list the nodes:\n" + out.stderr[-2000:])
    return {int(port): node for port, node in json.loads(line.removeprefix("NODES ")).items()}


def serve(started: Started, gcs: str, tmp: Path, port: int) -> str:
    """`aos serve --address` on the cluster; its URL once it is ready."""
    env = ray_env({}) | {
        "RAY_ADDRESS": gcs,
        "AOS_STORAGE_URL": f"sqlite:///{tmp}/aos.db",
        "AOS_HTTP_PORT": str(port),
        "AOS_ADMIN_KEY": ADMIN_KEY,
        "AOS_NUM_SHARDS": str(NUM_SHARDS),
        "AOS_NUM_REPLICAS": "1",
        "AOS_SHARD_RESOURCE": SHARD_RESOURCE,
        "AOS_API_RESOURCE": "node:__internal_head__",
        "AOS_PROXY_LOCATION": "HeadOnly",
        "AOS_HAPROXY_STATS_PORT": str(free_port()),
        "AOS_HAPROXY_METRICS_PORT": str(free_port()),
        "AOS_FALLBACK_PROXY_PORT": str(free_port()),
    }
    log = tmp / "aos-serve.log"
    started.start("aos serve", [sys.executable, "-m", "cluster.cli", "serve"], env, log)
    deadline = time.monotonic() + 300
    while "Async Output Service ready at" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or started.procs["aos serve"].poll() is not None:
            raise RuntimeError("aos serve did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.5)
    return f"http://127.0.0.1:{port}"


def shards(http: httpx.Client) -> list[dict[str, Any]]:
    response = http.get("/api/v1/admin/shards")
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    detect = {}
    if args.detect_period_ms:
        detect = {
            "RAY_health_check_period_ms": str(args.detect_period_ms),
            "RAY_health_check_failure_threshold": str(args.detect_failures),
        }
    tmp = Path(tempfile.mkdtemp(prefix="aos-nodeloss-"))
    try:
        with three_nodes(tmp, detect) as (started, gcs, worker_ports):
            url = serve(started, gcs, tmp, free_port())
            return lose_a_node(started, gcs, url, worker_ports, args)
    finally:
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def lose_a_node(
    started: Started,
    gcs: str,
    url: str,
    worker_ports: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
        before = shards(http)
        ids = node_ids(gcs)
        workers = {ids[port]: f"worker-{i + 1}" for i, port in enumerate(worker_ports)}
        slot = 0
        victim = before[slot]["node"]
        namespace = next(f"ns{i}" for i in range(1000) if shard_for(f"ns{i}", NUM_SHARDS) == slot)
        http.post("/api/v1/namespaces", json={"name": namespace}).raise_for_status()
        params = {"namespace": namespace}
        http.post("/api/v1/jobs", params=params, json={"jobId": "j"}).raise_for_status()
        producer = Appender(url, ADMIN, namespace, "j").start()
        time.sleep(args.before_s)
        killed_at = time.monotonic()
        killed = started.kill(workers[victim])
        served_at, after = None, before[slot]
        while served_at is None and time.monotonic() - killed_at < 300:
            try:
                after = shards(http)[slot]
            except httpx.HTTPError:  # the listing itself is down: counted as not serving
                after = {"state": "unknown", "node": None}
            if after["state"] == "serving" and after["node"] not in (None, victim):
                served_at = time.monotonic()
            else:
                time.sleep(0.2)
        time.sleep(args.after_s)
        producer.finish()
        output = http.get("/api/v1/jobs/j/output/raw", params=params).text
    acked = [f"{seq}," for seq, _ in producer.acked]
    kept = set(output.split(",")[:-1])
    statuses: dict[str, int] = {}
    for answer in producer.answers:
        key = f"{answer.status} {answer.code or ''}".strip()
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "nodes": f"head + {len(worker_ports)} workers; shard {slot} on {workers[victim]}",
        "processes killed (SIGKILL)": len(killed),
        "appends acknowledged": len(acked),
        "acknowledged appends lost": sum(1 for a in acked if a[:-1] not in kept),
        "output exact (1..N, once each)": output == "".join(acked),
        "longest gap between acks, before the kill (baseline) s": round(
            _gap_before(producer, killed_at), 2
        ),
        "longest gap between acks, from the kill s": round(producer.longest_gap_s(killed_at), 2),
        "shard serving again after s": None
        if served_at is None
        else round(served_at - killed_at, 2),
        "epoch before -> after": f"{before[slot]['epoch']} -> {after['epoch']}",
        "answers by status": statuses,
        "slowest answer s": round(max(a.took_s for a in producer.answers), 2),
        "bad answers (not 2xx, not 503 + Retry-After)": len(producer.bad_answers()),
    }


def _gap_before(producer: Appender, killed_at: float) -> float:
    times = [at for _, at in producer.acked if at < killed_at]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before-s", type=float, default=5.0, help="appending before the kill")
    parser.add_argument("--after-s", type=float, default=5.0, help="appending once it serves")
    parser.add_argument(
        "--detect-period-ms",
        type=int,
        default=0,
        help="Ray's node health check period (default: Ray's, 3000 ms)",
    )
    parser.add_argument("--detect-failures", type=int, default=3, help="missed checks: dead")
    parser.add_argument("--keep", action="store_true", help="keep the logs' temp dir")
    args = parser.parse_args()
    started = time.monotonic()
    figures = run(args)
    figures["run s"] = round(time.monotonic() - started, 1)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    gap = figures["longest gap between acks, from the kill s"]
    ok = gap < TARGET_GAP_S and figures["acknowledged appends lost"] == 0
    print(f"target: gap < {TARGET_GAP_S:g} s and nothing lost: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
