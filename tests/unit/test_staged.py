"""The staged commit protocol (storage/staged.py) over dicts: crash points, recovery, fencing.

`DictStaged` keeps the lease, the staged parts and the data in plain dicts (the data in a
`MemoryStore`); the real backends run the same protocol against their servers in the
contract suite.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from storage import rules
from storage.errors import Fenced, StoreUnavailable
from storage.memory import MemoryStore
from storage.records import (
    ApiKey,
    Attempt,
    AuditEntry,
    Batch,
    Chunk,
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    Namespace,
    OutputFormat,
    OutputVersion,
)
from storage.staged import VISIBILITY, StagedStore, decode, encode

NOW = 1_700_000_000.0


class Crash(Exception):
    pass


class DictStaged(StagedStore):
    stage_part_bytes = 64

    def __init__(self, shared: dict[str, object] | None = None) -> None:
        super().__init__()
        self.shared = shared if shared is not None else {"leases": {}, "parts": {}}
        self.data = self.shared.setdefault("data", MemoryStore())  # type: ignore[assignment]
        self.crash_in_apply_after: int | None = None
        self.applied: list[str] = []

    @property
    def leases(self) -> dict[int | None, dict[str, object]]:
        return self.shared["leases"]  # type: ignore[return-value]

    @property
    def parts(self) -> dict[str, tuple[int | None, list[bytes]]]:
        return self.shared["parts"]  # type: ignore[return-value]

    async def _take_lease(self, slot: int, owner: str) -> int:
        lease = self.leases.setdefault(slot, {"epoch": 0, "commits": set()})
        lease["epoch"] = int(lease["epoch"]) + 1  # type: ignore[call-overload]
        return int(lease["epoch"])  # type: ignore[call-overload]

    async def _lease_epoch(self, slot: int) -> int | None:
        lease = self.leases.get(slot)
        return None if lease is None else int(lease["epoch"])  # type: ignore[call-overload]

    async def _stage(self, commit_id: str, slot: int | None, parts: list[bytes]) -> None:
        self.parts[commit_id] = (slot, parts)

    async def _record(self, slot: int | None, epoch: int | None, commit_id: str) -> None:
        lease = self.leases.setdefault(slot, {"epoch": None, "commits": set()})
        if slot is not None:
            rules.check_fence(slot, epoch, lease["epoch"])  # type: ignore[arg-type]
        lease["commits"].add(commit_id)  # type: ignore[attr-defined]

    async def _recorded(self, slot: int | None) -> list[str]:
        lease = self.leases.get(slot)
        return [] if lease is None else sorted(lease["commits"])  # type: ignore[call-overload]

    async def _staged(self, commit_id: str) -> list[bytes]:
        return self.parts[commit_id][1]

    async def get_job(self, namespace: str, job_id: str) -> Job | None:
        return await self.data.get_job(namespace, job_id)  # type: ignore[no-any-return]

    async def _apply(self, batch: Batch, commit_id: str) -> None:
        # As a backend may: read what the writes replace, from tasks of its own.
        await asyncio.gather(*(self.get_job(*job.key) for job in batch.jobs))
        for number, name in enumerate(VISIBILITY):
            if self.crash_in_apply_after == number:
                raise Crash(f"crashed before {name}")
            self.applied.append(name)
            await self.data.commit(Batch(**{name: getattr(batch, name)}))  # type: ignore[attr-defined]

    async def _forget(self, slot: int | None, commit_id: str) -> None:
        self.leases[slot]["commits"].discard(commit_id)  # type: ignore[attr-defined]
        await self._drop(slot, commit_id)

    async def _staged_ids(self, slot: int | None) -> list[str]:
        return [commit_id for commit_id, (s, _) in self.parts.items() if s == slot]

    async def _drop(self, slot: int | None, commit_id: str) -> None:
        self.parts.pop(commit_id, None)


def job(job_id: str, **changes: object) -> Job:
    fields: dict[str, object] = {"slot": 0, "created_at": NOW, "updated_at": NOW, **changes}
    return Job(namespace="acme", job_id=job_id, **fields)  # type: ignore[arg-type]


def every_kind() -> Batch:
    return Batch(
        slot=0,
        epoch=1,
        jobs=[
            job("j1", tags=("a", "ü"), webhook_events=("job.completed",), title="\u2603"),
            job("j2", status=JobStatus.FAILED, output_format=OutputFormat.BINARY, error="x"),
        ],
        chunks=[Chunk("acme", "j1", 1, 0, b"\x00\xff" * 100), Chunk("acme", "j1", 2, 200, b"")],
        versions=[OutputVersion("acme", "j1", 1, 2, 200, NOW, NOW + 1, "ab" * 32)],
        deleted=[("acme", "old")],
        deliveries=[
            Delivery(
                "d1", "acme", "j1", 0, "job.completed", "https://x", b'{"a":1}', NOW,
                DeliveryStatus.FAILED, (Attempt(NOW, 1.5, 500, None, 2.0),), NOW + 5,
            )
        ],
        namespaces=[Namespace("acme", NOW, {"webhook": {"secret": "s"}, "n": [1, 2.5, None]})],
        api_keys=[ApiKey("k1", "h" * 64, ("acme", "globex"), NOW, admin=True)],
        audit=[AuditEntry(NOW, "acme", "test", "job.create", "j1", {"k": "v"})],
    )  # fmt: skip


def test_a_batch_of_every_kind_decodes_to_what_was_encoded() -> None:
    batch = every_kind()
    assert decode(encode(batch)) == batch


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 8, b"\x00\x00\x00\x00\x00\x00\x00\x09{}", b"x"])
def test_bytes_it_did_not_make_are_a_store_fault(garbage: bytes) -> None:
    with pytest.raises(StoreUnavailable, match="staged commit"):
        decode(encode(Batch()) + garbage if garbage == b"x" else garbage)


async def test_a_commit_is_staged_recorded_applied_in_order_and_forgotten() -> None:
    store = DictStaged()
    epoch = await store.acquire_shard(0, "a")
    batch = dataclasses.replace(every_kind(), epoch=epoch)
    await store.commit(batch)
    assert store.applied == list(VISIBILITY)
    assert store.parts == {} and store.leases[0]["commits"] == set()
    assert await store.data.get_job("acme", "j1") == batch.jobs[0]


async def test_a_commit_cut_after_its_record_is_whole_once_a_new_owner_takes_the_slot() -> None:
    old = DictStaged()
    epoch = await old.acquire_shard(0, "old")
    old.crash_in_apply_after = 3  # chunks, versions and deliveries are in; the job is not
    batch = dataclasses.replace(every_kind(), epoch=epoch)
    with pytest.raises(Crash):
        await old.commit(batch)
    assert await old.data.get_job("acme", "j1") is None
    new = DictStaged(old.shared)
    assert await new.acquire_shard(0, "new") == epoch + 1
    assert await new.data.get_job("acme", "j1") == batch.jobs[0]
    assert await new.data.get_namespace("acme") == batch.namespaces[0]
    assert new.parts == {} and new.leases[0]["commits"] == set()


async def test_the_same_store_finishes_a_cut_commit_before_its_next_call() -> None:
    store = DictStaged()
    epoch = await store.acquire_shard(0, "a")
    store.crash_in_apply_after = 1
    with pytest.raises(Crash):
        await store.commit(Batch(slot=0, epoch=epoch, jobs=[job("j1")]))
    store.crash_in_apply_after = None
    await store.commit(Batch(slot=0, epoch=epoch, jobs=[job("j2")]))
    assert {j.job_id for j in await store.data.load_shard(0)} == {"j1", "j2"}


async def test_a_fenced_commit_writes_nothing_and_leaves_no_parts() -> None:
    old = DictStaged()
    epoch = await old.acquire_shard(0, "old")
    await DictStaged(old.shared).acquire_shard(0, "new")
    with pytest.raises(Fenced):
        await old.commit(Batch(slot=0, epoch=epoch, jobs=[job("j1")]))
    assert old.applied == [] and old.parts == {}
    with pytest.raises(Fenced):
        await old.commit(Batch(slot=0, epoch=epoch))  # an empty batch still proves the lease


async def test_parts_never_recorded_are_dropped_when_the_slot_is_taken() -> None:
    store = DictStaged()
    await store.acquire_shard(0, "a")
    await store._stage("0-orphan", 0, [b"x"])
    await store._stage("1-admin", None, [b"y"])
    await DictStaged(store.shared).acquire_shard(0, "b")
    assert list(store.parts) == ["1-admin"]
    await store.recover(None)  # admin parts this young may be another process's, staging
    assert list(store.parts) == ["1-admin"]


async def test_a_read_after_a_cut_commit_waits_until_this_store_finished_it() -> None:
    """Else a shard reloading what failed would see the job without its last chunk, and
    give that chunk's seq to the next append, whose data the commit's chunk would hide."""
    store = DictStaged()
    epoch = await store.acquire_shard(0, "a")
    store.crash_in_apply_after = 1  # the chunk is in, the job is not
    cut = Batch(slot=0, epoch=epoch, jobs=[job("j1", output_seq=1, output_size=1)])
    cut.chunks.append(Chunk("acme", "j1", 1, 0, b"x"))
    with pytest.raises(Crash):
        await store.commit(cut)
    store.crash_in_apply_after = None
    found = await asyncio.gather(*(store.get_job("acme", "j1") for _ in range(3)))
    assert found == [cut.jobs[0]] * 3
    assert store.parts == {} and store.leases[0]["commits"] == set()
