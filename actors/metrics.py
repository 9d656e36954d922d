"""The service's Prometheus metrics, each defined once: its name, meaning, tags and buckets.

They are recorded with `ray.util.metrics` in the process that sees the event (an `Api`
replica, a shard actor) and exported by the metrics agent of that process's node, which
serves `/metrics` on the node's metrics export port (`aos serve --metrics-port`,
`ray start --metrics-export-port`). Ray prefixes every name with `ray_` and adds its own
labels (`WorkerId`, `NodeAddress`, `SessionName`, ...), so `aos_http_requests_total` is
scraped as `ray_aos_http_requests_total{WorkerId=..., method=..., route=..., status=...}`.

Every tag has a bounded set of values: a route template (never a raw path), a status code,
a shard slot (at most `AOS_NUM_SHARDS`), an outcome. No job id, namespace or key.

Ray keeps a histogram's buckets exactly but reports its `_sum` from the buckets' midpoints:
read quantiles with `histogram_quantile`, not means from `_sum / _count`.

Outside Ray (unit tests, the `aos` driver) recording is a no-op.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

from ray.util.metrics import Counter, Gauge, Histogram

from storage.records import Delivery, DeliveryStatus

#: Seconds: from 1 ms (a cached read) to 10 s (a write queued behind a store outage).
LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
#: Seconds a store commit takes: a local SQLite fsync is ~1 ms, a PostgreSQL round trip more.
COMMIT_BUCKETS_S = [0.0005, *LATENCY_BUCKETS_S]
#: Adds per group commit, up to the committer's largest batch (`max_batch_items`, 5,000).
BATCH_SIZE_BUCKETS = [1.0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

#: How long a `Tally` adds up before it records (Ray exports every few seconds anyway).
TALLY_FLUSH_S = 1.0

#: The `route` of a request no route matched (a 404 of the router, not of a job).
UNMATCHED_ROUTE = "unmatched"

HTTP_REQUESTS = Counter(
    "aos_http_requests_total",
    description="HTTP requests and WebSocket sessions answered by an Api replica, by method, "
    "route template and status (101: a WebSocket accepted; 499: the client left first).",
    tag_keys=("method", "route", "status"),
)
HTTP_REQUEST_DURATION = Histogram(
    "aos_http_request_duration_seconds",
    description="Seconds from a request's arrival at the Api replica to its response head "
    "(time to first byte; a stream's is the time to open it). Long-polls (?wait=) are not "
    "observed: the client chose their wait.",
    boundaries=LATENCY_BUCKETS_S,
    tag_keys=("method", "route"),
)
HTTP_OPEN_STREAMS = Gauge(
    "aos_http_open_streams",
    description="Server-Sent Events streams and WebSocket sessions open on this Api replica.",
    tag_keys=("route",),
)
HTTP_SHED = Counter(
    "aos_http_shed_requests_total",
    description="503 overloaded answers sent: shed at the ingress, or refused by a shard's "
    "full write buffer and carried back.",
)
SHARD_SHED = Counter(
    "aos_shard_shed_writes_total",
    description="Writes a shard refused because its write buffer was full (from every caller: "
    "HTTP, WebSocket producers, the Python client, webhook attempt records).",
    tag_keys=("slot",),
)
COMMIT_BATCH_SIZE = Histogram(
    "aos_commit_batch_size",
    description="Adds (callers' writes) per group commit that the store accepted.",
    boundaries=BATCH_SIZE_BUCKETS,
    tag_keys=("slot",),
)
COMMIT_DURATION = Histogram(
    "aos_commit_duration_seconds",
    description="Seconds one group commit's store transaction took (accepted or not).",
    boundaries=COMMIT_BUCKETS_S,
    tag_keys=("slot",),
)
PENDING_WRITES = Gauge(
    "aos_shard_pending_writes",
    description="Writes a shard holds that are not durable yet (its write buffer).",
    tag_keys=("slot",),
)
OUTBOX_DEPTH = Gauge(
    "aos_shard_outbox_depth",
    description="Webhook deliveries a shard holds that are not delivered or failed yet.",
    tag_keys=("slot",),
)
JOBS = Counter(
    "aos_jobs_total",
    description="Jobs a shard made durable, by event: created (a new job, not a repeated "
    "submit), succeeded, failed, cancelled (the job finished so).",
    tag_keys=("slot", "event"),
)
WEBHOOK_DELIVERIES = Counter(
    "aos_webhook_deliveries_total",
    description="Webhook attempts recorded, by outcome: delivered (2xx), retrying (another "
    "attempt is scheduled), failed (410 Gone, or attempts used up).",
    tag_keys=("outcome",),
)

#: A delivery's stored status after an attempt -> the attempt's `outcome` tag.
OUTCOMES = {
    DeliveryStatus.DELIVERED: "delivered",
    DeliveryStatus.PENDING: "retrying",
    DeliveryStatus.FAILED: "failed",
}


def slot_tags(slot: int | None) -> dict[str, str]:
    """The `slot` tag of a shard's metrics."""
    return {"slot": "-" if slot is None else str(slot)}


def record_deliveries(recorded: Iterable[Delivery]) -> None:
    """Attempts whose outcome is now durable, each delivery as stored after its attempt."""
    counts: dict[str, int] = {}
    for delivery in recorded:
        outcome = OUTCOMES[delivery.status]
        counts[outcome] = counts.get(outcome, 0) + 1
    for outcome, count in counts.items():
        WEBHOOK_DELIVERIES.inc(count, {"outcome": outcome})


def record_shard_gauges(slot: int | None, *, pending_writes: int, outbox_depth: int) -> None:
    """A shard's write buffer and outbox, as sampled now."""
    tags = slot_tags(slot)
    PENDING_WRITES.set(pending_writes, tags)
    OUTBOX_DEPTH.set(outbox_depth, tags)


class Tally:
    """A counter's increments added up here, recorded once per tag set every `flush_s`.

    A record through Ray costs microseconds in a Ray worker (its tags are converted every
    time: ~6 us with three), an add here a dict update: what is counted per request is
    tallied. Used from one event loop; a flush is scheduled when the first add after the
    last one comes in, so nothing waits longer than `flush_s`.
    """

    def __init__(
        self, counter: Counter, tag_keys: tuple[str, ...], *, flush_s: float = TALLY_FLUSH_S
    ) -> None:
        self._counter = counter
        self._tag_keys = tag_keys
        self._flush_s = flush_s
        self._pending: collections.Counter[tuple[str, ...]] = collections.Counter()

    def add(self, *tag_values: str) -> None:
        """One more, with these tag values (in `tag_keys` order)."""
        if not self._pending:
            asyncio.get_running_loop().call_later(self._flush_s, self.flush)
        self._pending[tag_values] += 1

    def flush(self) -> None:
        pending, self._pending = self._pending, collections.Counter()
        for values, count in pending.items():
            self._counter.inc(count, dict(zip(self._tag_keys, values, strict=True)))
