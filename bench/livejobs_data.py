"""Fill a store with Running jobs fast, spread evenly over every shard slot, for
`bench/livejobs.py`: written straight through `Store.commit` in big fenced batches, as a
shard's group commit would have written them.

Each job looks like a real one: a UUID for its id, a title and a short description, three
tags from a small vocabulary, a request hash, a TTL on half of them, and a webhook URL
(with `job.completed`) on a quarter: made by `JobSpec.new_job`, as a submit makes it.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass

from actors.commands import JobSpec
from actors.namespace_settings import NamespaceSettings
from actors.routing import shard_for
from storage.base import Store
from storage.records import Batch, Job, Namespace

#: Namespaces per slot: the jobs of a slot are spread over these many tenants.
NAMESPACES_PER_SLOT = 16
#: Jobs per commit: big batches, so filling 1M jobs takes seconds, not minutes.
JOBS_PER_COMMIT = 20_000
WEBHOOK_URL = "https://hooks.example.com/aos/callback"
TEAMS = tuple(f"team-{n}" for n in range(8))
DESCRIPTIONS = tuple(f"nightly export of customer report {n}" for n in range(50))


@dataclass(frozen=True)
class Plan:
    """Which namespaces each slot owns (`plan.namespaces[slot]`), and the job count."""

    jobs: int
    shards: int
    namespaces: tuple[tuple[str, ...], ...]

    def namespace_of(self, index: int) -> str:
        slot = index % self.shards
        names = self.namespaces[slot]
        return names[(index // self.shards) % len(names)]


def plan(jobs: int, shards: int, *, prefix: str = "tenant") -> Plan:
    """`NAMESPACES_PER_SLOT` namespaces for every slot, found by `shard_for` itself."""
    found: list[list[str]] = [[] for _ in range(shards)]
    k = 0
    while any(len(names) < NAMESPACES_PER_SLOT for names in found):
        name = f"{prefix}-{k}"
        names = found[shard_for(name, shards)]
        if len(names) < NAMESPACES_PER_SLOT:
            names.append(name)
        k += 1
    return Plan(jobs, shards, tuple(tuple(names) for names in found))


def job(index: int, namespace: str, slot: int, now: float, rng: random.Random) -> Job:
    """The `index`th job, as a submit makes it (`JobSpec.new_job`): Running, realistic
    fields (see the module's docstring)."""
    hooked = index % 4 == 0
    spec = JobSpec(
        title=f"render batch {index}",
        description=DESCRIPTIONS[index % len(DESCRIPTIONS)],
        tags=("prod", TEAMS[index % len(TEAMS)], "gpu" if index % 3 else "cpu"),
        webhook_url=WEBHOOK_URL if hooked else None,
        webhook_events=("job.completed",) if hooked else None,
        ttl_s=86_400 if index % 2 else None,
    )
    job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return spec.new_job(namespace, job_id, slot=slot, now=now - rng.random() * 3600)


async def fill(store: Store, layout: Plan, *, seed: int = 13) -> dict[int, list[Job]]:
    """Write `layout.jobs` Running jobs and their namespaces; returns one sample job per
    slot (the first written), to read back later."""
    now = time.time()
    settings = NamespaceSettings().with_new_secret().to_config()
    names = [name for names in layout.namespaces for name in names]
    await store.commit(Batch(namespaces=[Namespace(name, now, settings) for name in names]))
    epochs = [await store.acquire_shard(slot, "bench-fill") for slot in range(layout.shards)]
    rng = random.Random(seed)
    samples: dict[int, list[Job]] = {}
    for first in range(0, layout.jobs, JOBS_PER_COMMIT):
        by_slot: dict[int, list[Job]] = {}
        for index in range(first, min(layout.jobs, first + JOBS_PER_COMMIT)):
            slot = index % layout.shards
            made = job(index, layout.namespace_of(index), slot, now, rng)
            by_slot.setdefault(slot, []).append(made)
        for slot, jobs in by_slot.items():
            await store.commit(Batch(slot=slot, epoch=epochs[slot], jobs=jobs))
            samples.setdefault(slot, jobs[:1])
    return samples
