"""`kill -9` of the whole service (driver, Ray, actors, replicas): acknowledged writes survive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": "Bearer crash-admin"}


def _start(data: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {
        "AOS_STORAGE_URL": f"sqlite:///{data}/aos.db",
        "AOS_HTTP_PORT": str(port),
        "AOS_ADMIN_KEY": "crash-admin",
        "AOS_NUM_SHARDS": "2",
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
