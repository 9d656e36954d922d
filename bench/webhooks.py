"""Webhook delivery: the dispatcher deployment against a bare httpx loop, in the same run.

    .venv/bin/python bench/webhooks.py [--quick]

Figures: deliveries/s through the WebhookDispatcher deployment (signed, SSRF-checked,
batched from a shard-side DispatcherClient) for 1 and 2 replicas; the same requests from
a bare httpx async loop (the baseline); end-to-end lag from commit to receipt through the
whole service under load. The last line is `webhooks: dispatcher N/s baseline M/s ratio R`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import ray
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/...`

from actors.commands import JobSpec
from actors.namespace_settings import NamespaceChanges, WebhookSettings
from actors.shard_client import ShardClient
from actors.webhooks.dispatcher import APP_NAME, WebhookDispatcher, dispatcher_handle
from actors.webhooks.dispatcher_client import DispatcherClient
from actors.webhooks.signing import headers, new_secret
from bench import receiver
from cluster import ray_connect
from storage.records import Delivery

#: Deliveries in flight, and connections to the one receiver, for both sides alike.
IN_FLIGHT = 512
CONNECTIONS = 8


def _delivery(url: str, n: int) -> Delivery:
    body = b'{"type":"job.completed","timestamp":"2026-01-01T00:00:00.000Z","data":{"n":%d}}' % n
    return Delivery(f"msg_{n}", "bench", f"j{n}", 0, "job.completed", url, body, time.time())


async def _bounded(count: int, send) -> float:
    """Run `send(i)` for i < count with IN_FLIGHT at once; return the rate per second."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            await send(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def baseline(url: str, count: int) -> float:
    """The same signed POSTs from a bare httpx loop: the ceiling for this machine."""
    secret = new_secret()
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=10) as http:

        async def send(i: int) -> None:
            d = _delivery(url, i)
            signed = headers(
                msg_id=d.delivery_id, timestamp=int(time.time()), body=d.payload, secrets=[secret]
            )
            response = await http.post(url, content=d.payload, headers=signed)
            assert response.status_code == 204

        return await _bounded(count, send)


async def through_dispatcher(url: str, count: int) -> float:
    client = DispatcherClient(dispatcher_handle)
    secrets = (new_secret(),)

    async def send(i: int) -> None:
        attempt = await client.send(_delivery(url, i), secrets, 10.0)
        assert attempt.status_code == 204, attempt

    return await _bounded(count, send)


def deploy_dispatcher(replicas: int) -> None:
    app = WebhookDispatcher.options(num_replicas=replicas, autoscaling_config=None).bind(
        allowed_networks="127.0.0.0/8", per_host_limit=CONNECTIONS
    )
    serve.run(app, name=APP_NAME, route_prefix=None)


async def end_to_end_lag(
    url: str, jobs: int, rate: float, serve_port: int
) -> tuple[float, float, float]:
    """Jobs completed through the shard actors; lag = receipt - the event's commit time.

    The service joins the Serve already running on `serve_port` (a running Serve keeps its
    port, and the service refuses another one).
    """
    from cluster import bootstrap
    from cluster.settings import Settings

    data = tempfile.mkdtemp(prefix="aos-bench-")
    settings = Settings(
        storage_url=f"sqlite:///{data}/aos.db",
        http_port=serve_port,
        admin_key="bench",
        num_shards=2,
        webhook_allowed_networks="127.0.0.0/8",
    )
    service = bootstrap.start(settings)
    namespace = "bench-hooks"
    shards = ShardClient(num_shards=2)
    hooks = NamespaceChanges(webhooks=WebhookSettings(url=url + "/lag"))
    await shards.create_namespace(namespace, hooks, actor="bench")

    async def one(i: int) -> None:
        await asyncio.sleep(i / rate)  # paced: lag at a steady rate, not behind a burst
        job_id = f"j{i}-{uuid.uuid4().hex[:6]}"
        await shards.submit(namespace, JobSpec(), job_id=job_id, actor="bench")
        await shards.cancel(namespace, job_id, actor="bench")

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    lags = await _collect_lags(url, jobs)
    elapsed = time.perf_counter() - started
    bootstrap.stop(service)
    return _pct(lags, 50), _pct(lags, 99), jobs / elapsed


async def _collect_lags(url: str, expected: int) -> list[float]:
    lags: list[float] = []
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as http:
        while len(lags) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            lags += (await http.get(url + "/stats")).json()["lags"]
    return lags


def _pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _reset(url: str) -> None:
    async with httpx.AsyncClient() as http:
        await http.get(url + "/stats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under 60 s")
    args = parser.parse_args()
    count = 600 if args.quick else 6000
    replica_counts = (1,) if args.quick else (1, 2)
    lag_jobs, lag_rate = (120, 30.0) if args.quick else (1200, 40.0)

    process, url = receiver.start()
    ray_connect.connect(None, log_to_driver=False)  # a private cluster, never another's
    serve_port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    try:
        asyncio.run(baseline(url, min(count, 1000)))  # warm-up
        base_runs, rates = [], {}
        for replicas in replica_counts:
            deploy_dispatcher(replicas)
            asyncio.run(through_dispatcher(url, min(count, 1000)))  # warm-up
            runs = []
            for _ in range(2):  # alternate with the baseline: noise hits both alike
                base_runs.append(asyncio.run(baseline(url, count)))
                runs.append(asyncio.run(through_dispatcher(url, count)))
            rates[replicas] = max(runs)
            print(
                f"dispatcher with {replicas} replica(s): {rates[replicas]:.0f} deliveries/s"
                f" (runs {', '.join(f'{r:.0f}' for r in runs)})"
            )
        base = max(base_runs)
        print(
            f"bare httpx loop (baseline): {base:.0f} requests/s "
            f"(runs {', '.join(f'{r:.0f}' for r in base_runs)})"
        )
        asyncio.run(_reset(url))
        p50, p99, rate = asyncio.run(end_to_end_lag(url, lag_jobs, lag_rate, serve_port))
        print(
            f"end-to-end lag, commit to receipt, {lag_jobs} jobs at {rate:.0f} jobs/s "
            f"(submit+cancel through the shards): p50 {p50:.1f} ms p99 {p99:.1f} ms"
        )
        best = rates[1]
        print(f"webhooks: dispatcher {best:.0f}/s baseline {base:.0f}/s ratio {best / base:.2f}")
    finally:
        serve.shutdown()
        ray.shutdown()
        process.terminate()


if __name__ == "__main__":
    main()
