"""Who listens on a port: read from /proc, so a test sees what `ss -ltnp` would show."""

from __future__ import annotations

from pathlib import Path


def listeners(port: int) -> list[tuple[str, str]]:
    """(local IPv4 address, process name) of every socket listening on TCP `port`."""
    inodes: dict[str, str] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
            octets = bytes.fromhex(address)[::-1]
            inodes[fields[9]] = ".".join(str(b) for b in octets)
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
