"""ray-cluster.yaml is a RayService that deploys this app, with GCS fault tolerance."""

from __future__ import annotations

import importlib
from pathlib import Path

import ray
import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "ray-cluster.yaml"


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_manifest_is_a_rayservice_on_our_ray_version():
    doc = _manifest()
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    assert doc["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_serve_config_imports_our_app_builder_with_valid_args():
    serve_config = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, attr = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    application = builder(dict(app["args"]))
    assert type(application).__name__ == "Application"
    (deployment,) = app["deployments"]
    assert deployment["name"] == "Api" and deployment["max_ongoing_requests"] >= 1000
    assert "request_timeout_s" not in serve_config.get("http_options", {})


def test_cluster_has_head_workers_and_gcs_fault_tolerance():
    cluster = _manifest()["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] >= 1
    assert workers["template"]["spec"]["containers"][0]["image"] == head["image"]
