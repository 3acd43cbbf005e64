"""A stand-in Entra ID tenant for the tests: RSA key pairs, the tenant's JWKS served over HTTP on
127.0.0.1 (the real PyJWKClient fetches it, so caching and refetching are exercised as they run
in Azure), and access tokens minted and signed with those keys."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

TENANT_ID = "11111111-2222-3333-4444-555555555555"
AUDIENCE = "api://notify-test"
CLIENT_ID = "66666666-7777-8888-9999-000000000000"
ISSUER_V2 = f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"
ISSUER_V1 = f"https://sts.windows.net/{TENANT_ID}/"


class SigningKey:
    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or uuid.uuid4().hex
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return jwk | {"kid": self.kid, "use": "sig", "alg": "RS256"}


class Tenant:
    """The tenant's key set, published at ``jwks_url``; ``fetches`` counts the requests for it."""

    def __init__(self) -> None:
        self.key = SigningKey()
        self.published: list[SigningKey] = [self.key]
        self.fetches = 0
        self.reachable = True
        tenant = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                tenant.fetches += 1
                if not tenant.reachable:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": [k.jwk() for k in tenant.published]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def jwks_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{TENANT_ID}/discovery/v2.0/keys"

    def settings(self, **extra: str) -> dict[str, str]:
        return {
            "ENTRA_TENANT_ID": TENANT_ID,
            "ENTRA_AUDIENCES": f"{AUDIENCE},{CLIENT_ID}",
            "ENTRA_JWKS_URL": self.jwks_url,
        } | extra

    def rotate(self) -> SigningKey:
        """Publish a new key beside the current one and sign with it from now on."""
        self.key = SigningKey()
        self.published.append(self.key)
        return self.key

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "aud": AUDIENCE,
            "iss": ISSUER_V2,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": TENANT_ID,
            "oid": "aaaaaaaa-0000-0000-0000-000000000001",
            "sub": "aaaaaaaa-0000-0000-0000-000000000001",
            "azp": "bbbbbbbb-0000-0000-0000-000000000001",
            "roles": ["Notify.Send"],
            "ver": "2.0",
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, *, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **changes: Any) -> str:
        key = key or self.key
        return jwt.encode(self.claims(**changes), key.private, algorithm="RS256", headers={"kid": key.kid} | (headers or {}))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
