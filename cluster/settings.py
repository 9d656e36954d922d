"""All configuration, read once from the environment (AOS_*) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.limits import MAX_CHUNK_BYTES
from actors.shard_client import CALL_TIMEOUT_S
from cluster.ingress import HAPROXY, HARD_STOP_AFTER_S, Ingress, environment
from storage.registry import store_class


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AOS_", extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    #: "haproxy" (Serve's HAProxy ingress, throughput-optimised) or "serve" (Serve's own
    #: Python proxy); see cluster/ingress.py.
    ingress: Ingress = HAPROXY
    #: Where HAProxy's stats page and Prometheus metrics listen (never every interface).
    haproxy_admin_host: str = "127.0.0.1"
    haproxy_stats_port: int = Field(default=8404, ge=1, le=65535)
    haproxy_metrics_port: int = Field(default=9101, ge=1, le=65535)
    #: Serve's own proxy, HAProxy's fallback on the head node, on the HTTP host.
    fallback_proxy_port: int = Field(default=8500, ge=1, le=65535)
    #: Where a private cluster's Ray metrics agent serves Prometheus metrics (`/metrics`);
    #: unset, a free port Ray picks, printed at start. A joined cluster keeps its own
    #: (`ray start --metrics-export-port`).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: How long an HAProxy that a reload replaced keeps its open streams (cluster/ingress.py).
    haproxy_hard_stop_after_s: int = Field(default=HARD_STOP_AFTER_S, ge=1)
    storage_url: str = Field(default="sqlite:///./aos-data/aos.db", validate_default=True)
    num_shards: int = Field(default=4, ge=1, le=1024)
    #: `Api` replicas (ingress). Two on two cores: reads are bound by the replica's CPU,
    #: and HAProxy spreads requests over them (DESIGN-NOTES.md 28).
    num_replicas: int = Field(default=2, ge=1)
    admin_key: SecretStr | None = None
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "AOS_RAY_ADDRESS")
    )
    data_dir: Path = Path("./aos-data")
    #: How long `aos serve` waits for a named Ray cluster (`ray_address`) to answer.
    ray_connect_timeout_s: float = Field(default=10.0, gt=0)
    #: How long `aos serve` may take to start, Ray and Serve included, before it gives up.
    start_timeout_s: float = Field(default=300.0, gt=0)

    # placement on a multi-node cluster (DESIGN-NOTES.md, "Shards over many nodes")
    #: A custom Ray resource: shards run only on nodes that offer it ("" = any node).
    shard_resource: str = ""
    #: The same for `Api` replicas, e.g. "node:__internal_head__" (Ray's mark of the head).
    api_resource: str = ""
    #: Where Serve runs its HTTP proxies: unset, Serve's default (every node with a replica);
    #: "HeadOnly" where several nodes share one machine (each would bind the same port).
    proxy_location: Literal["EveryNode", "HeadOnly"] | None = None
    #: The longest the ingress waits for a shard before answering 503 (a long-poll: this
    #: beyond its own wait).
    shard_call_timeout_s: float = Field(default=CALL_TIMEOUT_S, gt=0)

    # limits
    max_chunk_bytes: int = Field(default=MAX_CHUNK_BYTES, ge=1024)
    max_wait_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float = Field(default=15.0, gt=0, le=15.0)
    max_pending_items: int = Field(default=50_000, ge=1)
    max_pending_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    #: A shard sheds (503) a write that would wait longer than this to commit (actors/admission.py).
    max_commit_wait_s: float = Field(default=5.0, gt=0, le=60)
    #: Requests one `Api` replica works on at once (long-polls aside); past it, 503 at once
    #: (serve_app/shedding.py).
    max_in_flight: int = Field(default=512, ge=1)
    #: A request that waited longer than this (since HAProxy received it) before its replica
    #: starts on it: 503 at once (serve_app/shedding.py).
    max_queued_s: float = Field(default=3.0, gt=0)
    tail_bytes_total: int = Field(default=64 * 1024 * 1024, ge=0)

    # webhooks
    #: CIDRs that webhook URLs may reach past the SSRF guard, e.g. "127.0.0.0/8" for local work.
    webhook_allowed_networks: str = ""
    webhook_coalesce_s: float = Field(default=0.5, ge=0, le=60)
    webhook_per_host_limit: int = Field(default=64, ge=1)

    # retention
    #: Each shard deletes its expired jobs in passes: one every this many seconds...
    retention_sweep_interval_s: float = Field(default=5.0, gt=0, le=3600)
    #: ...each of at most this many jobs (so at most batch / interval jobs a second a shard).
    retention_sweep_batch: int = Field(default=100, ge=1, le=10_000)

    @field_validator("storage_url")
    @classmethod
    def _a_backend_installed_here(cls, url: str) -> str:
        """A URL no backend serves, or whose driver is missing, fails here, naming the extra
        to install, not later inside the shard actors."""
        try:
            store_class(url)
        except ImportError as exc:
            raise ValueError(str(exc)) from exc
        return url

    @field_validator("storage_url")
    @classmethod
    def _sqlite_path_from_here(cls, url: str) -> str:
        """A relative SQLite path is this process's (`aos serve`'s working directory), made
        absolute before it travels: the shard actors run wherever their Ray cluster was
        started, and resolved there `./aos-data` named another service's database."""
        prefix = "sqlite:///"
        if not url.lower().startswith(prefix) or url[len(prefix) :].startswith("/"):
            return url
        return prefix + str(Path(url[len(prefix) :]).resolve())

    def local_folder(self) -> Path:
        """Where this process keeps its files: the SQLite file's folder, else `data_dir`."""
        if self.storage_url.startswith("sqlite:///"):
            return Path(self.storage_url.removeprefix("sqlite:///")).parent
        return self.data_dir

    def admin_key_path(self) -> Path:
        """The generated admin key lives beside the data."""
        return self.local_folder() / "admin-key"

    def log_path(self) -> Path:
        """`aos serve` writes Ray's and Serve's driver logs here unless it runs with -v."""
        return self.local_folder() / "aos.log"

    def shard_options(self) -> dict[str, Any]:
        return {
            "max_chunk_bytes": self.max_chunk_bytes,
            "max_wait_s": self.max_wait_s,
            "max_pending_items": self.max_pending_items,
            "max_pending_bytes": self.max_pending_bytes,
            "max_commit_wait_s": self.max_commit_wait_s,
            "tail_bytes_total": self.tail_bytes_total,
            "webhook_allowed_networks": self.webhook_allowed_networks,
            "webhook_coalesce_s": self.webhook_coalesce_s,
            "retention_sweep_interval_s": self.retention_sweep_interval_s,
            "retention_sweep_batch": self.retention_sweep_batch,
            "node_resource": self.shard_resource,
        }

    def ingress_environment(self) -> dict[str, str]:
        """What Serve's controller needs in its environment for `ingress`."""
        return environment(
            self.ingress,
            admin_host=self.haproxy_admin_host,
            stats_port=self.haproxy_stats_port,
            metrics_port=self.haproxy_metrics_port,
            fallback_port=self.fallback_proxy_port,
            hard_stop_after_s=self.haproxy_hard_stop_after_s,
        )

    def listening(self) -> list[tuple[str, int, str]]:
        """Every (host, port) Serve opens for the service beside the replicas' own ports,
        with the flag or variable that moves it."""
        ports = [(self.http_host, self.http_port, "--port")]
        if self.ingress == HAPROXY:
            ports += [
                (self.haproxy_admin_host, self.haproxy_stats_port, "AOS_HAPROXY_STATS_PORT"),
                (self.haproxy_admin_host, self.haproxy_metrics_port, "AOS_HAPROXY_METRICS_PORT"),
                (self.http_host, self.fallback_proxy_port, "AOS_FALLBACK_PROXY_PORT"),
            ]
        return ports

    def dispatcher_options(self) -> dict[str, Any]:
        return {
            "allowed_networks": self.webhook_allowed_networks,
            "per_host_limit": self.webhook_per_host_limit,
        }
