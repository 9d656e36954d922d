"""Start or join Ray, create the shard actors, deploy the Serve app; and tear it all down."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from actors.dispatcher import APP_NAME as DISPATCHER_APP
from actors.dispatcher import WebhookDispatcher
from actors.routing import shard_for
from actors.shard_actor import create_shards
from cluster import http_port, ray_connect
from cluster.settings import Settings
from serve_app.app import Api
from serve_app.context import ApiConfig
from serve_app.keys import sha256
from storage.errors import Conflict

APP_NAME = "aos"
DEFAULT_NAMESPACE = "default"
#: How long the API may take to answer at its URL once Serve reports it running.
READY_TIMEOUT_S = 15.0


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
    on_connected: Callable[[], None] = lambda: None,
    log_to_driver: bool = True,
) -> Service:
    """Bring the whole service up and return once it answers HTTP at `Service.url`.

    Uses the Ray connection this process already has, else joins exactly
    `settings.ray_address`, else starts a private local cluster (cluster/ray_connect.py).
    `on_progress` gets one short line per step, `on_connected` a call once Ray is
    connected. Raises `http_port.PortInUse` when the
    HTTP port is taken, `RayUnreachable` when the named cluster does not answer and
    `NotServing` when a Serve already running in the cluster listens elsewhere.
    """
    port_lock = http_port.reserve(settings.http_host, settings.http_port)
    try:
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
        settings.ray_address, log_to_driver=log_to_driver, timeout_s=settings.ray_connect_timeout_s
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
    started_serve = not serve_running()
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
    service = Service(
        url, key, generated, shards, ray_address, started_ray, started_serve, port_lock
    )
    if not answers(url):
        stop(service)
        raise NotServing(url)
    return service


class NotServing(RuntimeError):
    """The API was deployed, but nothing answers at its URL."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"the API does not answer at {url}: a Serve already running in this Ray cluster "
            "keeps the host and port it was started with (use those, or another cluster)"
        )


def serve_running() -> bool:
    """Whether this Ray cluster already runs Serve (its controller is a named actor)."""
    return any(
        actor["name"] == SERVE_CONTROLLER_NAME and actor["namespace"] == SERVE_NAMESPACE
        for actor in ray.util.list_named_actors(all_namespaces=True)
    )


def answers(url: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Whether `GET url/healthz` answers 200 within `timeout_s` (the proxy learns routes late)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


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
    """Delete the apps and the shards (their acknowledged writes are already durable), and
    tear down what this process set up: Serve, the Ray connection (a private cluster ends
    with it), the port."""
    serve.delete(APP_NAME)
    serve.delete(DISPATCHER_APP)
    for shard in service.shards:
        ray.kill(shard, no_restart=True)
    if service.started_serve:
        serve.shutdown()
    if service.started_ray:
        ray.shutdown()
    if service.port_lock is not None:
        service.port_lock.close()
