"""A namespace's settings as one typed record: description, retention, webhooks, secrets.

`NamespaceSettings.from_config` and `to_config` are the one conversion to and from the
stored form (`storage.records.Namespace.config`, a JSON object whose keys are kept as
they were, so existing databases read unchanged). `NamespaceChanges` is the command
that creates or changes one; `hooks` is what the webhook outbox uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from actors.commands import check_events, check_ttl_s
from actors.limits import MAX_NAMESPACE_DESCRIPTION_CHARS, check_text
from actors.timestamps import iso
from actors.webhooks import ssrf
from actors.webhooks.backoff import RetryPolicy
from actors.webhooks.outbox import DEFAULT_EVENTS, Hooks
from actors.webhooks.signing import new_secret
from storage.records import Namespace


class Unset(Enum):
    """A field a change leaves as it is (distinct from None, which clears it)."""

    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """A namespace's default webhook: where, which events, and how to retry."""

    url: str | None = None
    events: tuple[str, ...] | None = None
    timeout_ms: int | None = None
    initial_delay_ms: int | None = None
    max_delay_ms: int | None = None
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.url is not None:
            ssrf.check_shape(self.url)
        if self.events is not None:
            object.__setattr__(self, "events", check_events(self.events))
        self.policy()  # out-of-range retry settings raise Invalid here

    def policy(self) -> RetryPolicy:
        """The retry policy: these settings over the defaults (built per write, so cheap)."""
        given = (self.initial_delay_ms, self.max_delay_ms, self.max_attempts, self.timeout_ms)
        if given == (None, None, None, None):
            return DEFAULT_POLICY
        return RetryPolicy(
            initial_delay_ms=_or(self.initial_delay_ms, DEFAULT_POLICY.initial_delay_ms),
            max_delay_ms=_or(self.max_delay_ms, DEFAULT_POLICY.max_delay_ms),
            max_attempts=_or(self.max_attempts, DEFAULT_POLICY.max_attempts),
            timeout_ms=_or(self.timeout_ms, DEFAULT_POLICY.timeout_ms),
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> WebhookSettings:
        retry = config.get("retry") or {}
        events = config.get("events")
        return cls(
            url=config.get("url"),
            events=tuple(events) if events is not None else None,
            timeout_ms=config.get("timeoutMs"),
            initial_delay_ms=retry.get("initialDelayMs"),
            max_delay_ms=retry.get("maxDelayMs"),
            max_attempts=retry.get("maxAttempts"),
        )

    def to_config(self) -> dict[str, Any]:
        """The stored form, which is also the API's JSON shape (unset fields left out)."""
        retry = {
            "initialDelayMs": self.initial_delay_ms,
            "maxDelayMs": self.max_delay_ms,
            "maxAttempts": self.max_attempts,
        }
        config = {
            "url": self.url,
            "events": list(self.events) if self.events is not None else None,
            "timeoutMs": self.timeout_ms,
            "retry": _present(retry) or None,
        }
        return _present(config)


DEFAULT_POLICY = RetryPolicy()
NO_WEBHOOKS = WebhookSettings()


@dataclass(frozen=True, slots=True)
class NamespaceChanges:
    """The settings a create or a PATCH sets; fields left `UNSET` keep their value."""

    description: str | Unset | None = UNSET
    retention_ttl_s: int | Unset | None = UNSET
    webhooks: WebhookSettings | Unset | None = UNSET

    def __post_init__(self) -> None:
        if self.description is not UNSET:
            check_text("description", self.description, MAX_NAMESPACE_DESCRIPTION_CHARS)
        if self.retention_ttl_s is not UNSET:
            check_ttl_s("retention.ttl", self.retention_ttl_s)


@dataclass(frozen=True, slots=True)
class NamespaceSettings:
    description: str | None = None
    retention_ttl_s: int | None = None
    webhooks: WebhookSettings | None = None
    #: The Standard Webhooks signing secret (`whsec_...`); shown only when made.
    secret: str | None = None
    #: The secret before the last rotation, which still signs until `previous_secret_until`.
    previous_secret: str | None = None
    previous_secret_until: float | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NamespaceSettings:
        retention = config.get("retention") or {}
        webhooks = config.get("webhooks")
        return cls(
            description=config.get("description"),
            retention_ttl_s=retention.get("ttlS"),
            webhooks=WebhookSettings.from_config(webhooks) if webhooks else None,
            secret=config.get("webhookSecret"),
            previous_secret=config.get("previousWebhookSecret"),
            previous_secret_until=config.get("previousWebhookSecretUntil"),
        )

    def to_config(self) -> dict[str, Any]:
        config = {
            "description": self.description,
            "retention": {"ttlS": self.retention_ttl_s} if self.retention_ttl_s else None,
            "webhooks": self.webhooks.to_config() if self.webhooks else None,
            "webhookSecret": self.secret,
            "previousWebhookSecret": self.previous_secret,
            "previousWebhookSecretUntil": self.previous_secret_until,
        }
        return _present(config)

    def changed(self, changes: NamespaceChanges) -> NamespaceSettings:
        fields = {
            name: value
            for name in ("description", "retention_ttl_s", "webhooks")
            if (value := getattr(changes, name)) is not UNSET
        }
        return dataclasses.replace(self, **fields)

    def with_new_secret(self) -> NamespaceSettings:
        return dataclasses.replace(self, secret=new_secret())

    def rotated(self, *, now: float, grace_s: float) -> NamespaceSettings:
        """A new secret; the old one still signs (beside it) until `now + grace_s`."""
        return dataclasses.replace(
            self,
            secret=new_secret(),
            previous_secret=self.secret,
            previous_secret_until=now + grace_s,
        )

    def public_config(self) -> dict[str, Any]:
        """The stored form without the secrets (for audit entries)."""
        return dataclasses.replace(
            self, secret=None, previous_secret=None, previous_secret_until=None
        ).to_config()

    def hooks(self, *, now: float) -> Hooks:
        """The settings one delivery uses: URL, events, retry policy, and the live secrets."""
        secrets = [self.secret] if self.secret else []
        if self.previous_secret and now < (self.previous_secret_until or 0):
            secrets.append(self.previous_secret)
        webhooks = self.webhooks or NO_WEBHOOKS
        return Hooks(
            url=webhooks.url,
            events=webhooks.events or DEFAULT_EVENTS,
            retry=webhooks.policy(),
            secrets=tuple(secrets),
        )


def namespace_json(namespace: Namespace, *, with_secret: bool = False) -> dict[str, Any]:
    """A namespace's public settings (the API's shape); its signing secret only when made."""
    settings = NamespaceSettings.from_config(namespace.config)
    body: dict[str, Any] = {
        "name": namespace.name,
        "createdAt": iso(namespace.created_at),
        "description": settings.description,
        "retention": {"ttlS": settings.retention_ttl_s} if settings.retention_ttl_s else None,
        "webhooks": settings.webhooks.to_config() if settings.webhooks else None,
    }
    if with_secret:
        body["webhookSecret"] = settings.secret
    return body


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}
