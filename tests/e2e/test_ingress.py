"""The default ingress is Serve's HAProxy: it carries minutes-long streams and long-polls, and
nothing of it listens where it should not.

The held stream and long-polls began when the session's service started (tests/e2e/soak.py);
this file runs late in the suite, so waiting for `SOAK_S` usually costs nothing.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import time

import httpx
import pytest
from ray import serve

from tests.e2e.listening import listeners
from tests.e2e.soak import SOAK_S

pytestmark = pytest.mark.e2e


def test_haproxy_serves_the_port_and_its_stats_and_metrics_listen_on_loopback_only(
    service, settings
):
    assert listeners(settings.http_port) == [("127.0.0.1", "haproxy")]
    for port, path in (
        (settings.haproxy_stats_port, "/stats"),
        (settings.haproxy_metrics_port, "/metrics"),
    ):
        assert listeners(port) == [("127.0.0.1", "haproxy")]
        assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 200
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}


def test_a_stream_and_long_polls_held_for_minutes_get_heartbeats_waits_and_the_change(
    held, settings
):
    remaining = SOAK_S - (time.monotonic() - held.started)
    if remaining > 0:
        time.sleep(remaining)
    held.stop.set()
    with httpx.Client(base_url=held.url, headers=held.headers(), timeout=30) as http:
        assert http.post(f"/api/v1/jobs/{held.job_id}/output", content=b"bye").status_code == 200
        http.post(f"/api/v1/jobs/{held.job_id}/complete", json={"status": "Succeeded"})
    for thread in held.threads:
        thread.join(settings.max_wait_s + 30)
    assert not held.errors, held.errors
    # Other tests kill shards: a stream or poll they interrupt ends saying so, and is reopened.
    assert set(held.restarts + held.interrupted) <= {"shard_unavailable"}, (
        held.restarts,
        held.interrupted,
    )

    # The stream lasted SOAK_S, with a heartbeat at least every few heartbeat periods.
    times = [held.started] + [at for at, _ in held.frames]
    longest_gap = max(b - a for a, b in itertools.pairwise(times))
    assert times[-1] - held.started >= SOAK_S
    restarting_s = 15 if held.restarts else 0  # a killed shard restarts within seconds
    assert longest_gap < 3 * settings.heartbeat_s + 1 + restarting_s, longest_gap
    beats = [frame for _, frame in held.frames if "comment" in frame]
    assert len(beats) >= SOAK_S / settings.heartbeat_s / 2
    events = [frame for _, frame in held.frames if "event" in frame]
    assert [e["event"] for e in events[-3:]] == ["output", "status", "end"]
    assert events[-3]["data"]["data"] == "bye"

    # Each long-poll waited the maximum and found nothing; the last one got the change. A
    # shard restart ends the poll it interrupts with 503 (asked again, not counted here).
    waited, last = held.polls[:-1], held.polls[-1]
    assert len(waited) >= int(SOAK_S // settings.max_wait_s) - len(held.interrupted)
    assert all(code == 304 and seconds >= settings.max_wait_s - 1 for code, seconds in waited)
    assert last[0] == 200 and last[1] < settings.max_wait_s


def test_serves_own_backpressure_503_gets_the_apis_json_error_and_retry_after(service):
    """Serve sheds past a deployment's max_ongoing + max_queued requests with a plain 503;
    behind HAProxy it becomes the API's overload answer (cluster/ingress.py). A probe app
    with a queue of one shows it, as the `Api` deployment would at 5,000 + 2,000."""

    @serve.deployment(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1, max_queued_requests=1
    )
    class Slow:
        async def __call__(self, request: object) -> str:
            await asyncio.sleep(2)
            return "done"

    serve.run(Slow.bind(), name="overload-probe", route_prefix="/overload-probe")
    try:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
                return await asyncio.gather(*(http.get("/overload-probe") for _ in range(6)))

        answers = asyncio.run(burst())
    finally:
        serve.delete("overload-probe")
    shed = [a for a in answers if a.status_code == 503]
    assert shed and len(shed) + sum(a.status_code == 200 for a in answers) == 6, answers
    for answer in shed:
        assert answer.headers["Retry-After"] in {"1", "2", "3"}  # spread per answer
        assert answer.json()["error"]["code"] == "overloaded"


def test_a_stream_goes_to_its_replicas_stream_server_and_other_requests_to_serve(tenant, settings):
    """HAProxy's `-streams` backend (cluster/ingress.py `stream_backends`) holds the stream
    open: its servers are the replicas' stream servers, up; a GET of the job is not its."""
    stats = f"http://127.0.0.1:{settings.haproxy_stats_port}/stats;csv"

    def stream_servers() -> list[dict[str, str]]:
        """HAProxy's stats of the replicas' stream servers (the `-streams` backend's, not
        its backup, Serve's proxy)."""
        table = csv.DictReader(io.StringIO(httpx.get(stats, timeout=10).text.lstrip("# ")))
        return [
            row
            for row in table
            if row["pxname"].endswith("-streams")
            and row["svname"] not in ("FRONTEND", "BACKEND")
            and row["bck"] == "0"
        ]

    deadline = time.monotonic() + 60
    while not any(row["status"] == "UP" for row in stream_servers()):
        assert time.monotonic() < deadline, stream_servers()
        time.sleep(0.5)
    assert all(row["svname"].startswith("SERVE_REPLICA") for row in stream_servers())
    http = tenant.http
    assert http.post("/api/v1/jobs", json={"jobId": "routed"}).status_code == 201
    before = sum(int(row["stot"]) for row in stream_servers())
    with http.stream("GET", "/api/v1/jobs/routed/stream") as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        assert sum(int(row["scur"]) for row in stream_servers()) >= 1
        assert http.get("/api/v1/jobs/routed").status_code == 200
        assert http.post("/api/v1/jobs/routed/output", content=b"hi").status_code == 200
        assert any('"data":"hi"' in line for line in itertools.islice(lines, 20))
    after = sum(int(row["stot"]) for row in stream_servers())
    assert after == before + 1  # the stream went to a replica's stream server; the GET not
