"""Start or join Ray, create the shard actors, deploy the Serve app; and tear it all down."""

from __future__ import annotations

import errno
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ray
from ray import serve

from actors.dispatcher import APP_NAME as DISPATCHER_APP
from actors.dispatcher import WebhookDispatcher
from actors.routing import shard_for
from actors.shard_actor import create_shards
from cluster import ray_connect
from cluster.settings import Settings
from serve_app.app import Api
from serve_app.context import ApiConfig
from serve_app.keys import sha256
from storage.errors import Conflict

APP_NAME = "aos"
DEFAULT_NAMESPACE = "default"


class PortInUse(RuntimeError):
    """The HTTP port is taken by another process (another service, or anything else)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is already in use; stop what holds it or choose --port"
        )
        self.port = port


@dataclass
class Service:
    url: str
    admin_key: str
    admin_key_generated: bool
    shards: list[Any]
    started_ray: bool
    #: The Ray cluster's GCS address (host:port): in-cluster clients join it with this.
    ray_address: str


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


def start(
    settings: Settings,
    *,
    on_progress: Callable[[str], None] = lambda _: None,
    log_to_driver: bool = True,
) -> Service:
    """Bring the whole service up and return once it answers HTTP.

    Uses the Ray connection this process already has, else joins exactly
    `settings.ray_address`, else starts a private local cluster (cluster/ray_connect.py).
    `on_progress` gets one short line per step. Raises `PortInUse` when the HTTP port is
    taken and `RayUnreachable` when the named cluster does not answer.
    """
    ensure_port_free(settings.http_host, settings.http_port)
    started_ray = not ray.is_initialized()
    if started_ray:
        where = f"joining {settings.ray_address}" if settings.ray_address else "a private cluster"
        on_progress(f"starting Ray: {where}")
        ray_address = ray_connect.connect(
            settings.ray_address,
            log_to_driver=log_to_driver,
            timeout_s=settings.ray_connect_timeout_s,
        )
    else:
        ray_address = ray.get_runtime_context().gcs_address
    key, generated = admin_key(settings)
    on_progress(f"starting Serve on {settings.http_host}:{settings.http_port}, webhook dispatcher")
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    dispatcher = WebhookDispatcher.bind(**settings.dispatcher_options())
    serve.run(dispatcher, name=DISPATCHER_APP, route_prefix=None)
    on_progress(f"starting {settings.num_shards} shards on {redacted(settings.storage_url)}")
    shards = deploy_shards(settings)
    ensure_namespace(shards, settings.num_shards, DEFAULT_NAMESPACE)
    on_progress("deploying the HTTP API")
    app = Api.options(num_replicas=settings.num_replicas).bind(
        api_config(settings, key), settings.shard_options()
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://{settings.http_host}:{settings.http_port}"
    return Service(url, key, generated, shards, started_ray, ray_address)


def ensure_port_free(host: str, port: int) -> None:
    """Raise `PortInUse` if something listens on host:port.

    Serve's proxy binds with SO_REUSEPORT, so a second service on a taken port would start
    and the kernel would split requests between the two. This bind has no SO_REUSEPORT:
    it fails while any socket listens there.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from exc
        raise


def redacted(url: str) -> str:
    """`url` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


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
