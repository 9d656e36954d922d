"""Who listens on a port: read from /proc, so a test sees what `ss -ltnp` would show."""

from __future__ import annotations

from pathlib import Path

from serve_app.stream_server import listening_sockets


def listeners(port: int) -> list[tuple[str, str]]:
    """(local IPv4 address, process name) of every socket listening on TCP `port`."""
    inodes = {
        inode: host
        for inode, (host, bound) in listening_sockets("/proc/net/tcp").items()
        if bound == port
    }
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = fd.readlink().name
                inode = target.removeprefix("socket:[").removesuffix("]")
                if target.startswith("socket:[") and inode in inodes:
                    found.append((inodes.pop(inode), (proc / "comm").read_text().strip()))
        except OSError:
            continue
    return found
