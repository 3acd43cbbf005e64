"""Who is calling, and may they do this?

Two kinds of bearer token reach ``authenticate``:

- Entra ID access tokens (in Azure, and locally when ``ENTRA_TENANT_ID`` is set), checked by
  ``EntraTokenValidator``: RS256 signature with a key from the tenant's JWKS, issuer, audience,
  expiry, and the ``roles`` claim mapped to the service's roles by ``ENTRA_ROLE_MAP``;
- static dev keys on the local stack (``NOTIFY_DEV_KEYS``, ``role=key,...``), which the settings
  refuse when ``NOTIFY_ENVIRONMENT=azure``.

The Event Grid webhook also takes a shared secret (``authenticate_webhook``). A caller that is not
authenticated gets ``Unauthenticated`` (401); one without the role ``Forbidden`` (403); a key set
that cannot be fetched ``AuthenticationUnavailable`` (503), since that is not the caller's fault.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Iterable

import jwt

from ..config import Settings

log = logging.getLogger(__name__)

#: Entra ID signs access tokens with RS256 only. Naming the algorithm (rather than trusting the
#: token's header) is what refuses ``alg: none`` and HS256 tokens "signed" with the public key.
ENTRA_ALGORITHMS = ("RS256",)
#: Clock skew tolerated on exp and nbf between Entra ID and this host.
CLOCK_SKEW_SECONDS = 60


@dataclass(frozen=True)
class Principal:
    id: str
    roles: frozenset[str]


class Unauthenticated(Exception):
    pass


class Forbidden(Exception):
    pass


class AuthenticationUnavailable(Exception):
    """The signing keys could not be fetched: retry later, the token may well be valid."""


class EntraTokenValidator:
    """Validates Entra ID access tokens for this API.

    The tenant's signing keys (JWKS) are fetched by PyJWT's ``PyJWKClient`` and cached for
    ``cache_seconds``. Entra ID rotates its keys: a token whose ``kid`` is not in the cache makes
    the client fetch the set again, at most once per ``refresh_cooldown_seconds``, so a stream of
    made-up key ids costs one fetch, not one per request.
    """

    def __init__(
        self,
        *,
        keys_url: str,
        issuers: Iterable[str],
        audiences: Iterable[str],
        role_map: dict[str, str],
        cache_seconds: float,
        refresh_cooldown_seconds: float,
        fetch_timeout_seconds: float = 10.0,
    ) -> None:
        self.issuers = list(issuers)
        self.audiences = list(audiences)
        self.role_map = dict(role_map)
        self._keys = jwt.PyJWKClient(
            keys_url,
            cache_jwk_set=True,
            lifespan=cache_seconds,
            cooldown_duration=refresh_cooldown_seconds,
            timeout=fetch_timeout_seconds,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EntraTokenValidator | None:
        if not settings.entra_tenant_id:
            return None
        return cls(
            keys_url=settings.entra_keys_url,
            issuers=settings.entra_issuers,
            audiences=settings.entra_audiences,
            role_map=settings.parsed_entra_role_map(),
            cache_seconds=settings.entra_jwks_cache_seconds,
            refresh_cooldown_seconds=settings.entra_jwks_refresh_cooldown_seconds,
        )

    def principal(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("The token is not valid.") from None
        # Refused before any key lookup, so a malformed token never causes a JWKS fetch.
        if header.get("alg") not in ENTRA_ALGORITHMS or not isinstance(header.get("kid"), str):
            raise Unauthenticated("The token is not valid.")
        try:
            key = self._keys.get_signing_key(header["kid"])
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("Entra ID signing keys could not be fetched: %s", type(exc.__cause__ or exc).__name__)
            raise AuthenticationUnavailable("The token cannot be checked right now; try again.") from None
        except jwt.PyJWKClientError:
            log.info("token refused: its signing key is not one of the tenant's")
            raise Unauthenticated("The token is not valid.") from None
        except jwt.PyJWTError as exc:
            # The key set itself is unusable (no signing keys, a malformed key): ours to fix.
            log.warning("Entra ID signing keys are not usable: %s", type(exc).__name__)
            raise AuthenticationUnavailable("The token cannot be checked right now; try again.") from None
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(ENTRA_ALGORITHMS),
                audience=self.audiences,
                issuer=self.issuers,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud", "oid"]},
            )
        except jwt.InvalidTokenError as exc:
            # The reason helps whoever configures a caller; the token itself is a secret.
            log.info("token refused: %s", type(exc).__name__)
            raise Unauthenticated("The token is not valid.") from None
        roles = claims.get("roles")
        granted = {self.role_map[r] for r in roles if isinstance(r, str) and r in self.role_map} if isinstance(roles, list) else set()
        # oid is the caller's object id in the tenant: for an app calling as itself, its service
        # principal; for a signed-in user, the user. It is stable for the caller's lifetime and the
        # same in v1 and v2 tokens, unlike sub (per app) or azp/appid (one per client app, shared by
        # all its users). The principal id owns notifications and scopes idempotency keys.
        return Principal(id=f"entra-{claims['oid']}", roles=frozenset(granted))


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _dev_key_principal(token: str, settings: Settings) -> Principal | None:
    for key, role in settings.parsed_dev_keys().items():
        # Constant-time comparison: the key is a secret even on a laptop.
        if hmac.compare_digest(key.encode(), token.encode()):
            # One identity per key, so two apps never share idempotency keys or each other's
            # notifications; the id names the key without revealing it.
            fingerprint = hashlib.sha256(key.encode()).hexdigest()[:12]
            return Principal(id=f"dev-{role}-{fingerprint}", roles=frozenset({role}))
    return None


def authenticate(authorization: str | None, settings: Settings, tokens: EntraTokenValidator | None = None) -> Principal:
    token = bearer_token(authorization)
    if token is None:
        raise Unauthenticated("Send 'Authorization: Bearer <token>'.")
    principal = _dev_key_principal(token, settings)
    if principal is not None:
        return principal
    if tokens is not None:
        return tokens.principal(token)
    raise Unauthenticated("The token is not valid.")


#: Where Event Grid presents the webhook secret: a static delivery header, or a query parameter
#: of the subscription's endpoint URL.
WEBHOOK_SECRET_HEADER = "X-Notify-Webhook-Secret"
WEBHOOK_SECRET_QUERY = "webhookSecret"


def authenticate_webhook(
    authorization: str | None,
    presented_secret: str | None,
    settings: Settings,
    tokens: EntraTokenValidator | None = None,
) -> Principal:
    """Event Grid's identity: the shared secret when one is configured and presented, else a
    bearer token like any caller's (an Entra ID token with the ``eventgrid`` role)."""
    secret = settings.eventgrid_webhook_secret
    if secret is not None and presented_secret is not None:
        if hmac.compare_digest(secret.encode(), presented_secret.encode()):
            return Principal(id="eventgrid-webhook-secret", roles=frozenset({"eventgrid"}))
        raise Unauthenticated("The webhook secret is not valid.")
    return authenticate(authorization, settings, tokens)


def authorize(principal: Principal, *allowed_roles: str) -> None:
    if not principal.roles.intersection(allowed_roles):
        raise Forbidden(f"This needs one of the roles: {', '.join(allowed_roles)}.")
