"""`aos serve` as a person runs it: its own Ray cluster, its own port, a quiet terminal, SIGINT.

Each test runs the real command in a subprocess (in its own session, so that every process
it starts can be found and counted afterwards), on a machine where another Ray cluster runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.listening import listeners
from tests.e2e.waiting import wait_until

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
RAY_CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Ray address, so that nothing is named for Ray; HAProxy's
    stats and metrics and Serve's fallback proxy on free ports, whatever else runs here."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AOS_RAY_ADDRESS")}
    ports = {
        name: str(free_port())
        for name in (
            "AOS_HAPROXY_STATS_PORT",
            "AOS_HAPROXY_METRICS_PORT",
            "AOS_FALLBACK_PROXY_PORT",
        )
    }
    return {**env, **ports, **extra}


def session_processes(sid: int) -> list[int]:
    """PIDs still alive in session `sid` (zombies excluded)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(proc.name))
    return pids


def assert_all_gone(sid: int, timeout_s: float = 30.0) -> None:
    """Every process of session `sid` exits within `timeout_s`; else fail naming those left."""
    wait_until(
        lambda: not session_processes(sid),
        timeout_s=timeout_s,
        what=f"every process of session {sid} to exit",
        state=lambda: {"alive": session_processes(sid)},
        interval_s=0.5,
    )


class Serve:
    """One `aos serve` subprocess and what it printed."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.env = env or clean_env()
        self.process = subprocess.Popen(
            [str(BIN / "aos"), "serve", *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []

    def read_until(self, prefix: str, timeout_s: float = START_TIMEOUT_S) -> str:
        """Lines of stdout until one starts with `prefix`; that line."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"exited before {prefix!r}: {self.lines} {self.stderr()}")
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")
        raise AssertionError(f"no {prefix!r} within {timeout_s} s: {self.lines}")

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        """Exit code, the rest of stdout, and stderr, once the process exits."""
        out, err = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, out, err

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in session_processes(self.process.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def foreign_cluster(tmp_path: Path) -> Iterator[str]:
    """A `ray start` cluster on this machine, recorded in /tmp/ray/ray_current_cluster.

    Ray's default `ray.init()` joins exactly this one. Stopped by its session, never by
    process name (`ray stop` would end every Ray cluster on the machine, the suite's too).
    """
    port = free_port()
    before = RAY_CURRENT_CLUSTER.read_text() if RAY_CURRENT_CLUSTER.exists() else None
    command = ["start", "--head", f"--port={port}", "--include-dashboard=false", "--block"]
    head = subprocess.Popen(
        [str(BIN / "ray"), *command, "--num-cpus=1"],
        env=clean_env(),
        stdout=(tmp_path / "ray-start.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def recorded() -> bool:
        assert head.poll() is None, (tmp_path / "ray-start.log").read_text()
        return RAY_CURRENT_CLUSTER.exists() and f":{port}" in RAY_CURRENT_CLUSTER.read_text()

    try:
        wait_until(recorded, timeout_s=60, what="ray start to record its cluster", interval_s=0.5)
        yield RAY_CURRENT_CLUSTER.read_text().strip()
    finally:
        for pid in session_processes(head.pid):
            os.kill(pid, signal.SIGKILL)
        head.wait()
        if before is not None:
            RAY_CURRENT_CLUSTER.write_text(before)
        else:
            RAY_CURRENT_CLUSTER.unlink(missing_ok=True)


def client_connect(address: str | None) -> subprocess.CompletedProcess[str]:
    """`Client.connect(address)` in a fresh Python process; prints the number of shards."""
    code = (
        "from cluster.client import Client\n"
        f"print('shards', Client.connect({address!r}).shards.num_shards)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_runs_its_own_cluster_beside_another_and_stops_cleanly_on_sigterm(
    tmp_path, foreign_cluster
):
    port, metrics_port = free_port(), free_port()
    serve = Serve(
        tmp_path, "--port", str(port), "--shards", "2", "--metrics-port", str(metrics_port)
    )
    try:
        serve.read_until("aos: starting Ray")  # the port is reserved, nothing listens yet
        (tmp_path / "second").mkdir()
        second = Serve(tmp_path / "second", "--port", str(port))
        code, _, err = second.finish(timeout_s=60)
        assert code == 1 and f"port {port} on 127.0.0.1 is already in use" in err

        serve.read_until("Async Output Service ready at ")
        ray_line = serve.read_until("Ray address: ")
        address = ray_line.split()[2]
        assert address != foreign_cluster
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        # Prometheus metrics where it says, on the port asked for, ours among Ray's.
        metrics_url = serve.read_until("Metrics (Prometheus").split()[-1]
        assert metrics_url.endswith(f":{metrics_port}/metrics"), metrics_url
        wait_until(
            lambda: 'route="/healthz"' in httpx.get(metrics_url, timeout=10).text,
            timeout_s=60,
            what="the /healthz request in ray_aos_http_requests_total",
            interval_s=1,
        )
        # HAProxy by default; its stats and metrics on loopback only.
        assert listeners(port) == [("127.0.0.1", "haproxy")]
        for name in ("AOS_HAPROXY_STATS_PORT", "AOS_HAPROXY_METRICS_PORT"):
            assert listeners(int(serve.env[name])) == [("127.0.0.1", "haproxy")]

        # A quiet terminal: our progress lines, the ready line, the key, the address.
        assert all(
            line.startswith(
                ("aos: ", "Async Output Service ready", "Admin key", "Ray address", "Metrics")
            )
            for line in serve.lines
        ), serve.lines
        assert sum(map(len, serve.lines)) < 1200 and "\x1b[" not in "".join(serve.lines)
        assert "Application 'aos' is ready" in (tmp_path / "aos-data" / "aos.log").read_text()

        # Python clients join only the cluster they are told, never a guess.
        guessed = client_connect(None)
        assert guessed.returncode != 0
        assert "Client.connect needs the service's Ray address" in guessed.stderr
        told = client_connect(address)
        assert told.stdout.strip() == "shards 2", told.stderr[-2000:]

        # SIGTERM (what Kubernetes and systemd send) stops as cleanly as SIGINT; Ray's
        # own SIGTERM handler would abort the process and leave its actors running.
        serve.process.send_signal(signal.SIGTERM)
        code, out, err = serve.finish(timeout_s=90)
        assert code == 0, err
        assert out.splitlines()[-1] == "Async Output Service stopped"
        assert_all_gone(serve.process.pid)
    finally:
        serve.kill()


THEIR_APP = """
from ray import serve
from cluster import ray_connect

ray_connect.connect({address!r})
serve.start(http_options={{"host": "127.0.0.1", "port": {port}}})

@serve.deployment(ray_actor_options={{"num_cpus": 0}})
def theirs(request):
    return "theirs"

serve.run(theirs.bind(), name="theirs", route_prefix="/theirs")
"""


def test_serve_joining_a_cluster_uses_the_serve_it_found_and_leaves_it_running(
    tmp_path, foreign_cluster
):
    their_port = free_port()
    deployed = subprocess.run(
        [sys.executable, "-c", THEIR_APP.format(address=foreign_cluster, port=their_port)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    theirs = f"http://127.0.0.1:{their_port}"
    assert httpx.get(f"{theirs}/theirs").text == "theirs"

    # A running Serve keeps its own port: asking for another one is an error, said at once.
    elsewhere = Serve(tmp_path, "--address", foreign_cluster, "--port", str(free_port()))
    code, out, err = elsewhere.finish(timeout_s=START_TIMEOUT_S)
    assert code == 1, out + err
    assert f"Serve already runs in this Ray cluster on 127.0.0.1:{their_port}" in err

    # On its port, the service runs beside their app; stopping it removes only what it added.
    serve = Serve(tmp_path, "--address", foreign_cluster, "--port", str(their_port))
    try:
        serve.read_until("Async Output Service ready at ")
        assert httpx.get(f"{theirs}/healthz").json() == {"status": "ok"}
        serve.process.send_signal(signal.SIGINT)
        code, _, err = serve.finish(timeout_s=90)
        assert code == 0, err
        assert httpx.get(f"{theirs}/theirs").text == "theirs"
        assert httpx.get(f"{theirs}/healthz").status_code == 404
    finally:
        serve.kill()


def test_serve_gives_up_on_an_unreachable_ray_address_in_bounded_time(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    serve = Serve(
        tmp_path, "--address", dead, "--port", str(free_port()),
        env=clean_env(AOS_RAY_CONNECT_TIMEOUT_S="2"),
    )  # fmt: skip
    try:
        code, _, err = serve.finish(timeout_s=60)
        assert code == 1
        assert f"no Ray cluster answers at {dead}" in err
        assert time.monotonic() - began < 30
    finally:
        serve.kill()


def test_sigint_while_starting_stops_everything_it_started(tmp_path):
    serve = Serve(tmp_path, "--port", str(free_port()), "--shards", "2")
    try:
        serve.read_until("aos: starting Serve")  # Ray's private cluster is up
        serve.process.send_signal(signal.SIGINT)
        code, _, err = serve.finish(timeout_s=60)
        assert code == 130
        assert "interrupted while starting" in err
        assert_all_gone(serve.process.pid)
    finally:
        serve.kill()


def test_a_taken_haproxy_port_is_refused_by_name_before_anything_starts(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        stats = taken.getsockname()[1]
        env = clean_env(AOS_HAPROXY_STATS_PORT=str(stats))
        code, out, err = Serve(tmp_path, "--port", str(free_port()), env=env).finish(timeout_s=60)
    assert code == 1, out + err
    assert f"port {stats} on 127.0.0.1 is already in use" in err
    assert "choose AOS_HAPROXY_STATS_PORT" in err
    assert "starting Ray" not in out


def test_a_taken_metrics_port_is_refused_by_name_before_anything_starts(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        metrics_port = taken.getsockname()[1]
        args = ("--port", str(free_port()), "--metrics-port", str(metrics_port))
        code, out, err = Serve(tmp_path, *args).finish(timeout_s=60)
    assert code == 1, out + err
    assert f"port {metrics_port} on 0.0.0.0 is already in use" in err
    assert "choose --metrics-port" in err
    assert "starting Ray" not in out


def test_aos_ingress_serve_switches_back_to_serves_own_proxy(tmp_path):
    port = free_port()
    serve = Serve(
        tmp_path, "--port", str(port), "--shards", "1", env=clean_env(AOS_INGRESS="serve")
    )
    try:
        serve.read_until("Async Output Service ready at ")
        assert listeners(port) == [("127.0.0.1", "ray::ProxyActor")]
        assert not any(
            name == "haproxy" for _, name in listeners(int(serve.env["AOS_HAPROXY_STATS_PORT"]))
        )
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        serve.process.send_signal(signal.SIGINT)
        code, _, err = serve.finish(timeout_s=90)
        assert code == 0, err
        assert_all_gone(serve.process.pid)
    finally:
        serve.kill()
