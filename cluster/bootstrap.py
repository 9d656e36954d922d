"""Start or join Ray, create the shard actors, deploy the Serve app; and tear it all down."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.context import _get_global_client

from actors.namespace_settings import NamespaceChanges
from actors.shard_actor import create_shards
from actors.shard_client import ShardClient
from actors.webhooks.dispatcher import APP_NAME as DISPATCHER_APP
from actors.webhooks.dispatcher import WebhookDispatcher
from cluster import blocking, http_port, ray_connect
from cluster.settings import Settings
from serve_app.deployment import Api, actor_options
from serve_app.deps import ApiConfig
from serve_app.keys import key_hash
from storage.errors import Conflict

APP_NAME = "aos"
DEFAULT_NAMESPACE = "default"


@dataclass
class Service:
    url: str
    admin_key: str
    admin_key_generated: bool
    shards: list[Any]
    #: The Ray cluster's address: in-cluster clients join it with this.
    ray_address: str
    #: What this process set up and so tears down: its connection to Ray, Serve itself
    #: (never a Serve that was already running: other applications live there), the port.
    started_ray: bool
    started_serve: bool
    port_lock: IO[bytes] | None = None
    #: `host:port` of each node's Prometheus metrics (`ray_connect.metrics_endpoints`).
    metrics_endpoints: list[str] = field(default_factory=list)


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
        admin_key_sha256=key_hash(key),
        max_wait_s=settings.max_wait_s,
        heartbeat_s=settings.heartbeat_s,
        max_in_flight=settings.max_in_flight,
        max_queued_s=settings.max_queued_s,
        shard_call_timeout_s=settings.shard_call_timeout_s,
    )


def start(
    settings: Settings,
    *,
    on_progress: Callable[[str], None] = lambda _: None,
    on_connected: Callable[[], None] = lambda: None,
    log_to_driver: bool = True,
) -> Service:
    """Bring the whole service up and return once it serves at `Service.url`.

    Uses the Ray connection this process already has, else joins exactly
    `settings.ray_address`, else starts a private local cluster (cluster/ray_connect.py).
    `on_progress` gets one short line per step, `on_connected` a call once Ray is
    connected. Raises `http_port.PortInUse` when the HTTP port is taken,
    `RayUnreachable` when the named cluster does not answer, and `ServeElsewhere` when
    the cluster already runs a Serve on another host or port.
    """
    port_lock = http_port.reserve(settings.http_host, settings.http_port)
    try:
        if settings.ray_address is None and not ray.is_initialized():
            # A private cluster runs no Serve yet: whatever listens there is not ours.
            for where, at, choose in settings.listening():
                http_port.ensure_free(where, at, choose)
            if settings.metrics_port is not None:  # Ray's agent listens on every interface
                http_port.ensure_free("0.0.0.0", settings.metrics_port, "--metrics-port")
        started_ray, ray_address = join_ray(
            settings, on_progress=on_progress, log_to_driver=log_to_driver
        )
        on_connected()
        return deploy(settings, ray_address, started_ray, port_lock, on_progress=on_progress)
    except BaseException:
        port_lock.close()
        raise


def join_ray(
    settings: Settings, *, on_progress: Callable[[str], None], log_to_driver: bool
) -> tuple[bool, str]:
    """Connect this process to Ray unless it is already: (connected here, cluster address)."""
    if ray.is_initialized():
        return False, ray.get_runtime_context().gcs_address
    where = f"joining {settings.ray_address}" if settings.ray_address else "a private cluster"
    on_progress(f"starting Ray: {where}")
    address = ray_connect.connect(
        settings.ray_address,
        log_to_driver=log_to_driver,
        timeout_s=settings.ray_connect_timeout_s,
        metrics_port=settings.metrics_port,
    )
    return True, address


def deploy(
    settings: Settings,
    ray_address: str,
    started_ray: bool,
    port_lock: IO[bytes] | None,
    *,
    on_progress: Callable[[str], None],
) -> Service:
    """Serve, the webhook dispatcher, the shards and the API, in a connected process."""
    key, generated = admin_key(settings)
    on_progress(f"starting Serve on {settings.http_host}:{settings.http_port}, webhook dispatcher")
    started_serve = start_serve(settings)
    dispatcher = WebhookDispatcher.bind(**settings.dispatcher_options())  # type: ignore[attr-defined]  # by @serve
    serve.run(dispatcher, name=DISPATCHER_APP, route_prefix=None)
    on_progress(f"starting {settings.num_shards} shards on {redacted(settings.storage_url)}")
    shards = deploy_shards(settings)
    on_progress("deploying the HTTP API")
    app = Api.options(  # type: ignore[attr-defined]
        num_replicas=settings.num_replicas,
        ray_actor_options=actor_options(settings.api_resource),
    ).bind(api_config(settings, key), settings.shard_options())
    serve.run(app, name=APP_NAME, route_prefix="/")
    host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host
    url = f"http://{host}:{settings.http_port}"
    return Service(
        url,
        key,
        generated,
        shards,
        ray_address,
        started_ray,
        started_serve,
        port_lock,
        metrics_endpoints=ray_connect.metrics_endpoints(),
    )


class ServeElsewhere(RuntimeError):
    """The cluster already runs a Serve, on another host or port than asked for."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"Serve already runs in this Ray cluster on {host}:{port}, and a running Serve "
            "keeps its host and port: start with those (--host, --port) or use another cluster"
        )


def start_serve(settings: Settings) -> bool:
    """Start Serve on the HTTP host and port, or use the one already running there; True if
    started.

    The ingress's variables (cluster/ingress.py) go to the controller's environment, and
    from it to its proxies and replicas. A Serve that already runs (its controller is a
    named actor) ignores new options, so it must listen where asked: else `ServeElsewhere`;
    it keeps its ingress. Before starting one, every port it will open must be free
    (`http_port.PortInUse`).
    """
    host, port = settings.http_host, settings.http_port
    running = any(
        actor["name"] == SERVE_CONTROLLER_NAME and actor["namespace"] == SERVE_NAMESPACE
        for actor in ray.util.list_named_actors(all_namespaces=True)
    )
    if not running:
        for where, at, choose in settings.listening():
            http_port.ensure_free(where, at, choose)
    serve.start(
        proxy_location=settings.proxy_location,
        http_options={"host": host, "port": port},
        controller_options={"runtime_env": {"env_vars": settings.ingress_environment()}},
    )
    client = _get_global_client()  # set by serve.start
    assert client is not None
    if running and (client.http_config.host, client.http_config.port) != (host, port):
        raise ServeElsewhere(client.http_config.host, client.http_config.port)
    return not running


def redacted(url: str) -> str:
    """`url` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def deploy_shards(settings: Settings) -> list[Any]:
    """The shard actors, started, with the default namespace made; returns their handles."""
    handles = create_shards(
        num_shards=settings.num_shards,
        store_url=settings.storage_url,
        config=settings.shard_options(),
    )
    # Their first calls wait for their start (the lease, their Running jobs reloaded).
    starting = ShardClient(num_shards=settings.num_shards, call_timeout_s=settings.start_timeout_s)
    blocking.run(_ready(starting))
    return handles


async def _ready(shards: ShardClient) -> None:
    await shards.ping_all()
    try:
        await shards.create_namespace(DEFAULT_NAMESPACE, NamespaceChanges(), actor="system")
    except Conflict:
        pass


def stop(service: Service) -> None:
    """Delete the apps and the shards (their acknowledged writes are already durable), and
    tear down what this process set up: Serve, the Ray connection (a private cluster ends
    with it), the port."""
    serve.delete(APP_NAME)
    serve.delete(DISPATCHER_APP)
    for shard in service.shards:
        ray.kill(shard, no_restart=True)
    if service.started_serve:
        serve.shutdown()  # type: ignore[no-untyped-call]
    if service.started_ray:
        ray.shutdown()
    if service.port_lock is not None:
        service.port_lock.close()
