"""A namespace's settings record: its stored form (unchanged across versions), changes,
secret rotation, and what the webhook outbox and the API see of it."""

from __future__ import annotations

import copy

import pytest

from actors.namespace_settings import (
    UNSET,
    NamespaceChanges,
    NamespaceSettings,
    WebhookSettings,
    namespace_json,
)
from actors.webhooks.backoff import RetryPolicy
from actors.webhooks.outbox import DEFAULT_EVENTS
from storage.errors import Invalid, TooLarge
from storage.records import Namespace

#: A namespace config exactly as the previous version stored it.
STORED = {
    "description": "billing exports",
    "retention": {"ttlS": 86400},
    "webhooks": {
        "url": "https://hooks.example.com/aos",
        "events": ["job.completed", "job.output"],
        "timeoutMs": 5000,
        "retry": {"initialDelayMs": 500, "maxDelayMs": 30000, "maxAttempts": 5},
    },
    "webhookSecret": "whsec_current",
    "previousWebhookSecret": "whsec_previous",
    "previousWebhookSecretUntil": 1_700_000_000.5,
}


def test_a_config_written_by_the_previous_version_reads_back_identically():
    stored = copy.deepcopy(STORED)
    assert NamespaceSettings.from_config(stored).to_config() == STORED
    assert stored == STORED  # reading does not touch the stored dict


def test_each_stored_key_lands_in_its_field():
    settings = NamespaceSettings.from_config(STORED)
    assert settings == NamespaceSettings(
        description="billing exports",
        retention_ttl_s=86400,
        webhooks=WebhookSettings(
            url="https://hooks.example.com/aos",
            events=("job.completed", "job.output"),
            timeout_ms=5000,
            initial_delay_ms=500,
            max_delay_ms=30000,
            max_attempts=5,
        ),
        secret="whsec_current",
        previous_secret="whsec_previous",
        previous_secret_until=1_700_000_000.5,
    )


def test_unset_fields_are_left_out_of_the_stored_form():
    assert NamespaceSettings().to_config() == {}
    assert NamespaceSettings.from_config({}) == NamespaceSettings()
    partial = {"webhooks": {"url": "https://hooks.example.com/x", "retry": {"maxAttempts": 3}}}
    assert NamespaceSettings.from_config(partial).to_config() == partial


def test_webhook_settings_fill_unset_retry_fields_with_the_defaults():
    policy = WebhookSettings(max_attempts=3).policy()
    defaults = RetryPolicy()
    assert policy == RetryPolicy(
        initial_delay_ms=defaults.initial_delay_ms,
        max_delay_ms=defaults.max_delay_ms,
        max_attempts=3,
        timeout_ms=defaults.timeout_ms,
    )


@pytest.mark.parametrize(
    "fields",
    [{"events": ("job.finished",)}, {"max_attempts": 0}, {"url": "ftp://hooks.example.com"}],
)
def test_webhook_settings_of_the_wrong_shape_are_invalid(fields):
    with pytest.raises(Invalid):
        WebhookSettings(**fields)


def test_a_namespace_description_over_its_limit_is_too_large():
    NamespaceChanges(description="d" * 1024)
    with pytest.raises(TooLarge):
        NamespaceChanges(description="d" * 1025)


# -- changes --------------------------------------------------------------------------------


def test_a_change_leaves_unset_fields_and_the_secrets_as_they_were():
    settings = NamespaceSettings.from_config(STORED)
    changed = settings.changed(NamespaceChanges(description="new"))
    assert changed.description == "new"
    assert changed.retention_ttl_s == settings.retention_ttl_s
    assert changed.webhooks == settings.webhooks
    assert (changed.secret, changed.previous_secret) == (settings.secret, settings.previous_secret)
    assert settings.changed(NamespaceChanges()) == settings


def test_a_change_to_none_clears_the_field():
    settings = NamespaceSettings.from_config(STORED)
    cleared = settings.changed(
        NamespaceChanges(description=None, retention_ttl_s=None, webhooks=None)
    )
    assert (cleared.description, cleared.retention_ttl_s, cleared.webhooks) == (None, None, None)
    assert cleared.secret == settings.secret
    assert set(cleared.to_config()) == {
        "webhookSecret",
        "previousWebhookSecret",
        "previousWebhookSecretUntil",
    }


def test_unset_is_not_none():
    assert UNSET is not None
    assert NamespaceChanges().description is UNSET
    assert NamespaceChanges(description=None).description is None


# -- secrets --------------------------------------------------------------------------------


def test_rotation_makes_a_new_secret_and_keeps_the_old_one_until_the_grace_ends():
    settings = NamespaceSettings(secret="whsec_old")
    rotated = settings.rotated(now=1000.0, grace_s=60.0)
    assert rotated.secret.startswith("whsec_") and rotated.secret != "whsec_old"
    assert rotated.previous_secret == "whsec_old"
    assert rotated.previous_secret_until == 1060.0


def test_the_previous_secret_signs_beside_the_new_one_until_the_grace_ends_and_not_after():
    rotated = NamespaceSettings(secret="whsec_old").rotated(now=1000.0, grace_s=60.0)
    assert rotated.hooks(now=1000.0).secrets == (rotated.secret, "whsec_old")
    assert rotated.hooks(now=1059.999).secrets == (rotated.secret, "whsec_old")
    assert rotated.hooks(now=1060.0).secrets == (rotated.secret,)
    assert rotated.hooks(now=5000.0).secrets == (rotated.secret,)


def test_a_rotation_with_no_grace_retires_the_old_secret_at_once():
    rotated = NamespaceSettings(secret="whsec_old").rotated(now=1000.0, grace_s=0.0)
    assert rotated.hooks(now=1000.0).secrets == (rotated.secret,)


def test_a_second_rotation_retires_the_first_secret_for_good():
    first = NamespaceSettings(secret="whsec_a").rotated(now=1000.0, grace_s=60.0)
    second = first.rotated(now=1010.0, grace_s=60.0)
    assert second.previous_secret == first.secret
    assert "whsec_a" not in second.hooks(now=1020.0).secrets


def test_a_new_secret_differs_each_time():
    settings = NamespaceSettings()
    assert settings.with_new_secret().secret != settings.with_new_secret().secret


def test_hooks_carry_the_webhook_settings_or_the_defaults():
    configured = NamespaceSettings.from_config(STORED).hooks(now=0.0)
    assert configured.url == "https://hooks.example.com/aos"
    assert configured.events == ("job.completed", "job.output")
    assert configured.retry == RetryPolicy(
        initial_delay_ms=500, max_delay_ms=30000, max_attempts=5, timeout_ms=5000
    )
    bare = NamespaceSettings(secret="whsec_x").hooks(now=0.0)
    assert (bare.url, bare.events, bare.retry, bare.secrets) == (
        None,
        DEFAULT_EVENTS,
        RetryPolicy(),
        ("whsec_x",),
    )


def test_the_public_config_has_no_secrets():
    public = NamespaceSettings.from_config(STORED).public_config()
    assert public == {
        key: value
        for key, value in STORED.items()
        if key not in {"webhookSecret", "previousWebhookSecret", "previousWebhookSecretUntil"}
    }
    assert "whsec_" not in repr(public)


# -- API shape ------------------------------------------------------------------------------


def test_namespace_json_shows_the_settings_and_the_secret_only_when_asked():
    namespace = Namespace("acme", 1_767_225_600.0, copy.deepcopy(STORED))
    body = namespace_json(namespace)
    assert body == {
        "name": "acme",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "description": "billing exports",
        "retention": {"ttlS": 86400},
        "webhooks": STORED["webhooks"],
    }
    with_secret = namespace_json(namespace, with_secret=True)
    assert with_secret == body | {"webhookSecret": "whsec_current"}
    assert "whsec_previous" not in repr(with_secret)


def test_namespace_json_of_a_bare_namespace_has_nulls():
    body = namespace_json(Namespace("acme", 0.0, {}))
    assert (body["description"], body["retention"], body["webhooks"]) == (None, None, None)
