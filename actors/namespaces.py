"""The namespaces a shard owns: their settings (cached), webhook secrets and API keys.

Every write goes through the shard's group commit, so one writer per namespace makes
"already exists" exact and a settings change applies at once to the shard's webhooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from actors.committer import GroupCommitter, durable
from actors.namespace_settings import UNSET, NamespaceChanges, NamespaceSettings
from actors.routing import shard_for
from actors.webhooks import ssrf
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
        self._cache: dict[str, tuple[Namespace, NamespaceSettings]] = {}

    async def create(self, name: str, changes: NamespaceChanges, *, actor: str) -> Namespace:
        """A new namespace with its own webhook signing secret."""
        self.check_owned(name)
        await self._check_reachable(changes)
        if name in self._cache or await self._store.get_namespace(name) is not None:
            raise Conflict(f"namespace {name!r} already exists")
        settings = NamespaceSettings().changed(changes).with_new_secret()
        return await self._write(name, self._clock(), settings, actor, "namespace.create")

    async def get(self, name: str) -> Namespace:
        return (await self._entry(name))[0]

    async def update(self, name: str, changes: NamespaceChanges, *, actor: str) -> Namespace:
        await self._check_reachable(changes)
        current, settings = await self._entry(name)
        changed = settings.changed(changes)
        return await self._write(name, current.created_at, changed, actor, "namespace.update")

    async def rotate_secret(self, name: str, *, grace_s: float, actor: str) -> Namespace:
        """A new signing secret; the old one keeps signing beside it for `grace_s`."""
        current, settings = await self._entry(name)
        rotated = settings.rotated(now=self._clock(), grace_s=grace_s)
        return await self._write(
            name, current.created_at, rotated, actor, "namespace.rotate_secret"
        )

    async def hooks(self, name: str) -> Hooks:
        """The namespace's webhook settings as of now (changes apply without a restart)."""
        return (await self._entry(name))[1].hooks(now=self._clock())

    def cached_hooks(self, name: str) -> Hooks:
        """Synchronous on purpose: read between a job's state and its commit, with no await.
        The caller has loaded the namespace (`get`) before."""
        return self.cached_settings(name).hooks(now=self._clock())

    def cached_settings(self, name: str) -> NamespaceSettings:
        """The namespace's settings, as `cached_hooks` reads them (loaded before, no await)."""
        return self._cache[name][1]

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

    async def _entry(self, name: str) -> tuple[Namespace, NamespaceSettings]:
        entry = self._cache.get(name)
        if entry is not None:
            return entry
        self.check_owned(name)
        namespace = await self._store.get_namespace(name)
        if namespace is None:
            raise NotFound(f"namespace {name!r} does not exist")
        settings = NamespaceSettings.from_config(namespace.config)
        return self._cache.setdefault(name, (namespace, settings))

    async def _check_reachable(self, changes: NamespaceChanges) -> None:
        """The webhook URL's host must resolve to public (or allowed) addresses only."""
        webhooks = changes.webhooks
        if webhooks is not UNSET and webhooks is not None and webhooks.url is not None:
            await ssrf.resolve_and_check(webhooks.url, allowed=self._allowed)

    async def _write(
        self, name: str, created_at: float, settings: NamespaceSettings, actor: str, action: str
    ) -> Namespace:
        namespace = Namespace(name, created_at, settings.to_config())
        previous = self._cache.get(name)
        detail = settings.public_config()
        audit = audit_entry(self._clock(), name, actor, action, name, detail)
        future = self._committer().add(namespaces=[namespace], audit=[audit])
        entry = self._cache[name] = (namespace, settings)
        try:
            await durable(future)
        except AosError:
            if self._cache.get(name) is entry:
                self._cache.pop(name)
                if previous is not None:
                    self._cache[name] = previous
            raise
        return namespace
