"""Settings, the CLI's flags and the bootstrap admin key (no Ray needed)."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

import pytest

from cluster import bootstrap, cli, http_port, ray_connect
from cluster.settings import Settings
from tests.conftest import free_port


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("AOS_HTTP_PORT", "9123")
    monkeypatch.setenv("AOS_NUM_SHARDS", "8")
    monkeypatch.setenv("AOS_STORAGE_URL", "postgresql://x@db/aos")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    settings = Settings()
    assert (settings.http_port, settings.num_shards) == (9123, 8)
    assert settings.storage_url == "postgresql://x@db/aos"
    assert settings.ray_address == "ray://head:10001"


def test_defaults_are_the_embedded_sqlite_on_port_8000(monkeypatch):
    for name in ("AOS_HTTP_PORT", "AOS_STORAGE_URL", "AOS_NUM_SHARDS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.http_port == 8000 and settings.num_shards == 4
    assert settings.storage_url == f"sqlite:///{Path.cwd() / 'aos-data' / 'aos.db'}"


def test_a_relative_sqlite_path_is_made_absolute_here(tmp_path, monkeypatch):
    """The shards run in their Ray cluster's working directory, not this one: a relative
    path resolved there named another service's database."""
    monkeypatch.chdir(tmp_path)
    assert (
        Settings(storage_url="sqlite:///data/x.db").storage_url == f"sqlite:///{tmp_path}/data/x.db"
    )
    assert Settings(storage_url="sqlite:////abs/x.db").storage_url == "sqlite:////abs/x.db"
    assert Settings(storage_url="postgresql://u@h/db").storage_url == "postgresql://u@h/db"


def test_cli_flags_override_the_environment(monkeypatch):
    seen = {}
    monkeypatch.setenv("AOS_HTTP_PORT", "9000")
    monkeypatch.setattr(cli, "serve", lambda settings, **_: seen.setdefault("s", settings) and 0)
    cli.main(["serve", "--port", "8123", "--shards", "3", "--storage", "sqlite:///x.db"])
    assert (seen["s"].http_port, seen["s"].num_shards) == (8123, 3)
    assert seen["s"].storage_url == f"sqlite:///{Path.cwd() / 'x.db'}"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Settings(num_shards=0)


def test_admin_key_is_generated_once_kept_private_and_reused(tmp_path):
    settings = Settings(storage_url=f"sqlite:///{tmp_path}/data/aos.db")
    key, generated = bootstrap.admin_key(settings)
    again, generated_again = bootstrap.admin_key(settings)
    assert generated and not generated_again and key == again
    path = tmp_path / "data" / "admin-key"
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_configured_admin_key_wins_and_is_not_written(tmp_path):
    settings = Settings(storage_url=f"sqlite:///{tmp_path}/aos.db", admin_key="given")
    assert bootstrap.admin_key(settings) == ("given", False)
    assert not (tmp_path / "admin-key").exists()


def test_a_port_held_with_so_reuseport_is_refused_by_number():
    # Serve's proxy listens with SO_REUSEPORT: a second proxy could share its port silently.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(http_port.PortInUse, match=f"port {port} on 127.0.0.1"):
            http_port.ensure_free("127.0.0.1", port)
    http_port.ensure_free("127.0.0.1", port)  # free again once nobody listens


def test_a_reserved_port_is_refused_before_anything_listens_and_freed_with_its_lock():
    port = free_port()
    lock = http_port.reserve("127.0.0.1", port)
    with pytest.raises(http_port.PortInUse, match=f"port {port}"):
        http_port.reserve("127.0.0.1", port)
    lock.close()
    http_port.reserve("127.0.0.1", port).close()


def test_printed_storage_urls_hide_their_password():
    assert bootstrap.redacted("postgresql://aos:s3cret@db:5432/aos") == (
        "postgresql://aos:***@db:5432/aos"
    )
    assert bootstrap.redacted("sqlite:///./aos-data/aos.db") == "sqlite:///./aos-data/aos.db"


def test_an_address_where_nothing_listens_is_given_up_in_bounded_time():
    port = free_port()
    began = time.monotonic()
    with pytest.raises(
        ray_connect.RayUnreachable, match=f"no Ray cluster answers at 127.0.0.1:{port}"
    ):
        ray_connect.wait_for_gcs(f"127.0.0.1:{port}", timeout_s=1.0)
    assert time.monotonic() - began < 5


def test_a_listening_gcs_port_is_accepted_and_a_guess_is_not():
    with socket.create_server(("127.0.0.1", 0)) as gcs:
        ray_connect.wait_for_gcs(f"ray://127.0.0.1:{gcs.getsockname()[1]}", timeout_s=1.0)
    with pytest.raises(ValueError, match="host:port"):
        ray_connect.wait_for_gcs("auto", timeout_s=1.0)
