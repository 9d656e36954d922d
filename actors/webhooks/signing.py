"""Standard Webhooks signing (https://www.standardwebhooks.com): secrets, signatures, headers."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Sequence

from storage.errors import Invalid

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
SIGNATURE_VERSION = "v1"


def new_secret() -> str:
    """A fresh signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(SECRET_BYTES)).decode("ascii")


@functools.lru_cache(maxsize=1024)
def _secret_key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    # Some providers hand out unpadded base64; accept it as the reference verifier does.
    raw += "=" * (-len(raw) % 4)
    try:
        key = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise Invalid("webhook secret is not valid base64") from exc
    if not key:
        raise Invalid("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def sign(*, msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """The `webhook-signature` header value: one `v1,<sig>` per secret, space-separated.

    Several secrets are signed at once during a rotation grace period, so a receiver
    holding either the old or the new secret accepts the message.
    """
    if not secrets:
        raise Invalid("at least one webhook secret is needed to sign")
    return " ".join(_signature(_secret_key(s), msg_id, timestamp, body) for s in secrets)


def headers(*, msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """The headers of one signed delivery (`webhook-id`, `-timestamp`, `-signature`)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id=msg_id, timestamp=timestamp, body=body, secrets=secrets),
        "content-type": "application/json",
    }
