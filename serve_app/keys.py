"""API keys: minting, hashing, and the per-replica cache that authenticates requests."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from actors.outage import StoreOutage
from storage.base import Store
from storage.errors import StoreUnavailable, Unauthorized
from storage.records import ApiKey

KEY_PREFIX = "aos_"
_KEY_ID_BYTES = 8
_KEY_ID = re.compile(f"[0-9a-f]{{{2 * _KEY_ID_BYTES}}}")
ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a namespace key, or the admin (every namespace)."""

    key_id: str
    namespaces: frozenset[str]
    admin: bool = False

    def can_use(self, namespace: str) -> bool:
        return self.admin or namespace in self.namespaces


def key_hash(secret: str) -> str:
    """How a key's secret is stored and compared: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(namespaces: tuple[str, ...], *, now: float) -> tuple[ApiKey, str]:
    """A new key record and its secret (`aos_<keyId>_<random>`), shown to the caller once."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return ApiKey(key_id, key_hash(secret), namespaces, created_at=now), secret


class KeyCache:
    """Checks bearer keys against the store, caching hits briefly (revocation: <= ttl_s).

    Once a lookup finds the store unavailable, lookups fail at once (503) until it answers
    a ping again (`actors.outage`), rather than each waiting for the store's timeout."""

    def __init__(self, store: Store, *, admin_key_sha256: str, ttl_s: float = 1.0) -> None:
        self._store = store
        self._admin_sha256 = admin_key_sha256
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._outage = StoreOutage(store.ping)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of `Authorization: Bearer <key>` (the scheme is case-insensitive,
        RFC 9110 §11.1); `Unauthorized` for anything else."""
        scheme, _, secret = (authorization or "").strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("send 'Authorization: Bearer <key>'")
        digest = key_hash(secret)
        if hmac.compare_digest(digest, self._admin_sha256):
            return Principal(ADMIN, frozenset(), admin=True)
        key = await self._lookup(secret)
        if (
            key is None
            or key.revoked_at is not None
            or not hmac.compare_digest(digest, key.secret_hash)
        ):
            raise Unauthorized("unknown or revoked API key")
        return Principal(key.key_id, frozenset(key.namespaces))

    def forget(self, key_id: str) -> None:
        self._cache.pop(key_id, None)

    async def _lookup(self, secret: str) -> ApiKey | None:
        if not secret.startswith(KEY_PREFIX) or secret.count("_") < 2:
            return None
        key_id = secret[len(KEY_PREFIX) :].split("_", 1)[0]
        if not _KEY_ID.fullmatch(key_id):  # never send the store what `mint` cannot make
            return None
        hit = self._cache.get(key_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        self._outage.check()
        try:
            key = await self._store.get_api_key(key_id)
        except StoreUnavailable:
            self._outage.begin()
            raise
        if key is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (time.monotonic() + self._ttl_s, key)
        return key
