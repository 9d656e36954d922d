"""A namespace's webhook settings: read from its stored config, validated, secrets rotated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.webhooks import ssrf
from actors.webhooks.backoff import RetryPolicy
from actors.webhooks.outbox import DEFAULT_EVENTS, Hooks, check_events
from actors.webhooks.signing import new_secret
from storage.errors import Invalid

SECRET = "webhookSecret"
PREVIOUS_SECRET = "previousWebhookSecret"
PREVIOUS_UNTIL = "previousWebhookSecretUntil"
DEFAULT_GRACE_S = 24 * 3600
PRIVATE_KEYS = frozenset({SECRET, PREVIOUS_SECRET, PREVIOUS_UNTIL})


def hooks_from_config(config: dict[str, Any], *, now: float) -> Hooks:
    """The settings one delivery uses: URL, events, retry policy, and the live secrets."""
    webhooks = config.get("webhooks") or {}
    secrets = [config[SECRET]] if config.get(SECRET) else []
    if config.get(PREVIOUS_SECRET) and now < float(config.get(PREVIOUS_UNTIL) or 0):
        secrets.append(config[PREVIOUS_SECRET])
    return Hooks(
        url=webhooks.get("url"),
        events=tuple(webhooks.get("events") or DEFAULT_EVENTS),
        retry=policy_from_config(webhooks),
        secrets=tuple(secrets),
    )


def policy_from_config(webhooks: dict[str, Any]) -> RetryPolicy:
    retry = webhooks.get("retry") or {}
    defaults = RetryPolicy()
    return RetryPolicy(
        initial_delay_ms=retry.get("initialDelayMs", defaults.initial_delay_ms),
        max_delay_ms=retry.get("maxDelayMs", defaults.max_delay_ms),
        max_attempts=retry.get("maxAttempts", defaults.max_attempts),
        timeout_ms=webhooks.get("timeoutMs", defaults.timeout_ms),
    )


async def check_webhooks(
    webhooks: dict[str, Any] | None, *, allowed: Sequence[ssrf.Network]
) -> dict[str, Any] | None:
    """Validate a namespace's `webhooks` settings; raise `Invalid` with the reason."""
    if webhooks is None:
        return None
    if webhooks.get("url") is not None:
        await check_url(webhooks["url"], allowed=allowed)
    if webhooks.get("events") is not None:
        webhooks = {**webhooks, "events": list(check_events(webhooks["events"]))}
    policy_from_config(webhooks)
    return webhooks


async def check_url(url: object, *, allowed: Sequence[ssrf.Network]) -> str:
    """http(s), and not resolving to any private, loopback or reserved address (SSRF)."""
    if not isinstance(url, str):
        raise Invalid("a webhook URL must be a string")
    ssrf.check_url(url, allowed=allowed)
    await ssrf.resolve_and_check(url, allowed=allowed)
    return url


def with_new_secret(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, SECRET: new_secret()}


def rotated(config: dict[str, Any], *, now: float, grace_s: float) -> dict[str, Any]:
    """A new secret; the old one still signs (beside it) until `now + grace_s`."""
    if not 0 <= grace_s <= 30 * 86400:
        raise Invalid("graceS must be between 0 and 30 days")
    return {
        **config,
        SECRET: new_secret(),
        PREVIOUS_SECRET: config.get(SECRET),
        PREVIOUS_UNTIL: now + grace_s,
    }


def public(config: dict[str, Any]) -> dict[str, Any]:
    """The config without its secrets (they are shown only when made)."""
    return {k: v for k, v in config.items() if k not in PRIVATE_KEYS}
