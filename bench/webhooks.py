"""Webhook delivery: the dispatcher against a bare aiohttp loop, and the service end to end.

    .venv/bin/python bench/webhooks.py [--quick] [--only dispatcher|e2e] [--jobs N]

Figures, in the same run: deliveries/s through the WebhookDispatcher deployment (signed,
SSRF-checked, batched from a shard-side DispatcherClient) for 1 and 2 replicas; the same
signed requests from a bare aiohttp loop with the same connections and requests in flight
(the baseline); the whole service end to end (`bench/webhook_e2e.py`): deliveries/s
received for 5,000 jobs batch-submitted with `job.created` webhooks, lag p50/p99, every
delivery checked. The last line is `webhooks: dispatcher N/s baseline M/s ratio R`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# `python bench/webhooks.py` puts bench/ first on the path, where bench/http.py shadows the
# standard library's `http` (aiohttp, httpx and uvicorn import it): take bench/ off, put
# the repository on.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from actors.webhooks.dispatcher import APP_NAME, WebhookDispatcher, dispatcher_handle  # noqa: E402
from actors.webhooks.dispatcher_client import DispatcherClient  # noqa: E402
from actors.webhooks.signing import headers, new_secret  # noqa: E402
from bench import receiver  # noqa: E402
from bench.webhook_e2e import EndToEnd, end_to_end, free_port  # noqa: E402
from cluster import ray_connect  # noqa: E402
from storage.records import Delivery  # noqa: E402

TARGET_DISPATCHER_S = 3000
TARGET_RATIO = 0.5
TARGET_E2E_S = 2000
E2E_JOBS = 5000

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
    """The same signed POSTs from a bare aiohttp loop, with the same connections and
    requests in flight: the ceiling for this machine."""
    secret = new_secret()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def send(i: int) -> None:
            d = _delivery(url, i)
            signed = headers(
                msg_id=d.delivery_id, timestamp=int(time.time()), body=d.payload, secrets=[secret]
            )
            async with http.post(url, data=d.payload, headers=signed) as response:
                await response.read()
                assert response.status == 204

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


def dispatcher_figures(
    url: str, count: int, replica_counts: tuple[int, ...]
) -> tuple[dict[int, float], float]:
    """Deliveries/s per replica count, and the baseline: each dispatcher run alternates
    with a baseline run, so noise hits both alike; the better of each counts."""
    asyncio.run(baseline(url, min(count, 1000)))  # warm-up
    base_runs: list[float] = []
    rates: dict[int, float] = {}
    for replicas in replica_counts:
        deploy_dispatcher(replicas)
        asyncio.run(through_dispatcher(url, min(count, 1000)))  # warm-up
        runs = []
        for _ in range(2):
            base_runs.append(asyncio.run(baseline(url, count)))
            runs.append(asyncio.run(through_dispatcher(url, count)))
        rates[replicas] = max(runs)
        print(
            f"dispatcher with {replicas} replica(s): {rates[replicas]:.0f} deliveries/s"
            f" (runs {', '.join(f'{r:.0f}' for r in runs)})",
            flush=True,
        )
    base = max(base_runs)
    print(
        f"bare aiohttp loop (baseline): {base:.0f} requests/s"
        f" (runs {', '.join(f'{r:.0f}' for r in base_runs)})",
        flush=True,
    )
    serve.delete(APP_NAME)
    return rates, base


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--only", choices=("dispatcher", "e2e"), help="one part only")
    parser.add_argument("--jobs", type=int, default=E2E_JOBS, help="end-to-end jobs (5000)")
    args = parser.parse_args()
    count = 600 if args.quick else 6000
    replica_counts = (1,) if args.quick else (1, 2)
    os.chdir(ROOT)  # Ray puts the driver's working directory on its workers' path

    process, url = receiver.start()
    ray_connect.connect(None, log_to_driver=False)  # a private cluster, never another's
    serve_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    rates: dict[int, float] = {}
    base = 0.0
    e2e: EndToEnd | None = None
    try:
        if args.only != "e2e":
            rates, base = dispatcher_figures(url, count, replica_counts)
        if args.only != "dispatcher":
            e2e = end_to_end(url, serve_port, args.jobs)
            print(e2e, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        process.terminate()
    if e2e is not None:
        ok = e2e.per_s >= TARGET_E2E_S and not e2e.problems
        goal = f">= {TARGET_E2E_S}/s, every delivery signed, none lost"
        print(f"end to end: target {goal}: {met(ok)}")
    if rates:
        best = rates[1]
        ok = best >= TARGET_DISPATCHER_S and best / base >= TARGET_RATIO
        goal = f">= {TARGET_DISPATCHER_S}/s with one replica, ratio >= {TARGET_RATIO}"
        print(f"dispatcher: target {goal}: {met(ok)}")
        print(f"webhooks: dispatcher {best:.0f}/s baseline {base:.0f}/s ratio {best / base:.2f}")


if __name__ == "__main__":
    main()
