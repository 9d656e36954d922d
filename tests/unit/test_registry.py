"""Backends by URL scheme: unknown schemes and missing drivers fail with what to do."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.settings import Settings
from storage import registry
from storage.memory import MemoryStore
from storage.registry import Backend, MissingDriver, open_store
from storage.sqlite import SqliteStore


def test_each_scheme_opens_its_backend() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("sqlite:///tmp/x.db"), SqliteStore)
    upper = open_store("SQLite:///tmp/x.db")  # schemes ignore case, and reach the backend
    assert isinstance(upper, SqliteStore) and upper._path == "tmp/x.db"


@pytest.mark.parametrize("url", ["redis://localhost", "sqlite", "", "memory"])
def test_a_url_no_backend_serves_names_those_that_exist(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected one of .*sqlite://"):
        open_store(url)


@pytest.fixture
def missing_driver_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A backend module whose driver is not installed, registered as `fake://`."""
    (tmp_path / "fake_store_module.py").write_text(
        "import a_driver_nobody_installed\n\nclass FakeStore:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        registry.BACKENDS, "fake", Backend("fake_store_module", "FakeStore", "fake")
    )
    yield "fake://somewhere"
    sys.modules.pop("fake_store_module", None)


def test_a_missing_driver_names_the_extra_to_install(missing_driver_backend: str) -> None:
    with pytest.raises(MissingDriver) as missing:
        open_store(missing_driver_backend)
    assert str(missing.value) == (
        "the fake:// store needs its driver (a_driver_nobody_installed), which is not"
        " installed: pip install 'async-output-service[fake]'"
    )


def test_settings_refuse_a_store_they_could_not_open(missing_driver_backend: str) -> None:
    with pytest.raises(ValueError, match=r"pip install 'async-output-service\[fake\]'"):
        Settings(storage_url=missing_driver_backend)
    with pytest.raises(ValueError, match="unsupported storage URL"):
        Settings(storage_url="redis://localhost")


def test_the_default_install_needs_no_driver_for_sqlite_and_memory() -> None:
    assert registry.BACKENDS["sqlite"].extra is None
    assert registry.BACKENDS["memory"].extra is None
    assert {b.extra for b in registry.BACKENDS.values()} - {None} <= {
        "postgresql",
        "mysql",
        "dynamodb",
        "mongodb",
        "cassandra",
    }
