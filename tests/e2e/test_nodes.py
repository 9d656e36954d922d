"""Shards over several nodes, and the loss of one: on a three-node Ray cluster in one
machine (tests/e2e/nodes_cluster.py), a worker holding a shard is killed while a producer
appends and the history checker's clients (tests/history.py) submit, append, complete and
cancel on both shards. Every answer is a 2xx or a 503 with `Retry-After`, the shard comes
back on a live node under a newer epoch, every acknowledged append is in the output, in
order, and the store holds exactly the acknowledged history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from actors.routing import shard_for
from tests.e2e import served
from tests.e2e.appender import Appender
from tests.e2e.nodes_cluster import ADMIN_KEY, PREFIX
from tests.e2e.waiting import wait_until
from tests.history import check_history

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: No answer may take longer ("no hang"); the producer's own request timeout is longer.
ANSWER_BOUND_S = 60.0


class NodesCluster:
    def __init__(self, proc: subprocess.Popen[str], url: str, workers: list[str]) -> None:
        self.proc, self.url, self.workers = proc, url, workers

    def kill(self, node_id: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"kill {node_id}\n")
        self.proc.stdin.flush()
        assert said(self.proc) == "killed"


def said(proc: subprocess.Popen[str]) -> str:
    """The cluster process's next line for us (Ray's own lines skipped); "" if it ended."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(PREFIX + " "):
            return line.removeprefix(PREFIX + " ").strip()
    return ""


@pytest.fixture
def nodes(tmp_path) -> Iterator[NodesCluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.nodes_cluster", str(tmp_path)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its Ray processes too: served.kill_all ends the session
    )
    try:
        line = said(proc)
        assert line, "the three-node cluster did not start"
        started = json.loads(line)
        yield NodesCluster(proc, started["url"], started["workers"])
        assert proc.stdin is not None
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            served.kill_all(proc)


def shards(http: httpx.Client) -> list[dict[str, Any]]:
    response = http.get("/api/v1/admin/shards")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def test_a_lost_node_s_shard_serves_again_on_a_live_node_and_no_acknowledged_append_is_lost(
    nodes: NodesCluster,
) -> None:
    with httpx.Client(base_url=nodes.url, headers=ADMIN, timeout=30) as http:
        before = wait_until(
            lambda: (rows := shards(http)) and all(r["state"] == "serving" for r in rows) and rows,
            timeout_s=60,
            what="both shards to serve",
        )
        assert {r["node"] for r in before} <= set(nodes.workers)  # never on the head
        victim = before[0]["node"]
        lost = [r["slot"] for r in before if r["node"] == victim]
        namespace = next(f"ns{i}" for i in range(1000) if shard_for(f"ns{i}", 2) == lost[0])
        assert http.post("/api/v1/namespaces", json={"name": namespace}).status_code == 201
        params = {"namespace": namespace}
        assert http.post("/api/v1/jobs", params=params, json={"jobId": "j"}).status_code == 201
        namespace_shard = http.get(f"/api/v1/namespaces/{namespace}").json()["shard"]
        assert namespace_shard == lost[0]

        producer = Appender(nodes.url, ADMIN, namespace, "j").start()
        wait_until(lambda: len(producer.acked) >= 20, timeout_s=60, what="appends before")
        killed_at = 0.0
        after: list[dict[str, Any]] = []

        def lose_the_node() -> None:  # the checker's fault: returns once the shard is back
            nonlocal killed_at, after
            killed_at = time.monotonic()
            nodes.kill(victim)
            after = wait_until(moved, timeout_s=90, what="the lost shards to serve on a live node")

        def moved() -> list[dict[str, Any]] | None:
            rows = shards(http)
            back = [rows[slot] for slot in lost]
            if all(r["state"] == "serving" and r["node"] not in (None, victim) for r in back):
                return rows
            return None

        history = check_history(
            nodes.url, ADMIN_KEY, duration_s=12, fault=lose_the_node, fault_at_s=3, clients=4
        )
        print(history.summary())
        assert history.ok, history.summary()  # lost, duplicated, gaps, foreign, bad: none
        assert history.acked["submit"] > 0 and history.acked["append"] > 0, history.summary()
        assert set(history.codes) <= {"503 shard_unavailable", "503 overloaded"}, history.codes
        wait_until(
            lambda: sum(at > killed_at for _, at in producer.acked) >= 10,
            timeout_s=90,
            what="10 appends acknowledged after the loss",
        )
        producer.finish()

        figures = {
            "answers": len(producer.answers),
            "statuses": sorted({(a.status, a.code or "") for a in producer.answers}),
            "longest gap s": round(producer.longest_gap_s(killed_at), 1),
            "slowest answer s": round(max(a.took_s for a in producer.answers), 1),
        }
        assert producer.bad_answers() == [], figures  # no 500, no unanswered request
        assert figures["slowest answer s"] < ANSWER_BOUND_S, figures
        for slot in lost:
            assert after[slot]["epoch"] > before[slot]["epoch"]
            assert after[slot]["node"] in set(nodes.workers) - {victim}
        output = http.get("/api/v1/jobs/j/output/raw", params=params)
        assert output.status_code == 200
        assert output.text == producer.expected_output()  # none lost, none twice, no gap
        assert [seq for seq, _ in producer.acked] == list(range(1, len(producer.acked) + 1))
