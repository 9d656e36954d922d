"""The namespaces a shard owns: their settings (cached), webhook secrets and API keys.

Every write goes through the shard's group commit, so one writer per namespace makes
"already exists" exact and a settings change applies at once to the shard's webhooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from actors import hooks as namespace_hooks
from actors.committer import GroupCommitter, durable
from actors.routing import shard_for
from actors.validation import check_namespace
from actors.webhooks.outbox import Hooks
from actors.webhooks.ssrf import Network
from storage.base import Store
from storage.errors import AosError, BadRequest, Conflict, NotFound
from storage.records import ApiKey, AuditEntry, Namespace


def audit_entry(
    at: float,
    namespace: str | None,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    return AuditEntry(at, namespace, actor or "system", action, target, detail or {})


class NamespaceBook:
    def __init__(
        self,
        store: Store,
        committer: Callable[[], GroupCommitter],
        *,
        slot: int,
        num_shards: int,
        allowed_networks: Sequence[Network],
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._committer = committer
        self._slot, self._num_shards = slot, num_shards
        self._allowed = allowed_networks
        self._clock = clock
        self._cache: dict[str, Namespace] = {}

    async def create(self, name: str, config: dict[str, Any], *, actor: str) -> Namespace:
        """A new namespace with its own webhook signing secret."""
        self.check_owned(check_namespace(name))
        config = await self._checked(config)
        if name in self._cache or await self._store.get_namespace(name) is not None:
            raise Conflict(f"namespace {name!r} already exists")
        config = namespace_hooks.with_new_secret(config)
        namespace = Namespace(name=name, created_at=self._clock(), config=config)
        await self._write(namespace, actor=actor, action="namespace.create")
        return namespace

    async def get(self, name: str) -> Namespace:
        self.check_owned(check_namespace(name))
        namespace = self._cache.get(name) or await self._store.get_namespace(name)
        if namespace is None:
            raise NotFound(f"namespace {name!r} does not exist")
        return self._cache.setdefault(name, namespace)

    async def update(self, name: str, changes: dict[str, Any], *, actor: str) -> Namespace:
        changes = await self._checked(changes)
        current = await self.get(name)
        namespace = Namespace(current.name, current.created_at, {**current.config, **changes})
        await self._write(namespace, actor=actor, action="namespace.update")
        return namespace

    async def rotate_secret(self, name: str, *, grace_s: float, actor: str) -> Namespace:
        """A new signing secret; the old one keeps signing beside it for `grace_s`."""
        current = await self.get(name)
        config = namespace_hooks.rotated(current.config, now=self._clock(), grace_s=grace_s)
        namespace = Namespace(current.name, current.created_at, config)
        await self._write(namespace, actor=actor, action="namespace.rotate_secret")
        return namespace

    async def hooks(self, name: str) -> Hooks:
        """The namespace's webhook settings as of now (changes apply without a restart)."""
        namespace = await self.get(name)
        return namespace_hooks.hooks_from_config(namespace.config, now=self._clock())

    def cached_hooks(self, name: str) -> Hooks:
        """Synchronous on purpose: read between a job's state and its commit, with no await.
        The caller has loaded the namespace (`get`) before."""
        return namespace_hooks.hooks_from_config(self._cache[name].config, now=self._clock())

    async def put_api_key(self, key: ApiKey, *, actor: str) -> None:
        """Create or revoke a key of a namespace this shard owns."""
        for name in key.namespaces:
            await self.get(name)
        action = "key.revoke" if key.revoked_at else "key.create"
        audit = audit_entry(self._clock(), key.namespaces[0], actor, action, key.key_id)
        await durable(self._committer().add(api_keys=[key], audit=[audit]))

    def forget(self, namespaces: Sequence[Namespace]) -> None:
        """These writes failed: reload from the store on next use."""
        for namespace in namespaces:
            self._cache.pop(namespace.name, None)

    def check_owned(self, name: str) -> None:
        if shard_for(name, self._num_shards) != self._slot:
            raise BadRequest(f"namespace {name!r} is not owned by shard {self._slot}")

    async def _checked(self, config: dict[str, Any]) -> dict[str, Any]:
        if "webhooks" not in config:
            return config
        webhooks = await namespace_hooks.check_webhooks(config["webhooks"], allowed=self._allowed)
        return {**config, "webhooks": webhooks}

    async def _write(self, namespace: Namespace, *, actor: str, action: str) -> None:
        previous = self._cache.get(namespace.name)
        detail = namespace_hooks.public(namespace.config)
        audit = audit_entry(self._clock(), namespace.name, actor, action, namespace.name, detail)
        future = self._committer().add(namespaces=[namespace], audit=[audit])
        self._cache[namespace.name] = namespace
        try:
            await durable(future)
        except AosError:
            if self._cache.get(namespace.name) is namespace:
                self._cache.pop(namespace.name)
                if previous is not None:
                    self._cache[namespace.name] = previous
            raise
