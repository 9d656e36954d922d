"""The metrics benchmark: what the request metrics cost on a hot route, as a ratio.

One command: `.venv/bin/python bench/metrics.py [--quick]` (see bench/README.md). The
service runs twice over the same shards and store, the `Api` replicas built with the
request metrics (the deployment as shipped) and without them (`create_app(...,
request_metrics=False)`), redeployed in turn, `--rounds` times each; wrk measures the same
routes on each. The figure is the rate with metrics over the rate without, from the same
run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/http.py shadows the standard library's `http`: take bench/ off, put the repository on.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from ray import serve  # noqa: E402

from bench.http import (  # noqa: E402
    ADMIN_KEY,
    HOST,
    NUM_SHARDS,
    Load,
    Wrk,
    create_jobs,
    create_key,
    run_wrk,
    section,
    service_settings,
)
from cluster import bootstrap, ray_connect  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from serve_app.app import create_app  # noqa: E402
from serve_app.deployment import OPTIONS as API_OPTIONS  # noqa: E402
from serve_app.deployment import Api  # noqa: E402
from serve_app.request_metrics import RequestMetrics  # noqa: E402

WARMUP_S = 2
#: How Ray titles an `Api` replica's process (its /proc cmdline).
REPLICA_TITLE = b"ray::ServeReplica:aos:Api"
CONNECTIONS = 32
#: The cost we accept: the rate with metrics at least this share of the rate without.
TARGET_RATIO = 0.95


class BareApi(Api.func_or_class):  # type: ignore[misc,name-defined]
    """The `Api` replica without the request metrics: the baseline."""

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._deps, request_metrics=False)


def deploy(settings: Settings, *, with_metrics: bool) -> None:
    """The `aos` application, its `Api` built with or without request metrics, once ready."""
    cls = Api.func_or_class if with_metrics else BareApi
    deployment = serve.deployment(name="Api", **API_OPTIONS)(cls)
    app = deployment.options(num_replicas=settings.num_replicas).bind(
        bootstrap.api_config(settings, ADMIN_KEY), settings.shard_options()
    )
    serve.run(app, name=bootstrap.APP_NAME, route_prefix="/")


@ray.remote(num_cpus=0)
def middleware_cost_us(calls: int, repeats: int) -> float:
    """Microseconds the request metrics add to a request, in a Ray worker (where Ray's
    metrics record for real): the middleware around an app that answers at once, less that
    app alone; the best of `repeats` runs of `calls` each way."""
    return asyncio.run(_middleware_cost_us(calls, repeats))


class _Route:
    path = "/api/v1/jobs/{job_id}/status"


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers at once, leaving its route where FastAPI does."""
    scope["route"] = _Route
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


async def _middleware_cost_us(calls: int, repeats: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def per_call_us(app: Any) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            scope = {"type": "http", "method": "GET", "path": "/", "query_string": b""}
            await app(scope, receive, send)
        return (time.perf_counter() - started) / calls * 1e6

    measured = RequestMetrics(_answer)
    best = {"with": math.inf, "without": math.inf}
    for _ in range(repeats):
        best["with"] = min(best["with"], await per_call_us(measured))
        best["without"] = min(best["without"], await per_call_us(_answer))
    return best["with"] - best["without"]


def replica_cpu_s() -> float:
    """CPU seconds the `Api` replicas of this run's Ray (this process's descendants) have
    used so far, from /proc: unlike a rate, CPU per request hardly moves with the load
    others put on the machine."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    ours, total_ticks = {os.getpid()}, 0
    while more := {pid for pid, parent in parents.items() if parent in ours} - ours:
        ours |= more
    for pid in ours:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if command.startswith(REPLICA_TITLE):
            total_ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return total_ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Rates:
    """wrk runs of one variant, added up, with the replicas' CPU seconds meanwhile."""

    requests: int = 0
    duration_s: float = 0.0
    cpu_s: float = 0.0
    errors: str = ""

    def add(self, wrk: Wrk, cpu_s: float) -> None:
        self.requests += wrk.requests
        self.duration_s += wrk.duration_s
        self.cpu_s += cpu_s
        self.errors += wrk.errors

    @property
    def per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def cpu_us(self) -> float:
        """Replica CPU microseconds a request."""
        return self.cpu_s / self.requests * 1e6


def measure(settings: Settings, loads: dict[str, Load], rounds: int, duration_s: int) -> Any:
    """{route: {variant: Rates}}, the variants alternating round by round."""
    rates: dict[str, dict[str, Rates]] = {name: {"on": Rates(), "off": Rates()} for name in loads}
    for round_no in range(rounds):
        for variant in ("on", "off") if round_no % 2 == 0 else ("off", "on"):
            started = time.perf_counter()
            deploy(settings, with_metrics=variant == "on")
            took = time.perf_counter() - started
            print(f"  round {round_no + 1}: metrics {variant} (deployed in {took:.0f} s)")
            for name, load in loads.items():
                url = f"http://{HOST}:{settings.http_port}"
                run_wrk(url, load, connections=CONNECTIONS, duration_s=WARMUP_S)
                cpu_before = replica_cpu_s()
                wrk = run_wrk(url, load, connections=CONNECTIONS, duration_s=duration_s)
                cpu_s = replica_cpu_s() - cpu_before
                rates[name][variant].add(wrk, cpu_s)
                cpu_us = cpu_s / wrk.requests * 1e6
                print(f"    {name}: {wrk}, replicas {cpu_us:.0f} us CPU a request{wrk.errors}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s runs, 1 round each")
    parser.add_argument("--rounds", type=int, help="runs of each variant (default 3, quick 1)")
    parser.add_argument("--duration", type=int, help="seconds a wrk run (default 10, quick 5)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/metrics.py needs wrk, the HTTP load generator: apt-get install wrk")
    rounds = args.rounds or (1 if args.quick else 3)
    duration_s = args.duration or (5 if args.quick else 10)
    os.chdir(ROOT)  # Ray puts the driver's working directory on its workers' path
    with tempfile.TemporaryDirectory(prefix="aos-bench-metrics-") as tmp:
        section("starting Ray and the service")
        ray_connect.connect(None, log_to_driver=False)
        settings = service_settings(tmp, ADMIN_KEY, num_shards=NUM_SHARDS)
        service = bootstrap.start(settings)
        try:
            key = create_key(service.url)
            job_ids = create_jobs(service.url, key, uuid.uuid4().hex[:8])
            auth = (("Authorization", f"Bearer {key}"),)
            loads = {
                "status": Load(
                    "GET", tuple(f"/api/v1/jobs/{j}/status" for j in job_ids), None, auth
                ),
                "healthz": Load("GET", ("/healthz",)),
            }
            section(f"wrk -c{CONNECTIONS} -d{duration_s}s, metrics on and off, {rounds} rounds")
            rates = measure(settings, loads, rounds, duration_s)
            section("the middleware alone, in a Ray worker: the best of 7 x 20,000 requests")
            cost_us = ray.get(middleware_cost_us.remote(20_000, 7))
        finally:
            section("tearing down")
            try:
                bootstrap.stop(service)
            finally:
                ray.shutdown()
    section("summary (rate with request metrics / without, same run)")
    for name, variant in rates.items():
        on, off = variant["on"], variant["off"]
        ratio, cpu_ratio = on.per_s / off.per_s, on.cpu_us / off.cpu_us
        verdict = "met" if 1 / cpu_ratio >= TARGET_RATIO else "MISSED"
        print(
            f"metrics {name}: {on.per_s:.0f} req/s with, {off.per_s:.0f} without, ratio"
            f" {ratio:.3f}; replica CPU a request {on.cpu_us:.0f} us with, {off.cpu_us:.0f} us"
            f" without, ratio {cpu_ratio:.3f} (target <= {1 / TARGET_RATIO:.3f} {verdict})"
            f"{on.errors}{off.errors}"
        )
    status_on = rates["status"]["on"].per_s
    print(
        f"metrics middleware: {cost_us:.1f} us a request in a Ray worker; at the status rate"
        f" with metrics ({status_on:.0f} req/s) {cost_us * status_on / 1e4:.2f}% of one core"
    )


if __name__ == "__main__":
    main()
