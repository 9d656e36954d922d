"""A PostgreSQL server a test starts, stops and restarts itself, in a folder of its own on a
free port: never the one `make services` runs on 5432.

Debian's binaries (/usr/lib/postgresql/*/bin), run as the `postgres` user when the tests run
as root (initdb refuses root), as .ci/services does. Without them the test skips loudly, or
fails when CI=true (`need_binaries`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.conftest import IN_CI, free_port

START_TIMEOUT_S = 60
DATABASE = "test"


def server_bin() -> Path | None:
    """The newest installed server's bin folder (a client-only install has no `postgres`)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version)
    return Path(found[-1]).parent if found else None


def need_binaries() -> Path:
    """The server's bin folder; a loud skip, or a failure in CI, when there is none."""
    bin_dir = server_bin()
    if bin_dir is None:
        message = "no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    return bin_dir


class PgInstance:
    """One server: `start()`, `stop(mode)` (`immediate` is a crash: no checkpoint, the next
    start replays the WAL), `restart()`. `url` names its database `test`."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self._bin = bin_dir
        self._root = root
        self._data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def init(self) -> None:
        self._run(
            "initdb",
            *("-D", self._data, "-U", "postgres", "--auth=trust", "--encoding=UTF8"),
            *("--locale=C.UTF-8", "--no-sync"),
        )
        self.start()
        with psycopg.connect(self.url.replace(f"/{DATABASE}", "/postgres"), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {DATABASE}")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._run(
            "pg_ctl",
            *("-D", self._data, "-l", self._root / "server.log", "-w"),
            *("-t", str(START_TIMEOUT_S), "-o", options, "start"),
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self._data, "-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        status = self._command("pg_ctl", "-D", self._data, "status")
        return subprocess.run(status, capture_output=True, check=False).returncode == 0

    def log_tail(self, lines: int = 20) -> str:
        log = self._root / "server.log"
        return "\n".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""

    def _run(self, tool: str, *args: object) -> None:
        done = subprocess.run(self._command(tool, *args), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}\n"
                f"{self.log_tail()}"
            )

    def _command(self, tool: str, *args: object) -> list[str]:
        command = [str(self._bin / tool), *map(str, args)]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def pg_instance() -> Iterator[PgInstance]:
    """A new server, started, with an empty database `test`; stopped and removed after."""
    bin_dir = need_binaries()
    # Not pytest's tmp_path: its folders are root's alone, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="aos-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PgInstance(bin_dir, root)
    try:
        server.init()
        yield server
    finally:
        if server.running():
            server.stop("immediate")
        _wait_gone(root / "data" / "postmaster.pid")
        shutil.rmtree(root, ignore_errors=True)


def _wait_gone(path: Path, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _version(path: str) -> tuple[int, ...]:
    number = Path(path).parent.parent.name
    return tuple(int(part) for part in number.split(".") if part.isdigit())
