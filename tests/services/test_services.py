"""`make services` (.ci/services): starts each server once, prints its URL, stops only its own.

The first test checks the servers the suite itself runs on (the ones `make services`
started under .services/). The others start private ones in a temporary folder on free
ports, so start, restart, refusal and stop are exercised without touching the suite's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pymongo
import pytest
from cassandra.cluster import Cluster

from tests.conftest import IN_CI, POSTGRES_URL, free_port, need_server

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "services"
CACHE = ROOT / ".services" / "cache"
SUITE_PORTS = {
    "postgresql": 5432,
    "mariadb": 3306,
    "dynamodb": 4566,
    "mongodb": 27017,
    "cassandra": 9042,
}


URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:{}/test",
    "mariadb": "mysql://root@127.0.0.1:{}/test",
    "dynamodb": "http://127.0.0.1:{}",
    "mongodb": "mongodb://127.0.0.1:{}/",
    "cassandra": "cassandra://127.0.0.1:{}/",
}
# Cassandra takes ~10 s to start, ~6 s to stop and ~0.7 GB: its private instance has a test of
# its own (start, second start, stop), not the crash-and-restart round of the others.
QUICK = ("postgresql", "mariadb", "dynamodb", "mongodb")


def url_lines(ports: dict[str, int]) -> list[str]:
    """What `start` prints on stdout: one "<name> <url>" line per service, in this order."""
    return [f"{name} {URLS[name].format(port)}" for name, port in ports.items()]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # moto_server runs from the venv running these tests (else the script would `make install`).
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "SERVICES_VENV": sys.prefix, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
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


def dynamodb_tables(url: str) -> list[str]:
    """DynamoDB's ListTables, signed as boto3 signs it (moto checks no signature)."""
    client = boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    tables: list[str] = client.list_tables()["TableNames"]
    return tables


def mongodb_answers(url: str) -> bool:
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        return bool(client.admin.command("ping")["ok"] == 1 and client.admin.command("hello"))


def cassandra_settings(port: int) -> tuple[str, str]:
    """Cassandra's release_version and the commitlog_sync it runs with."""
    cluster = Cluster(["127.0.0.1"], port=port, connect_timeout=10)
    try:
        session = cluster.connect()
        version = session.execute("SELECT release_version FROM system.local").one()
        sync = session.execute(
            "SELECT value FROM system_views.settings WHERE name = 'commitlog_sync'"
        ).one()
        return version.release_version, sync.value
    finally:
        cluster.shutdown()


def answers(ports: dict[str, int]) -> None:
    """Each server in PORTS answers its own protocol on its port."""
    checks = {
        "postgresql": lambda port: pg_answers(URLS["postgresql"].format(port)),
        "mariadb": lambda port: b"MariaDB" in mariadb_greeting(port),
        "dynamodb": lambda port: isinstance(dynamodb_tables(URLS["dynamodb"].format(port)), list),
        "mongodb": lambda port: mongodb_answers(URLS["mongodb"].format(port)),
        "cassandra": lambda port: cassandra_settings(port) == ("5.0.9", "batch"),
    }
    for name, port in ports.items():
        assert checks[name](port), f"{name} on port {port} does not answer"


def pids(folder: Path) -> dict[str, str]:
    files = {
        "postgresql": folder / "postgresql" / "data" / "postmaster.pid",
        "mariadb": folder / "mariadb" / "mariadb.pid",
        "dynamodb": folder / "dynamodb" / "moto.pid",
        "mongodb": folder / "mongodb" / "ferretdb.pid",
        "cassandra": folder / "cassandra" / "cassandra.pid",
    }
    return {name: f.read_text().split()[0] for name, f in files.items() if f.exists()}


def alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


def need_installed() -> None:
    """What `make services` installs, builds or fetches once (a private start reuses it)."""
    missing = [b for b in ("runuser", "mariadbd") if not shutil.which(b, path="/usr/sbin:/usr/bin")]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        missing.append("postgresql")
    if not (Path(sys.prefix) / "bin" / "moto_server").exists():
        missing.append("moto_server")
    if not (CACHE / "ferretdb-v1.24.2" / "ferretdb").exists():
        missing.append("ferretdb")
    if not (CACHE / "cassandra-5.0.9" / "lib" / "cassandra-all-5.0.9.jar").exists():
        missing.append("cassandra")
    if missing or os.geteuid() != 0:
        message = f"make services has not installed {missing} here, or this is not root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(f"SKIPPED LOUDLY: {message}")


@pytest.fixture
def private_services(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    need_installed()
    folder = tmp_path / "services"
    env = {"SERVICES_DIR": str(folder)}
    for name in SUITE_PORTS:
        env[f"{name.upper()}_PORT"] = str(free_port())
    env["CASSANDRA_STORAGE_PORT"] = str(free_port())
    yield env, folder
    run("stop", env=env)


def test_a_second_start_starts_nothing_and_prints_the_urls_the_suite_uses():
    for name, port in SUITE_PORTS.items():
        need_server("127.0.0.1", port, f"{name} (make services)")
    before = pids(ROOT / ".services")
    again = run("start")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == url_lines(SUITE_PORTS)
    for name in SUITE_PORTS:
        assert f"{name} already running" in again.stderr
    assert pids(ROOT / ".services") == before
    assert pg_answers(POSTGRES_URL)
    answers(SUITE_PORTS)


def test_start_restart_and_stop_touch_only_their_own_servers(private_services):
    env, folder = private_services
    ports = {name: int(env[f"{name.upper()}_PORT"]) for name in QUICK}

    first = run("start", *QUICK, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == url_lines(ports)
    answers(ports)
    started = pids(folder)
    assert set(started) == set(QUICK)

    second = run("start", *QUICK, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert pids(folder) == started

    # Killed servers leave PID files behind; the next start sees through them.
    for pid in started.values():
        os.kill(int(pid), signal.SIGKILL)
    after_crash = run("start", *QUICK, env=env)
    assert after_crash.returncode == 0, after_crash.stderr
    assert after_crash.stdout == first.stdout
    restarted = pids(folder)
    assert restarted.keys() == started.keys()
    assert all(restarted[name] != started[name] for name in started)
    answers(ports)

    stopped = run("stop", *QUICK, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(alive(pid) for pid in restarted.values())
    for port in ports.values():
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_cassandra_starts_once_with_its_durable_setting_and_stops(private_services):
    env, folder = private_services
    port, storage_port = int(env["CASSANDRA_PORT"]), int(env["CASSANDRA_STORAGE_PORT"])

    first = run("start", "cassandra", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == url_lines({"cassandra": port})
    answers({"cassandra": port})
    started = pids(folder)
    assert set(started) == {"cassandra"}

    second = run("start", "cassandra", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "cassandra already running" in second.stderr
    assert pids(folder) == started

    stopped = run("stop", "cassandra", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(started["cassandra"])
    for taken in (port, storage_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", taken), timeout=1).close()


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


@pytest.mark.parametrize(
    ("name", "port_variable"),
    [
        ("mariadb", "MARIADB_PORT"),
        ("dynamodb", "DYNAMODB_PORT"),
        ("mongodb", "MONGODB_PORT"),
        ("cassandra", "CASSANDRA_PORT"),
        ("cassandra", "CASSANDRA_STORAGE_PORT"),
    ],
)
def test_a_port_held_by_another_server_is_refused_by_name(private_services, name, port_variable):
    env, _ = private_services
    port = env[port_variable]
    with socket.create_server(("127.0.0.1", int(port))):
        result = run("start", name, env=env)
    assert result.returncode != 0
    assert result.stdout == ""
    assert f"{name}: 127.0.0.1:{port} is held by a server" in result.stderr
