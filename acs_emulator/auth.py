"""HMAC-SHA256 request authentication, checked the way ACS checks what the SDK's
``HMACCredentialsPolicy`` (``azure/communication/*/_shared/policy.py``) signs.

The client sends::

    x-ms-date: Tue, 26 Mar 2019 16:06:51 GMT
    x-ms-content-sha256: base64(sha256(body))
    Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=<sig>

where ``sig = base64(hmac_sha256(base64decode(access_key), string_to_sign))`` and::

    string_to_sign = VERB + "\\n" + path[?query] + "\\n" + ";".join(values of the SignedHeaders)

The path and query are the ones on the wire (still percent-encoded). The SDK takes the ``host``
value from the endpoint it was given (scheme stripped, port kept: ``127.0.0.1:7072``), which is what
an HTTP client sends as the ``Host`` header, so the emulator checks against the ``Host`` header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Mapping

REQUIRED_SIGNED_HEADERS = ("x-ms-date", "host", "x-ms-content-sha256")


@dataclass(frozen=True)
class AuthFailure(Exception):
    reason: str

    def __str__(self) -> str:
        return self.reason


def content_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def compute_signature(key: bytes, string_to_sign: str) -> str:
    return base64.b64encode(hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).digest()).decode("ascii")


def _parse_authorization(value: str) -> tuple[list[str], str]:
    scheme, _, params = value.strip().partition(" ")
    if scheme.upper() != "HMAC-SHA256":
        raise AuthFailure("the Authorization scheme must be HMAC-SHA256")
    parsed: dict[str, str] = {}
    for part in params.strip().split("&"):
        name, sep, val = part.partition("=")
        if sep:
            parsed[name.strip().lower()] = val.strip()
    signed = parsed.get("signedheaders")
    signature = parsed.get("signature")
    if not signed or not signature:
        raise AuthFailure("the Authorization header must carry SignedHeaders and Signature")
    return [h.strip().lower() for h in signed.split(";") if h.strip()], signature


def verify_hmac(
    *,
    key: bytes,
    method: str,
    path_and_query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
    max_skew_s: int = 900,
) -> None:
    """Raise :class:`AuthFailure` unless the request is signed with ``key``.

    ``headers`` must be case-insensitive (Starlette's ``Headers`` is).
    """
    authorization = headers.get("authorization")
    if not authorization:
        raise AuthFailure("the request has no Authorization header")
    signed_headers, signature = _parse_authorization(authorization)
    missing = [h for h in REQUIRED_SIGNED_HEADERS if h not in signed_headers]
    if missing:
        raise AuthFailure("SignedHeaders must include " + ";".join(REQUIRED_SIGNED_HEADERS))

    values = []
    for name in signed_headers:
        value = headers.get(name)
        if value is None:
            raise AuthFailure(f"the signed header {name} is missing")
        values.append(value)

    if headers.get("x-ms-content-sha256") != content_hash(body):
        raise AuthFailure("x-ms-content-sha256 does not match the request body")

    try:
        sent = parsedate_to_datetime(headers["x-ms-date"])
    except (TypeError, ValueError, IndexError):
        raise AuthFailure("x-ms-date is not an RFC 1123 date") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    if abs((now - sent).total_seconds()) > max_skew_s:
        raise AuthFailure("x-ms-date is too far from the current time")

    string_to_sign = method.upper() + "\n" + path_and_query + "\n" + ";".join(values)
    expected = compute_signature(key, string_to_sign)
    if not hmac.compare_digest(expected, signature):
        # A common slip: SmsClient keeps a trailing "/" of the endpoint in the host it signs.
        slashed = [v + "/" if name == "host" else v for name, v in zip(signed_headers, values)]
        candidate = compute_signature(key, method.upper() + "\n" + path_and_query + "\n" + ";".join(slashed))
        if hmac.compare_digest(candidate, signature):
            raise AuthFailure(
                "the request was signed for host '" + headers.get("host", "") + "/': remove the trailing "
                "slash from the endpoint given to the client"
            )
        raise AuthFailure("the HMAC signature does not match (wrong access key, host or path?)")
