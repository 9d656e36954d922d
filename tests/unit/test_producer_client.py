"""The Python client's blocking `Producer` over a real shard on the in-memory store: writes
pipelined into rounds, `flush` returns the acks in order, the first bad chunk stops it,
`seq` resumes. The store and shard live on the blocking loop the producer runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from actors.commands import JobSpec
from actors.namespace_settings import NamespaceChanges
from actors.pipeline import PipelineClosed
from actors.shard import Shard, ShardConfig
from actors.shard_client import ShardClient
from cluster.blocking import run
from cluster.producer import Producer
from storage.errors import Conflict, Invalid, TooLarge
from tests.unit.fakes import GatedStore


@dataclass
class Service:
    store: GatedStore
    shard: Shard
    shards: ShardClient

    def stored(self, job_id: str = "j1") -> list[bytes]:
        chunks = run(self.store.read_output("acme", job_id, limit=10_000))
        return [c.data for c in chunks]


@pytest.fixture
def service() -> Iterator[Service]:
    async def start() -> Service:
        store = GatedStore()
        await store.open()
        shard = Shard(store, ShardConfig(slot=0, num_shards=1))
        await shard.start()
        await shard.namespaces.create("acme", NamespaceChanges(), actor="t")
        shards = ShardClient.in_process([shard], store=store)
        await shards.submit("acme", JobSpec(), job_id="j1")
        return Service(store, shard, shards)

    started = run(start())
    yield started
    run(started.shard.stop())


def test_writes_are_pipelined_and_flush_returns_every_ack_in_order(service):
    before = len(service.store.commits)
    service.store.gate = gate = asyncio.Event()  # no commit until every chunk is written
    with Producer.open(service.shards, "acme", "j1") as producer:
        try:
            for i in range(500):
                producer.write(f"{i},")  # returns at once: nothing is durable yet
            assert not service.store.commits[before:]
        finally:
            run(_set(gate))
        acks = producer.flush()
        assert producer.flush() == []  # nothing new since
    assert [a.seq for a in acks] == list(range(1, 501))
    assert producer.last_ack == acks[-1]
    assert len(service.store.commits) - before <= 3  # 1 chunk, then rounds of 256 and 243
    assert b"".join(service.stored()) == "".join(f"{i}," for i in range(500)).encode()


def test_the_first_bad_chunk_stops_it_after_the_ones_before_it(service):
    producer = Producer.open(service.shards, "acme", "j1")
    producer.write(b"fine")
    producer.write(b"\xff")  # not UTF-8: the job is text
    with pytest.raises(Invalid):
        producer.flush()
    with pytest.raises(Invalid):
        producer.write(b"later")
    assert producer.last_ack is not None and producer.last_ack.seq == 1
    producer.abort()
    assert service.stored() == [b"fine"]


def test_a_chunk_over_the_limit_is_too_large(service):
    service.shards.max_chunk_bytes = 8
    producer = Producer.open(service.shards, "acme", "j1")
    producer.write(b"123456789")
    with pytest.raises(TooLarge):
        producer.flush()
    producer.abort()


def test_a_producer_started_again_at_its_next_seq_resends_without_doubling(service):
    with Producer.open(service.shards, "acme", "j1", seq=1) as first:
        for text in ("a", "b", "c"):
            first.write(text)
    with Producer.open(service.shards, "acme", "j1", seq=2) as again:
        for text in ("b", "c", "d"):
            again.write(text)
        assert [a.seq for a in again.flush()] == [2, 3, 4]
    producer = Producer.open(service.shards, "acme", "j1", seq=2)
    producer.write("X")
    with pytest.raises(Conflict):
        producer.flush()
    producer.abort()
    assert service.stored() == [b"a", b"b", b"c", b"d"]


def test_bad_arguments_are_refused_when_it_opens(service):
    with pytest.raises(Invalid):
        Producer.open(service.shards, "acme", "j1", seq=0)
    with pytest.raises(Invalid):
        Producer.open(service.shards, "acme", "bad id")


def test_a_closed_producer_takes_no_more_writes(service):
    producer = Producer.open(service.shards, "acme", "j1")
    producer.write("x")
    assert [a.seq for a in producer.close()] == [1]
    with pytest.raises(PipelineClosed):
        producer.write("y")


async def _set(event: asyncio.Event) -> None:
    event.set()
