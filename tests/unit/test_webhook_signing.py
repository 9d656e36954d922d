"""Signatures must verify with the public Standard Webhooks and Svix libraries."""

from __future__ import annotations

import base64
import time

import pytest
import standardwebhooks.webhooks as std
import svix.webhooks as svix

from actors.webhooks import signing
from storage.errors import Invalid

BODY = b'{"type":"job.completed","data":{"job_id":"j-1","status":"Succeeded"}}'
VERIFIERS = [std.Webhook, svix.Webhook]
REJECTIONS = (std.WebhookVerificationError, svix.WebhookVerificationError)


def _signed_headers(*secrets: str, body: bytes = BODY) -> dict[str, str]:
    # The verifiers refuse timestamps more than 5 minutes away from now.
    return signing.headers(
        msg_id="msg_2b7Xk1", timestamp=int(time.time()), body=body, secrets=secrets
    )


def test_new_secret_is_whsec_prefixed_base64_of_32_random_bytes() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert signing.new_secret() != secret


def test_signature_matches_the_published_example() -> None:
    # The worked example from the Svix/Standard Webhooks documentation.
    signature = signing.sign(
        msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
        body=b'{"test": 2432232314}',
        secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_one_secret_verifies_with_public_library(verifier: type) -> None:
    secret = signing.new_secret()
    verifier(secret).verify(BODY, _signed_headers(secret))


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_during_rotation_a_receiver_holding_either_secret_accepts(verifier: type) -> None:
    old, new = signing.new_secret(), signing.new_secret()
    headers = _signed_headers(old, new)
    assert len(headers["webhook-signature"].split(" ")) == 2
    verifier(old).verify(BODY, headers)
    verifier(new).verify(BODY, headers)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_receiver_with_another_secret_rejects(verifier: type) -> None:
    headers = _signed_headers(signing.new_secret(), signing.new_secret())
    with pytest.raises(REJECTIONS):
        verifier(signing.new_secret()).verify(BODY, headers)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_tampered_body_is_rejected(verifier: type) -> None:
    secret = signing.new_secret()
    headers = _signed_headers(secret)
    with pytest.raises(REJECTIONS):
        verifier(secret).verify(BODY.replace(b"Succeeded", b"Failed"), headers)


def test_headers_carry_id_timestamp_signature_and_json_type() -> None:
    headers = signing.headers(
        msg_id="msg_1", timestamp=1700000000, body=b"{}", secrets=["whsec_AAAA"]
    )
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"


def test_unpadded_secret_signs_like_its_padded_form() -> None:
    padded = "whsec_" + base64.b64encode(b"k" * 31).decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    assert _sign_with(unpadded) == _sign_with(padded)


def _sign_with(secret: str) -> str:
    return signing.sign(msg_id="m", timestamp=1, body=b"{}", secrets=[secret])


@pytest.mark.parametrize("secrets", [[], ["whsec_not*base64!"], ["whsec_"]])
def test_missing_or_malformed_secret_is_invalid(secrets: list[str]) -> None:
    with pytest.raises(Invalid):
        signing.sign(msg_id="m", timestamp=1, body=b"{}", secrets=secrets)
