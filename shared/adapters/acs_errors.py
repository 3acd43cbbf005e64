"""The one place where ``azure.core`` exceptions from the ACS clients become our error tree."""

from __future__ import annotations

import json
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone
from typing import Iterator, Mapping

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DeserializationError,
    HttpResponseError,
    SerializationError,
    ServiceRequestError,
    ServiceResponseError,
)

from ..domain.privacy import redact_text
from ..domain.errors import (
    ConfigurationError,
    PayloadTooLarge,
    RequestRejected,
    SenderNotAllowed,
    SendError,
    SendTimeout,
    ServiceUnavailable,
    Throttled,
)

# ACS error codes that mean the sender address or its domain is not usable.
_SENDER_CODES = ("DomainNotLinked", "SenderNotAllowed", "InvalidSenderUserName", "DomainNotVerified", "UnauthorizedSender")


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait per ``retry-after-ms``, ``x-ms-retry-after-ms`` or ``Retry-After``."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if name in lowered:
            try:
                return max(float(lowered[name]) / 1000.0, 0.0)
            except ValueError:
                pass
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are UTC
            when = when.replace(tzinfo=timezone.utc)
        return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def error_for_status(status: int, code: str | None, message: str, retry_after: float | None = None) -> SendError:
    """Classify an ACS HTTP failure (whole request, or one SMS recipient inside a 202).

    ACS's error messages can quote the recipient ("Invalid email address 'jane@...'"); the message
    is masked here, at the boundary, because it goes on into logs, spans and the dead-letter reason.
    """
    message = redact_text(message)
    if status in (401, 403):
        hint = "check ACS_ACCESS_KEY, or that the app's managed identity holds a role on the ACS resource"
        return ConfigurationError(f"{message} ({hint})", status_code=status, code=code)
    if status == 404:
        return ConfigurationError(f"{message} (check ACS_ENDPOINT)", status_code=status, code=code)
    if status == 429:
        return Throttled(message, status_code=status, code=code, retry_after=retry_after)
    if status == 408:
        return SendTimeout(message, status_code=status, code=code, retry_after=retry_after)
    if status >= 500:
        return ServiceUnavailable(message, status_code=status, code=code, retry_after=retry_after)
    if status == 413:
        return PayloadTooLarge(message, status_code=status, code=code)
    if code and any(c.lower() in code.lower() for c in _SENDER_CODES):
        return SenderNotAllowed(message, status_code=status, code=code)
    return RequestRejected(message, status_code=status, code=code)


def _error_code(exc: HttpResponseError) -> str | None:
    if exc.error is not None and getattr(exc.error, "code", None):
        return exc.error.code
    response = exc.response
    if response is not None:
        return response.headers.get("x-ms-error-code")
    return None


@contextmanager
def acs_errors(operation: str) -> Iterator[None]:
    """Wrap one ACS call: every SDK failure leaves as a ``SendError``."""
    try:
        yield
    except ClientAuthenticationError as exc:
        raise error_for_status(exc.status_code or 401, _error_code(exc), f"{operation}: authentication failed") from exc
    except HttpResponseError as exc:
        status = exc.status_code or (exc.response.status_code if exc.response is not None else 500)
        headers = exc.response.headers if exc.response is not None else None
        if 200 <= status < 300:
            # ACS accepted the request but its answer could not be read (DecodeError, IncompleteReadError).
            raise SendTimeout(f"{operation}: unreadable answer to HTTP {status} ({type(exc).__name__})", status_code=status) from exc
        message = exc.error.message if exc.error is not None and exc.error.message else exc.reason or "HTTP error"
        raise error_for_status(status, _error_code(exc), f"{operation}: {message}", retry_after_seconds(headers)) from exc
    except ServiceResponseError as exc:
        # The request went out; ACS may have acted on it.
        raise SendTimeout(f"{operation}: no usable response ({type(exc).__name__})") from exc
    except ServiceRequestError as exc:
        # Never reached ACS (connection refused, DNS, connect timeout): safe to send again.
        error = ServiceUnavailable(f"{operation}: could not reach ACS ({type(exc).__name__})")
        error.ambiguous = False
        raise error from exc
    except AzureError as exc:
        raise SendTimeout(f"{operation}: {type(exc).__name__}") from exc
    except SerializationError as exc:
        # Our request could not be encoded; nothing was sent and the same input fails again.
        raise RequestRejected(f"{operation}: the request could not be serialized ({redact_text(str(exc))})") from exc
    except (DeserializationError, json.JSONDecodeError) as exc:
        # A success answer ACS sent could not be parsed: ACS may have acted.
        raise SendTimeout(f"{operation}: unreadable answer ({type(exc).__name__})") from exc
