"""The typed client of the shards: routing by namespace, checks before the hop, replay paging,
and the promise that `ShardActor` and `Shard` both have exactly `ShardApi`'s methods."""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import pytest
import ray

from actors.commands import Completion, JobSpec, ProgressUpdate
from actors.feed import EventKind
from actors.limits import MAX_APPEND_BYTES, OUTPUT_PAGE_BYTES
from actors.namespace_settings import NamespaceChanges
from actors.routing import shard_for
from actors.shard import Shard
from actors.shard_actor import ShardActor
from actors.shard_client import COALESCED, ShardApi, ShardClient
from actors.shard_types import AppendManyResult
from storage.errors import Invalid, NotFound, TooLarge
from storage.memory import MemoryStore
from storage.records import ApiKey, Batch, Chunk, Job, JobStatus

NUM_SHARDS = 4
API_METHODS = sorted(
    name
    for name, value in vars(ShardApi).items()
    if inspect.isfunction(value) and not name.startswith("_")
)


class RecordingShard:
    """A `ShardApi` stand-in: records every call, answers None (or what `replies` says)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.replies: dict[str, Any] = {"append_many": AppendManyResult(), "list_versions": []}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return self.replies.get(name)

        return call


class Fleet:
    """`NUM_SHARDS` recording shards behind one client; counts how often each slot is found."""

    def __init__(self, *, max_chunk_bytes: int = 8) -> None:
        self.shards = [RecordingShard() for _ in range(NUM_SHARDS)]
        self.found: list[int] = []
        self.client = ShardClient(
            num_shards=NUM_SHARDS, shards=self._find, max_chunk_bytes=max_chunk_bytes
        )

    def _find(self, slot: int) -> ShardApi:
        self.found.append(slot)
        return self.shards[slot]

    def calls(self) -> list[list[str]]:
        return [[name for name, _, _ in shard.calls] for shard in self.shards]


KEY = ApiKey("k1", "hash", ("acme",), created_at=0.0)

#: Each client method, how it is called, and the call the owning shard must receive.
CALLS = [
    (
        lambda c, ns: c.submit(ns, JobSpec(title="t"), job_id="j1", actor="me"),
        ("submit", {"job_id": "j1", "spec": JobSpec(title="t"), "actor": "me"}),
    ),
    (
        lambda c, ns: c.append(ns, "j1", b"abc", seq=3),
        ("append", {"job_id": "j1", "chunks": [b"abc"], "seq": 3, "version": None}),
    ),
    (
        lambda c, ns: c.append_many(ns, "j1", [b"ab", b"c"], first_seq=2, version=2),
        (
            "append_many",
            {"job_id": "j1", "chunks": [b"ab", b"c"], "first_seq": 2, "version": 2},
        ),
    ),
    (
        lambda c, ns: c.set_progress(ns, "j1", ProgressUpdate(progress=5)),
        ("set_progress", {"job_id": "j1", "update": ProgressUpdate(progress=5)}),
    ),
    (
        lambda c, ns: c.complete(ns, "j1", Completion(JobStatus.SUCCEEDED)),
        ("complete", {"job_id": "j1", "completion": Completion(JobStatus.SUCCEEDED)}),
    ),
    (lambda c, ns: c.cancel(ns, "j1", actor="me"), ("cancel", {"job_id": "j1", "actor": "me"})),
    (lambda c, ns: c.delete(ns, "j1", actor="me"), ("delete", {"job_id": "j1", "actor": "me"})),
    (lambda c, ns: c.get(ns, "j1"), ("get", {"job_id": "j1"})),
    (
        lambda c, ns: c.start_version(ns, "j1", actor="me"),
        ("start_version", {"job_id": "j1", "actor": "me"}),
    ),
    (
        lambda c, ns: c.earlier_versions(Job(ns, "j1", 0, 0.0, 0.0, output_version=2)),
        ("list_versions", {"job_id": "j1"}),
    ),
    (
        lambda c, ns: c.watch(ns, "j1", revision=2, after_seq=1, timeout_s=3.0),
        ("watch", {"job_id": "j1", "revision": 2, "after_seq": 1, "timeout_s": 3.0}),
    ),
    (
        lambda c, ns: c.read_output(ns, "j1", version=2, after_seq=4, limit=5),
        (
            "read_output",
            {
                "job_id": "j1",
                "version": 2,
                "after_seq": 4,
                "limit": 5,
                "max_bytes": OUTPUT_PAGE_BYTES,
            },
        ),
    ),
    (
        lambda c, ns: c.read_output_at(ns, "j1", version=1, offset=40, limit=5),
        (
            "read_output_at",
            {
                "job_id": "j1",
                "version": 1,
                "offset": 40,
                "limit": 5,
                "max_bytes": OUTPUT_PAGE_BYTES,
            },
        ),
    ),
    (
        lambda c, ns: c.create_namespace(ns, NamespaceChanges(description="d")),
        ("create_namespace", {"changes": NamespaceChanges(description="d"), "actor": ""}),
    ),
    (lambda c, ns: c.get_namespace(ns), ("get_namespace", {})),
    (
        lambda c, ns: c.update_namespace(ns, NamespaceChanges(), actor="me"),
        ("update_namespace", {"changes": NamespaceChanges(), "actor": "me"}),
    ),
    (
        lambda c, ns: c.rotate_webhook_secret(ns, grace_s=60),
        ("rotate_webhook_secret", {"grace_s": 60.0, "actor": ""}),
    ),
    (
        lambda c, ns: c.put_api_key(ns, KEY, actor="me"),
        ("put_api_key", {"key": KEY, "actor": "me"}),
    ),
    (
        lambda c, ns: c.retry_delivery(ns, "msg_1", actor="me"),
        ("retry_delivery", {"delivery_id": "msg_1", "actor": "me"}),
    ),
]
NAMESPACES = [f"tenant-{i}" for i in range(12)]


def test_the_test_namespaces_cover_every_shard():
    assert {shard_for(ns, NUM_SHARDS) for ns in NAMESPACES} == set(range(NUM_SHARDS))


@pytest.mark.parametrize(("call", "expected"), CALLS, ids=[e[0] for _, e in CALLS])
async def test_each_call_goes_to_the_shard_that_owns_the_namespace(call, expected):
    fleet = Fleet()
    for namespace in NAMESPACES:
        await call(fleet.client, namespace)
    for slot, shard in enumerate(fleet.shards):
        owned = [ns for ns in NAMESPACES if shard_for(ns, NUM_SHARDS) == slot]
        name, kwargs = expected
        assert shard.calls == [(name, (ns,), kwargs) for ns in owned]


def test_every_shard_api_method_is_tested_for_routing():
    routed = {name for _, (name, _) in CALLS}
    # submit_many takes items of many namespaces: tests/unit/test_submit_many.py routes it.
    assert routed == set(API_METHODS) - {"ping", "stats", "submit_many"}


async def test_shards_are_found_lazily_once_each():
    fleet = Fleet()
    for namespace in NAMESPACES * 3:
        await fleet.client.get(namespace, "j1")
    assert sorted(fleet.found) == list(range(NUM_SHARDS))


async def test_ping_all_pings_every_shard():
    fleet = Fleet()
    await fleet.client.ping_all()
    assert fleet.calls() == [["ping"]] * NUM_SHARDS


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.get("Acme", "j1"), Invalid),
        (lambda c: c.get("a" * 64, "j1"), TooLarge),
        (lambda c: c.get("acme", "a/b"), Invalid),
        (lambda c: c.get("acme", "x" * 2000), TooLarge),
        (lambda c: c.submit("acme", JobSpec(), job_id="x" * 129), TooLarge),
        (lambda c: c.submit("acme_corp", JobSpec(), job_id="j1"), Invalid),
        (lambda c: c.append("acme", "j1", b""), Invalid),
        (lambda c: c.append("acme", "j1", b"x" * (MAX_APPEND_BYTES + 1)), TooLarge),
        (lambda c: c.append("acme", "j1", b"x", seq=0), Invalid),
        (lambda c: c.append("acme", "j 1", b"x"), Invalid),
        (lambda c: c.append_many("acme", "j 1", [b"x"]), Invalid),
        (lambda c: c.append_many("acme", "j1", [b"x"], first_seq=0), Invalid),
        (lambda c: c.append_many("acme", "j1", [b"x"] * 1025), TooLarge),
        (lambda c: c.cancel("acme", ""), Invalid),
        (lambda c: c.watch("acme", "../j1"), Invalid),
        (lambda c: c.rotate_webhook_secret("acme", grace_s=-1), Invalid),
        (lambda c: c.create_namespace("-acme", NamespaceChanges()), Invalid),
        (lambda c: c.read_output("acme", "a/b", version=1), Invalid),
        (lambda c: c.append("acme", "j1", b"x", version=0), Invalid),
        (lambda c: c.append_many("acme", "j1", [b"x"], version=-1), Invalid),
        (lambda c: c.start_version("acme", "j 1"), Invalid),
    ],
)
async def test_a_bad_name_or_value_is_refused_before_any_shard_is_called(call, error):
    fleet = Fleet(max_chunk_bytes=8)
    with pytest.raises(error):
        await call(fleet.client)
    assert fleet.calls() == [[]] * NUM_SHARDS


async def test_a_new_job_gets_an_id_when_none_is_given():
    fleet = Fleet()
    await fleet.client.submit("acme", JobSpec())
    await fleet.client.submit("acme", JobSpec())
    owner = fleet.shards[shard_for("acme", NUM_SHARDS)]
    ids = [kwargs["job_id"] for _, _, kwargs in owner.calls]
    assert len(set(ids)) == 2 and all(ids)


def test_a_client_needs_at_least_one_shard():
    with pytest.raises(ValueError):
        ShardClient(num_shards=0, shards=lambda slot: RecordingShard())


# -- events and output ----------------------------------------------------------------------


async def test_events_of_a_missing_job_raise_not_found_before_iterating(shards):
    with pytest.raises(NotFound):
        await shards.events("acme", "missing")


async def test_events_of_a_finished_job_are_its_output_then_status_progress_and_end(shards):
    await shards.submit("acme", JobSpec(), job_id="j1")
    await shards.append("acme", "j1", b"a")
    await shards.append("acme", "j1", b"b")
    await shards.complete("acme", "j1", Completion(JobStatus.SUCCEEDED))
    events = [event async for event in await shards.events("acme", "j1", after_seq=1)]
    assert [e.kind for e in events] == [
        EventKind.OUTPUT,
        EventKind.STATUS,
        EventKind.PROGRESS,
        EventKind.END,
    ]
    assert events[0].chunk is not None and events[0].chunk.data == b"b"


class ChunkSource:
    """Serves `read_output` from a list of one-byte chunks and records each page asked for."""

    def __init__(self, count: int) -> None:
        self.chunks = [Chunk("acme", "j1", seq, seq - 1, b"x") for seq in range(1, count + 1)]
        self.pages: list[tuple[int, int]] = []
        self.max_bytes: set[int | None] = set()

    async def read_output(
        self,
        namespace: str,
        job_id: str,
        *,
        version: int = 1,
        after_seq: int = 0,
        limit: int = 256,
        max_bytes: int | None = None,
    ) -> list[Chunk]:
        self.pages.append((after_seq, limit))
        self.max_bytes.add(max_bytes)
        return self.chunks[after_seq : after_seq + limit]


def job_with_output(output_seq: int) -> Job:
    return Job("acme", "j1", 0, 0.0, 0.0, output_seq=output_seq, output_size=output_seq)


async def test_output_reads_page_by_page_up_to_the_jobs_last_seq():
    source = ChunkSource(1200)  # the store may hold more than the job (as fetched) has seen
    fleet = Fleet()
    fleet.shards[shard_for("acme", NUM_SHARDS)] = source
    chunks = [
        c async for c in fleet.client.output(job_with_output(1100).current_version, after_seq=10)
    ]
    assert [c.seq for c in chunks] == list(range(11, 1101))
    assert len(source.pages) > 1
    positions = [after for after, _ in source.pages]
    assert positions[0] == 10 and positions == sorted(set(positions))
    assert all(after + limit <= 1100 for after, limit in source.pages)
    assert source.max_bytes == {OUTPUT_PAGE_BYTES}  # every page bounded in bytes too


async def test_output_that_ends_before_the_versions_last_seq_raises_not_a_short_stream():
    """Its job was deleted while it was read: a compressed download must not end with a
    valid end of stream, as if whole."""
    source = ChunkSource(5)
    fleet = Fleet()
    fleet.shards[shard_for("acme", NUM_SHARDS)] = source
    seen = []
    with pytest.raises(NotFound, match="deleted while its output was read"):
        async for chunk in fleet.client.output(job_with_output(8).current_version):
            seen.append(chunk.seq)
    assert seen == [1, 2, 3, 4, 5]
    whole = [c.seq async for c in fleet.client.output(job_with_output(5).current_version)]
    assert whole == [1, 2, 3, 4, 5]


async def test_output_is_served_by_the_store_when_the_client_has_one():
    store = ChunkSource(5)
    fleet = Fleet()
    client = ShardClient(num_shards=NUM_SHARDS, shards=fleet._find, store=store)
    chunks = [c async for c in client.output(job_with_output(5).current_version)]
    assert [c.seq for c in chunks] == [1, 2, 3, 4, 5]
    assert store.pages and fleet.calls() == [[]] * NUM_SHARDS


async def test_a_committed_job_is_read_from_the_store_when_the_client_has_one():
    store = MemoryStore()
    job = job_with_output(0)
    await store.commit(Batch(jobs=[job]))
    fleet = Fleet()
    client = ShardClient(num_shards=NUM_SHARDS, shards=fleet._find, store=store)
    assert await client.get(job.namespace, job.job_id) == job
    with pytest.raises(NotFound):
        await client.get(job.namespace, "missing")
    assert fleet.calls() == [[]] * NUM_SHARDS  # no shard was asked


# -- the shard's interface, in process and through Ray ---------------------------------------


def signature(function: Any) -> inspect.Signature:
    """A method's own signature, without the `_ray_trace_ctx` Ray's tracing adds to actors."""
    found = inspect.signature(function)
    kept = [p for p in found.parameters.values() if p.name != "_ray_trace_ctx"]
    return found.replace(parameters=kept)


def actor_methods() -> dict[str, Any]:
    """The undecorated methods of the class under `@ray.remote` (Ray 2.60 keeps it here)."""
    actor_class = ShardActor.__ray_actor_class__
    return {
        name: value
        for name, value in vars(actor_class).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }


def test_importing_the_actor_module_does_not_start_ray():
    # In a fresh interpreter: this session may hold the e2e tests' Ray connection.
    check = "import actors.shard_actor, ray; assert not ray.is_initialized()"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


def test_unit_tests_cannot_start_ray():
    with pytest.raises(RuntimeError, match="without Ray"):
        ray.init()


def test_the_shard_actor_has_exactly_the_shard_api_methods_and_many():
    assert sorted(set(actor_methods()) - {"many"}) == API_METHODS
    assert COALESCED <= set(API_METHODS)


@pytest.mark.parametrize("name", API_METHODS)
def test_each_shard_actor_method_takes_the_shard_api_parameters(name):
    method = actor_methods()[name]
    assert signature(method) == signature(getattr(ShardApi, name))
    assert inspect.iscoroutinefunction(method)


@pytest.mark.parametrize("name", API_METHODS)
def test_the_in_process_shard_has_each_shard_api_method_with_its_parameters(name):
    assert signature(getattr(Shard, name)) == signature(getattr(ShardApi, name))


async def test_an_in_process_shard_answers_stats_like_an_actor(shards):
    stats = await shards.shard(0).stats()
    assert stats["slot"] == 0
