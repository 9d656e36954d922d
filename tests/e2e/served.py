"""`aos serve` as its own process (a private Ray cluster), started and killed by tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import free_port

ADMIN_KEY = "served-admin"


def start(storage_url: str, port: int, *, timeout_s: float = 120) -> subprocess.Popen[str]:
    """`aos serve` on `storage_url`, answering on `port` once it says it is ready; its
    admin key is `ADMIN_KEY`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {
        "AOS_STORAGE_URL": storage_url,
        "AOS_HTTP_PORT": str(port),
        "AOS_ADMIN_KEY": ADMIN_KEY,
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
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    said = []
    for line in proc.stdout:
        said.append(line)
        if "Async Output Service ready at" in line:
            return proc
        if time.monotonic() > deadline:
            break
    kill_all(proc)
    raise AssertionError("aos serve did not become ready:\n" + "".join(said[-30:]))


def kill_all(proc: subprocess.Popen[str]) -> None:
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
