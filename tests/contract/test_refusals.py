"""Data a SQL store cannot hold: refused as `Unstorable`, never quoted.

The API edge refuses such values first; these tests prove the defence behind it, with
records built directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from storage.base import Store
from storage.errors import Unstorable
from storage.records import Batch, Job, Namespace

NOW = 1_700_000_000.0
GENERIC = "the store could not hold this write's data"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The SQL stores only (the in-memory store holds any value)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/aos.db"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def backend(store_url: str) -> str:
    return "sqlite" if store_url.startswith("sqlite") else "postgres"


def job(job_id: str, namespace: str = "b", **changes: object) -> Job:
    fields: dict[str, object] = {"slot": 0, "created_at": NOW, "updated_at": NOW, **changes}
    return Job(namespace=namespace, job_id=job_id, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    name: str
    batch: Batch
    refused_by: frozenset[str]


CASES = [
    Case(
        "lone surrogate in a title",
        Batch(jobs=[job("x", "a", title="\ud800")]),
        frozenset({"sqlite", "postgres"}),
    ),
    Case("NUL in a title", Batch(jobs=[job("x", "a", title="a\x00b")]), frozenset({"postgres"})),
    Case(
        "NUL in a namespace's JSON config",
        Batch(namespaces=[Namespace("a", NOW, {"note": "a\x00b"})]),
        frozenset({"postgres"}),
    ),
    Case(
        "lone surrogate in a namespace's JSON config",
        Batch(namespaces=[Namespace("a", NOW, {"note": "\ud800"})]),
        frozenset({"postgres"}),
    ),
    Case(
        "an int over 64 bits",
        Batch(jobs=[job("x", "a", output_size=2**63)]),
        frozenset({"sqlite", "postgres"}),
    ),
]


async def _holds(store: Store, batch: Batch) -> bool:
    """Whether `store` holds what `batch` wrote, as written."""
    for written in batch.jobs:
        if await store.get_job(written.namespace, written.job_id) != written:
            return False
    for namespace in batch.namespaces:
        if await store.get_namespace(namespace.name) != namespace:
            return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_a_value_the_store_cannot_hold_is_unstorable_and_never_quoted(
    store: Store, backend: str, case: Case
) -> None:
    if backend not in case.refused_by:
        await store.commit(case.batch)  # what a store can hold, it holds as it is
        assert await _holds(store, case.batch)
        return
    with pytest.raises(Unstorable) as refused:
        await store.commit(case.batch)
    assert refused.value.message == GENERIC
    assert refused.value.__cause__ is not None  # translated once, the cause kept for the log
    await store.ping()  # the store itself is fine
    await store.commit(Batch(jobs=[job("after")]))
    assert await store.get_job("b", "after") is not None
    assert not await _holds(store, case.batch)
