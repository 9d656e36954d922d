"""ray-cluster.yaml is a RayService that deploys this app, with GCS fault tolerance."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import ray
import yaml
from ray.serve.config import AutoscalingConfig

from actors.webhooks import autoscaling
from actors.webhooks.dispatcher import MAX_ONGOING_CALLS

MANIFEST = Path(__file__).resolve().parents[2] / "ray-cluster.yaml"
PODMONITOR = MANIFEST.with_name("ray-podmonitor.yaml")


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_manifest_is_a_rayservice_on_our_ray_version():
    doc = _manifest()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    assert doc["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_serve_config_imports_our_app_builders_with_valid_args():
    serve_config = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    apps = {app["name"]: app for app in serve_config["applications"]}
    assert set(apps) == {"aos", "aos-webhooks"}
    for app in apps.values():
        module, attr = app["import_path"].split(":")
        builder = getattr(importlib.import_module(module), attr)
        assert type(builder(dict(app["args"]))).__name__ == "Application"
    (api,) = apps["aos"]["deployments"]
    assert api["name"] == "Api" and api["max_ongoing_requests"] >= 1000
    assert "request_timeout_s" not in serve_config.get("http_options", {})
    assert apps["aos-webhooks"]["route_prefix"] is None
    (dispatcher,) = apps["aos-webhooks"]["deployments"]
    assert dispatcher["name"] == "WebhookDispatcher" and "autoscaling_config" in dispatcher


def test_the_dispatcher_scales_on_pending_deliveries_with_the_deployments_policy():
    """The manifest's autoscaling_config replaces the deployment's whole one: it must name
    the same policy, with kwargs the policy takes, and keep the request limit out of the way."""
    serve_config = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    apps = {app["name"]: app for app in serve_config["applications"]}
    (dispatcher,) = apps["aos-webhooks"]["deployments"]
    config = AutoscalingConfig(**dispatcher["autoscaling_config"])
    assert config.policy.policy_function == autoscaling.POLICY
    autoscaling.PendingDeliveriesPolicy(**config.policy.policy_kwargs)  # takes them
    # The same as `aos serve` deploys, but for the bound on replicas (a bigger cluster).
    assert config == AutoscalingConfig(
        **{**autoscaling.AUTOSCALING_CONFIG, "max_replicas": config.max_replicas}
    )
    assert config.max_replicas >= autoscaling.AUTOSCALING_CONFIG["max_replicas"]
    assert dispatcher["max_ongoing_requests"] == MAX_ONGOING_CALLS


def test_cluster_has_head_workers_and_gcs_fault_tolerance():
    cluster = _manifest()["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] >= 1
    assert workers["template"]["spec"]["containers"][0]["image"] == head["image"]


def test_every_pod_runs_serve_with_haproxy_and_its_admin_ports_on_loopback():
    cluster = _manifest()["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {
            var["name"]: var.get("value") for var in pod["template"]["spec"]["containers"][0]["env"]
        }
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("/aos-haproxy")
        assert env["AOS_HAPROXY_ADMIN_HOST"] == "127.0.0.1"
        assert int(env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"]) >= 3600
        assert int(env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]) >= 30


def test_every_ray_pod_exports_metrics_on_a_named_port_that_the_podmonitor_scrapes():
    cluster = _manifest()["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        port = group["rayStartParams"]["metrics-export-port"]
        pod = group["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == port
        (container,) = pod["spec"]["containers"]
        assert {"containerPort": int(port), "name": "metrics"} in container["ports"]
    monitor = yaml.safe_load(PODMONITOR.read_text())
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_shards_run_only_on_the_worker_nodes_that_offer_their_resource():
    serve_config = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    (api,) = [app for app in serve_config["applications"] if app["name"] == "aos"]
    resource = api["args"]["shard_options"]["node_resource"]
    cluster = _manifest()["spec"]["rayClusterConfig"]
    assert resource not in cluster["headGroupSpec"]["rayStartParams"].get("resources", "")
    for group in cluster["workerGroupSpecs"]:
        # KubeRay passes the value to `ray start --resources` as is: a quoted JSON object.
        offered = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert offered[resource] >= 1
