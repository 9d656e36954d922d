"""The service's HTTP port: refused when taken, and held by one `aos serve` at a time."""

from __future__ import annotations

import errno
import fcntl
import socket
import tempfile
from pathlib import Path
from typing import IO


class PortInUse(RuntimeError):
    """The HTTP port is taken by another process (another service, or anything else)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is already in use; stop what holds it or choose --port"
        )
        self.port = port


def reserve(host: str, port: int) -> IO[bytes]:
    """Hold `port` for this process until the returned file is closed (or the process ends).

    Two checks, because Serve's proxy binds with SO_REUSEPORT and only seconds after the
    start: a second service on a taken port would start anyway, and the kernel would split
    requests between the two. The bind (without SO_REUSEPORT) fails while anything listens
    there; the lock file (per port, in the temp folder) fails while another service on this
    machine is still starting. Raises `PortInUse`.
    """
    lock = (Path(tempfile.gettempdir()) / f"aos-serve-port-{port}.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ensure_free(host, port)
    except BlockingIOError as exc:
        lock.close()
        raise PortInUse(host, port) from exc
    except BaseException:
        lock.close()
        raise
    return lock


def ensure_free(host: str, port: int) -> None:
    """Raise `PortInUse` if something listens on host:port."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from exc
        raise
