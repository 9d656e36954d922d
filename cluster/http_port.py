"""The service's HTTP port: refused when taken, and held by one `aos serve` at a time."""

from __future__ import annotations

import errno
import fcntl
import socket
import tempfile
from pathlib import Path
from typing import IO


class PortInUse(RuntimeError):
    """A port the service listens on is taken by another process (another service, or
    anything else); `choose` names the flag or variable that picks another one."""

    def __init__(self, host: str, port: int, choose: str = "--port") -> None:
        super().__init__(
            f"port {port} on {host} is already in use; stop what holds it or choose {choose}"
        )
        self.port = port


def reserve(host: str, port: int) -> IO[bytes]:
    """Hold `port` for this process until the returned file is closed (or the process ends).

    Serve's proxy binds only seconds after the start, so `ensure_free` alone would let two
    services started together both take the port. The lock (a file per port in the temp
    folder) fails while another service on this machine holds it. Raises `PortInUse`.
    """
    lock = (Path(tempfile.gettempdir()) / f"aos-serve-port-{port}.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock.close()
        raise PortInUse(host, port) from exc
    return lock


def ensure_free(host: str, port: int, choose: str = "--port") -> None:
    """Raise `PortInUse` if something listens on host:port.

    Serve's proxy binds with SO_REUSEPORT: a second proxy on a taken port would start
    anyway, and the kernel would split requests between the two. This bind has no
    SO_REUSEPORT, so it fails while anything listens there.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port, choose) from exc
        raise
