"""The default ingress is Serve's HAProxy: it carries minutes-long streams and long-polls, and
nothing of it listens where it should not.

The held stream and long-polls began when the session's service started (tests/e2e/soak.py);
this file runs late in the suite, so waiting for `SOAK_S` usually costs nothing.
"""

from __future__ import annotations

import itertools
import time

import httpx
import pytest

from tests.e2e.listening import listeners
from tests.e2e.soak import SOAK_S
from tests.e2e.waiting import wait_until

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
        assert http.post(f"/api/v1/jobs/{held.job_id}/output", content=b"bye").status_code == 201
        http.post(f"/api/v1/jobs/{held.job_id}/complete", json={"status": "Succeeded"})
    for thread in held.threads:
        thread.join(settings.max_wait_s + 30)
    assert not held.errors, held.errors

    # The stream lasted SOAK_S, with a heartbeat at least every few heartbeat periods.
    times = [held.started] + [at for at, _ in held.frames]
    longest_gap = max(b - a for a, b in itertools.pairwise(times))
    assert times[-1] - held.started >= SOAK_S
    assert longest_gap < 3 * settings.heartbeat_s + 1, longest_gap
    beats = [frame for _, frame in held.frames if "comment" in frame]
    assert len(beats) >= SOAK_S / settings.heartbeat_s / 2
    events = [frame for _, frame in held.frames if "event" in frame]
    assert [e["event"] for e in events[-3:]] == ["output", "status", "end"]
    assert events[-3]["data"]["data"] == "bye"

    # Each long-poll waited the maximum and found nothing; the last one got the change.
    waited, last = held.polls[:-1], held.polls[-1]
    assert len(waited) >= int(SOAK_S // settings.max_wait_s)
    assert all(code == 304 and seconds >= settings.max_wait_s - 1 for code, seconds in waited)
    assert last[0] == 200 and last[1] < settings.max_wait_s


def backend_sessions(settings) -> int:
    """Requests HAProxy has open to the app's replicas now (its stats page, as CSV)."""
    csv = httpx.get(f"http://127.0.0.1:{settings.haproxy_stats_port}/stats;csv", timeout=10)
    header, *rows = csv.text.lstrip("# ").splitlines()
    columns = header.split(",")
    total = 0
    for row in rows:
        values = dict(zip(columns, row.split(","), strict=False))
        if values.get("svname") == "BACKEND" and values["pxname"] not in (
            "stats",
            "default_backend",
        ):
            total += int(values["scur"] or 0)
    return total


def test_clients_that_disconnect_mid_stream_leave_no_request_open_behind_haproxy(
    service, settings, tenant
):
    job = tenant.http.post("/api/v1/jobs", json={}).json()["jobId"]
    with httpx.Client(base_url=service.url, headers=tenant.http.headers, timeout=30) as http:
        streams = [http.stream("GET", f"/api/v1/jobs/{job}/stream") for _ in range(5)]
        for stream in streams:
            response = stream.__enter__()
            assert response.status_code == 200
            next(response.iter_lines())
        assert backend_sessions(settings) >= 5
        for stream in streams:
            stream.__exit__(None, None, None)
    wait_until(
        lambda: backend_sessions(settings) == 0,
        timeout_s=10,
        what="HAProxy to close the streams to the replica",
        state=lambda: {"open": backend_sessions(settings)},
    )
    assert tenant.http.get(f"/api/v1/jobs/{job}/status").status_code == 200
