"""Rendezvous routing: stable, spread, and minimal movement when shards are added."""

from actors.routing import shard_for


def test_same_namespace_always_maps_to_the_same_shard():
    assert {shard_for("acme", 8) for _ in range(10)} == {shard_for("acme", 8)}


def test_namespaces_spread_over_all_shards():
    counts = [0] * 8
    for i in range(8000):
        counts[shard_for(f"tenant-{i}", 8)] += 1
    assert min(counts) > 800 and max(counts) < 1200


def test_adding_a_shard_moves_only_its_share():
    names = [f"tenant-{i}" for i in range(4000)]
    moved = sum(shard_for(n, 8) != shard_for(n, 9) for n in names)
    assert moved < len(names) * 0.2
    assert all(shard_for(n, 9) == 8 for n in names if shard_for(n, 8) != shard_for(n, 9))
