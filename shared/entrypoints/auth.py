"""Who is calling, and may they do this?

On the local stack callers present static dev keys (``NOTIFY_DEV_KEYS``, ``role=key,...``). The
settings refuse dev keys when ``NOTIFY_ENVIRONMENT=azure``; Entra ID token validation for Azure
is its own authenticator behind the same ``authenticate`` call.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ..config import Settings


@dataclass(frozen=True)
class Principal:
    id: str
    roles: frozenset[str]


class Unauthenticated(Exception):
    pass


class Forbidden(Exception):
    pass


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def authenticate(authorization: str | None, settings: Settings) -> Principal:
    token = bearer_token(authorization)
    if token is None:
        raise Unauthenticated("Send 'Authorization: Bearer <token>'.")
    for key, role in settings.parsed_dev_keys().items():
        # Constant-time comparison: the key is a secret even on a laptop.
        if hmac.compare_digest(key.encode(), token.encode()):
            # One identity per key, so two apps never share idempotency keys or each other's
            # notifications; the id names the key without revealing it.
            fingerprint = hashlib.sha256(key.encode()).hexdigest()[:12]
            return Principal(id=f"dev-{role}-{fingerprint}", roles=frozenset({role}))
    raise Unauthenticated("The token is not valid.")


def authorize(principal: Principal, *allowed_roles: str) -> None:
    if not principal.roles.intersection(allowed_roles):
        raise Forbidden(f"This needs one of the roles: {', '.join(allowed_roles)}.")
