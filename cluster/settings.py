"""All configuration, read once from the environment (AOS_*) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.limits import MAX_CHUNK_BYTES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AOS_", extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    storage_url: str = "sqlite:///./aos-data/aos.db"
    num_shards: int = Field(default=4, ge=1, le=1024)
    num_replicas: int = Field(default=1, ge=1)
    admin_key: SecretStr | None = None
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "AOS_RAY_ADDRESS")
    )
    data_dir: Path = Path("./aos-data")
    #: How long `aos serve` waits for a named Ray cluster (`ray_address`) to answer.
    ray_connect_timeout_s: float = Field(default=10.0, gt=0)
    #: How long `aos serve` may take to start, Ray and Serve included, before it gives up.
    start_timeout_s: float = Field(default=300.0, gt=0)

    # limits
    max_chunk_bytes: int = Field(default=MAX_CHUNK_BYTES, ge=1024)
    max_wait_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float = Field(default=15.0, gt=0, le=15.0)
    max_pending_items: int = Field(default=50_000, ge=1)
    max_pending_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    tail_bytes_total: int = Field(default=64 * 1024 * 1024, ge=0)

    # webhooks
    #: CIDRs that webhook URLs may reach past the SSRF guard, e.g. "127.0.0.0/8" for local work.
    webhook_allowed_networks: str = ""
    webhook_coalesce_s: float = Field(default=0.5, ge=0, le=60)
    webhook_per_host_limit: int = Field(default=64, ge=1)

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
            "tail_bytes_total": self.tail_bytes_total,
            "webhook_allowed_networks": self.webhook_allowed_networks,
            "webhook_coalesce_s": self.webhook_coalesce_s,
        }

    def dispatcher_options(self) -> dict[str, Any]:
        return {
            "allowed_networks": self.webhook_allowed_networks,
            "per_host_limit": self.webhook_per_host_limit,
        }
