"""Shared fixtures: servers the tests need (reachable, or a loud skip / a CI failure)."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI") == "true"
POSTGRES_URL = os.environ.get("AOS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def need_server(host: str, port: int, what: str) -> None:
    """Fail in CI, skip loudly elsewhere, when a server a test needs is not listening."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        message = f"{what} is not reachable at {host}:{port} ({exc}); `make services` starts it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(f"SKIPPED LOUDLY: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
