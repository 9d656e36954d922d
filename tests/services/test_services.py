"""`make services` (.ci/services): starts each server once, prints its URL, stops only its own.

The first test checks the servers the suite itself runs on (the ones `make services`
started under .services/). The second starts a private pair in a temporary folder on free
ports, so start, restart, refusal and stop are exercised without touching the suite's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import IN_CI, POSTGRES_URL, free_port, need_server

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "services"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def mariadb_greeting(port: int) -> bytes:
    """The server version from the MySQL protocol's initial handshake (the server speaks first)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        packet = sock.recv(1024)
    assert packet[4] == 10, "protocol version 10 handshake"
    return packet[5 : packet.index(b"\0", 5)]


def pg_answers(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def pids(folder: Path) -> dict[str, str]:
    files = {
        "postgresql": folder / "postgresql" / "data" / "postmaster.pid",
        "mariadb": folder / "mariadb" / "mariadb.pid",
    }
    return {name: f.read_text().split()[0] for name, f in files.items() if f.exists()}


def alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


def need_installed() -> None:
    missing = [b for b in ("runuser", "mariadbd") if not shutil.which(b, path="/usr/sbin:/usr/bin")]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        missing.append("postgresql")
    if missing or os.geteuid() != 0:
        message = f"make services has not installed {missing} here, or this is not root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(f"SKIPPED LOUDLY: {message}")


@pytest.fixture
def private_services(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    need_installed()
    folder = tmp_path / "services"
    env = {
        "SERVICES_DIR": str(folder),
        "POSTGRESQL_PORT": str(free_port()),
        "MARIADB_PORT": str(free_port()),
    }
    yield env, folder
    run("stop", env=env)


def test_a_second_start_starts_nothing_and_prints_the_urls_the_suite_uses():
    need_server("127.0.0.1", 5432, "PostgreSQL (make services)")
    need_server("127.0.0.1", 3306, "MariaDB (make services)")
    before = pids(ROOT / ".services")
    again = run("start")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "postgresql postgresql://postgres@127.0.0.1:5432/test",
        "mariadb mysql://root@127.0.0.1:3306/test",
    ]
    assert "postgresql already running" in again.stderr
    assert "mariadb already running" in again.stderr
    assert pids(ROOT / ".services") == before
    assert pg_answers(POSTGRES_URL)
    assert b"MariaDB" in mariadb_greeting(3306)


def test_start_restart_and_stop_touch_only_their_own_servers(private_services):
    env, folder = private_services
    pg_port, maria_port = int(env["POSTGRESQL_PORT"]), int(env["MARIADB_PORT"])

    first = run("start", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"postgresql postgresql://postgres@127.0.0.1:{pg_port}/test",
        f"mariadb mysql://root@127.0.0.1:{maria_port}/test",
    ]
    assert pg_answers(f"postgresql://postgres@127.0.0.1:{pg_port}/test")
    assert b"MariaDB" in mariadb_greeting(maria_port)
    started = pids(folder)
    assert set(started) == {"postgresql", "mariadb"}

    second = run("start", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert pids(folder) == started

    # Killed servers leave PID files behind; the next start sees through them.
    for pid in started.values():
        os.kill(int(pid), signal.SIGKILL)
    after_crash = run("start", env=env)
    assert after_crash.returncode == 0, after_crash.stderr
    assert after_crash.stdout == first.stdout
    restarted = pids(folder)
    assert restarted.keys() == started.keys() and restarted != started
    assert pg_answers(f"postgresql://postgres@127.0.0.1:{pg_port}/test")
    assert b"MariaDB" in mariadb_greeting(maria_port)

    stopped = run("stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(alive(pid) for pid in restarted.values())
    for port in (pg_port, maria_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_stop_leaves_alone_a_process_whose_pid_its_file_names_but_did_not_start(
    private_services,
):
    env, folder = private_services
    pid_file = folder / "mariadb" / "mariadb.pid"
    pid_file.parent.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{bystander.pid}\n")
        result = run("stop", "mariadb", env=env)
        assert result.returncode == 0, result.stderr
        assert "mariadb is not running" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_port_held_by_another_server_is_refused_by_name(private_services):
    env, _ = private_services
    with socket.create_server(("127.0.0.1", int(env["MARIADB_PORT"]))):
        result = run("start", "mariadb", env=env)
    assert result.returncode != 0
    assert result.stdout == ""
    assert f"mariadb: 127.0.0.1:{env['MARIADB_PORT']} is held by a server" in result.stderr
