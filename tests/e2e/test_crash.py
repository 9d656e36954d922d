"""`kill -9` of the whole service (driver, Ray, actors, replicas): acknowledged writes survive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.receiver import Received, running_receiver
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": "Bearer crash-admin"}


def _start(data: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {
        "AOS_STORAGE_URL": f"sqlite:///{data}/aos.db",
        "AOS_HTTP_PORT": str(port),
        "AOS_ADMIN_KEY": "crash-admin",
        "AOS_NUM_SHARDS": "2",
        "AOS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        # HAProxy's admin ports and Serve's fallback proxy: free ones, whatever runs here.
        "AOS_HAPROXY_STATS_PORT": str(free_port()),
        "AOS_HAPROXY_METRICS_PORT": str(free_port()),
        "AOS_FALLBACK_PROXY_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Async Output Service ready at" in line:
            return proc
        if time.monotonic() > deadline:
            break
    _kill_all(proc)
    raise AssertionError("aos serve did not become ready")


def _kill_all(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the service's whole session: the driver and every Ray process it started."""
    pids = subprocess.run(
        ["ps", "-e", "-o", "pid=,sess="], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for row in pids:
        parts = row.split()
        if len(parts) == 2 and int(parts[1]) == proc.pid:
            try:
                os.kill(int(parts[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(timeout=30)


def test_acknowledged_append_survives_kill_9_of_the_whole_service(tmp_path):
    port = free_port()
    proc = _start(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
            params = {"namespace": "default"}
            assert http.post("/api/v1/jobs", params=params, json={"jobId": "j"}).status_code == 201
            acked = []
            for i in range(50):
                r = http.post("/api/v1/jobs/j/output", params=params, content=f"{i},")
                assert r.status_code == 200
                acked.append(f"{i},")
    finally:
        _kill_all(proc)

    proc = _start(tmp_path, port)
    try:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
            params = {"namespace": "default"}
            out = http.get("/api/v1/jobs/j/output", params=params).json()
            assert out["output"] == "".join(acked)
            status = http.get("/api/v1/jobs/j/status", params=params).json()
            assert status["status"] == "Running" and status["outputSeq"] == 50
            more = http.post("/api/v1/jobs/j/output", params=params, content="50,")
            assert more.json()["seq"] == 51
    finally:
        _kill_all(proc)


def test_pending_webhook_deliveries_are_sent_after_a_kill_9_and_restart(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    params = {"namespace": "default"}
    with running_receiver() as receiver:
        receiver.answers["/hook"] = lambda _: 503
        proc = _start(tmp_path, port)
        try:
            with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as http:
                retry = {"initialDelayMs": 200, "maxDelayMs": 500, "maxAttempts": 50}
                hooks = {"url": receiver.url + "/hook", "retry": retry}
                assert http.patch("/api/v1/namespaces/default", json={"webhooks": hooks}).is_success
                for i in range(5):
                    http.post("/api/v1/jobs", params=params, json={"jobId": f"j{i}"})
                    http.post(f"/api/v1/jobs/j{i}/cancel", params=params)
                wait_until(
                    lambda: len(_ids(receiver.at("/hook"))) >= 5,
                    timeout_s=30,
                    what="every message to be attempted",
                )
        finally:
            _kill_all(proc)
        before = _ids(receiver.at("/hook"))
        receiver.answers["/hook"] = lambda _: 200
        proc = _start(tmp_path, port)
        try:
            # A 200 answer means a send after the restart: before the kill every one got 503.
            wait_until(
                lambda: _ids(r for r in receiver.at("/hook") if r.answered == 200) >= before,
                timeout_s=60,
                what="every pending message to be delivered after the restart",
            )
            delivered = [r for r in receiver.at("/hook") if r.answered == 200]
            ids = _ids(receiver.at("/hook"))
            assert ids == before and len(ids) == 5  # none lost, none invented
            assert {r.json["data"]["jobId"] for r in delivered} == {f"j{i}" for i in range(5)}
        finally:
            _kill_all(proc)


def _ids(requests: Iterable[Received]) -> set[str]:
    return {r.headers["webhook-id"] for r in requests}
