"""The Python client's `Producer` through the real shard actors: pipelined writes, every ack
once and in order, the output read back exactly over HTTP; a restart at `seq` resends
without doubling."""

from __future__ import annotations

import time
import uuid

import pytest

from cluster.client import Client
from storage.errors import Conflict

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(service) -> Client:
    return Client.connect()


@pytest.fixture
def namespace(admin) -> str:
    name = f"p-{uuid.uuid4().hex[:10]}"
    assert admin.post("/api/v1/namespaces", json={"name": name}).status_code == 201
    return name


def test_a_producer_streams_2000_chunks_each_acknowledged_once(client, namespace, admin):
    client.submit(namespace, "j1", output_format="binary")
    data = [(f"{i}:".encode() * 1024)[:1024] for i in range(2000)]
    started = time.perf_counter()
    with client.producer(namespace, "j1", seq=1) as producer:
        for chunk in data:
            producer.write(chunk)
        acks = producer.flush()
    elapsed_s = time.perf_counter() - started
    assert [(a.seq, a.offset, a.size) for a in acks] == [
        (i + 1, i * 1024, 1024) for i in range(2000)
    ]
    raw = admin.get("/api/v1/jobs/j1/output/raw", params={"namespace": namespace})
    assert raw.content == b"".join(data)
    print(f"\nPython Producer over Ray: {2000 / elapsed_s:,.0f} appends/s (2000 x 1 KiB)")


def test_a_producer_restarted_at_its_next_seq_resends_without_doubling(client, namespace):
    client.submit(namespace, "j1")
    with client.producer(namespace, "j1", seq=1) as first:
        for text in ("a", "b", "c"):
            first.write(text)
        first.flush()
        assert first.last_ack is not None and first.last_ack.seq == 3
    with client.producer(namespace, "j1", seq=2) as again:
        for text in ("b", "c", "d"):
            again.write(text)
        assert [a.seq for a in again.flush()] == [2, 3, 4]
    wrong = client.producer(namespace, "j1", seq=4)
    wrong.write("X")
    with pytest.raises(Conflict):
        wrong.flush()
    wrong.abort()
    assert client.output(namespace, "j1") == b"abcd"
