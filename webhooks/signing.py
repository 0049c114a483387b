"""Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")),
the key being the base64 part of a `whsec_` secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def secret_new() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_: list[str], *, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The spec's headers; several secrets (during a rotation) give space-separated signatures."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signature(s, msg_id=msg_id, timestamp=timestamp, body=body)
                                          for s in secrets_),
            "content-type": "application/json", "user-agent": "MageAgent-webhooks/1.0"}
