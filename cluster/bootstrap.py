"""Start or join Ray, create the shard actors, deploy the Serve app; and tear it all down."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from actors.dispatcher import APP_NAME as DISPATCHER_APP
from actors.dispatcher import WebhookDispatcher
from actors.routing import RAY_NAMESPACE, shard_for
from actors.shard_actor import create_shards
from cluster.settings import Settings
from serve_app.app import Api
from serve_app.context import ApiConfig
from serve_app.keys import sha256
from storage.errors import Conflict

APP_NAME = "aos"
DEFAULT_NAMESPACE = "default"
log = logging.getLogger(__name__)


@dataclass
class Service:
    url: str
    admin_key: str
    admin_key_generated: bool
    shards: list[Any]
    started_ray: bool


def admin_key(settings: Settings) -> tuple[str, bool]:
    """The bootstrap admin key: from settings, else from the key file, else a new one."""
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value(), False
    path = settings.admin_key_path()
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "aos_admin_" + secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key, True


def api_config(settings: Settings, key: str) -> ApiConfig:
    return ApiConfig(
        store_url=settings.storage_url,
        num_shards=settings.num_shards,
        admin_key_sha256=sha256(key),
        max_chunk_bytes=settings.max_chunk_bytes,
        max_wait_s=settings.max_wait_s,
        heartbeat_s=settings.heartbeat_s,
    )


def start(settings: Settings) -> Service:
    """Bring the whole service up and return once it answers HTTP."""
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            address=settings.ray_address,
            namespace=RAY_NAMESPACE,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    key, generated = admin_key(settings)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    dispatcher = WebhookDispatcher.bind(**settings.dispatcher_options())
    serve.run(dispatcher, name=DISPATCHER_APP, route_prefix=None)
    shards = deploy_shards(settings)
    ensure_namespace(shards, settings.num_shards, DEFAULT_NAMESPACE)
    app = Api.options(num_replicas=settings.num_replicas).bind(
        api_config(settings, key), settings.shard_options()
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://{settings.http_host}:{settings.http_port}"
    return Service(url, key, generated, shards, started_ray)


def deploy_shards(settings: Settings) -> list[Any]:
    shards = create_shards(
        num_shards=settings.num_shards,
        store_url=settings.storage_url,
        config=settings.shard_options(),
    )
    ray.get([shard.ready.remote() for shard in shards])
    return shards


def ensure_namespace(shards: list[Any], num_shards: int, name: str) -> None:
    try:
        ray.get(shards[shard_for(name, num_shards)].create_namespace.remote(name, {}, "system"))
    except Conflict:
        pass


def stop(service: Service) -> None:
    """Delete the app and the shards (their acknowledged writes are already durable)."""
    serve.delete(APP_NAME)
    serve.delete(DISPATCHER_APP)
    for shard in service.shards:
        ray.kill(shard, no_restart=True)
    if service.started_ray:
        serve.shutdown()
        ray.shutdown()
