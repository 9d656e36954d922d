"""The service on a three-node Ray cluster in one machine (`ray.cluster_utils.Cluster`): a
head holding the ingress and the `Api` replica, two workers holding the shards. Run as its own
process (the test session has its own Ray) and driven over stdin by tests/e2e/test_nodes.py:

    python -m tests.e2e.nodes_cluster DATA_DIR

prints `AOS-NODES {"url", "workers": [node id hex, ...]}` once the service answers, then
reads commands: `kill <node id>` (the node's raylet and workers get SIGKILL; answers
`AOS-NODES killed`), `quit` (tears down its cluster, and only it). Ray prints its own lines
on the same stdout: the driver reads only those with the prefix.
"""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

from cluster import bootstrap
from cluster.settings import Settings
from tests.conftest import free_port

ADMIN_KEY = "nodes-admin"
PREFIX = "AOS-NODES"
#: The custom resource of the nodes that may hold shards: the workers, not the head.
SHARD_RESOURCE = "aos_shard"
#: Ray's own mark of the head node: the `Api` replica stays beside the ingress.
HEAD_RESOURCE = "node:__internal_head__"
#: A lost node is declared dead after 3 missed health checks 0.5 s apart (Ray's defaults:
#: 5 checks 3 s apart, ~15 s): the test waits less for what it checks.
FAST_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
}


def main(data_dir: str) -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "_system_config": FAST_DETECTION},
    )
    workers = [cluster.add_node(num_cpus=0, resources={SHARD_RESOURCE: 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    settings = Settings(
        ray_address=cluster.address,
        storage_url=f"sqlite:///{data_dir}/aos.db",
        http_port=free_port(),
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
        fallback_proxy_port=free_port(),
        admin_key=ADMIN_KEY,
        num_shards=2,
        num_replicas=1,
        shard_resource=SHARD_RESOURCE,
        api_resource=HEAD_RESOURCE,
        proxy_location="HeadOnly",
    )
    service = bootstrap.start(settings, log_to_driver=False)
    said = {"url": service.url, "workers": [w.node_id for w in workers]}
    print(PREFIX, json.dumps(said), flush=True)
    for line in sys.stdin:
        command, _, node_id = line.strip().partition(" ")
        if command == "kill":
            [node] = [w for w in workers if w.node_id == node_id]
            cluster.remove_node(node, allow_graceful=False)
            print(PREFIX, "killed", flush=True)
        elif command == "quit":
            break
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
