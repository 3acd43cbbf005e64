"""One way in for every notification request: a JSON body, plus what travels beside it.

The HTTP routes (a body and its headers) and the Service Bus requests queue (a message body and
its properties) both call ``parse_request``, so a request is valid or invalid in the same way,
with the same field errors, whichever way it came. The body's own fields are ``schemas``'s
business; this module adds the envelope: the idempotency key, and the caller's correlation id and
properties, which come back on every status event of the notification.

``correlationId`` and ``properties`` may also be given in the body. They are envelope, not
content: they are not part of the body an idempotency key compares, so a retry that carries a
new trace id is still the same request.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..config import Settings
from ..domain.commands import SubmitNotification
from ..domain.errors import FieldError, InvalidRequest
from ..service.ports import Templates
from . import schemas

#: Service Bus's own limit on a message's CorrelationId, so one value fits both ways in.
MAX_CORRELATION_ID_LENGTH = 128
#: The caller's properties ride on every status event: a handful of short strings, not a payload.
MAX_PROPERTIES = 20
MAX_PROPERTY_NAME_LENGTH = 128
MAX_PROPERTY_VALUE_LENGTH = 512


@dataclass(frozen=True)
class Envelope:
    """What travels beside the body: HTTP headers, or a Service Bus message's properties.

    ``properties`` win over the body's ``properties`` of the same name, and ``correlation_id``
    over its ``correlationId``: the envelope is what the caller's own middleware sets.
    """

    idempotency_key: str | None = None
    correlation_id: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    #: How the caller names these outside the body, for the field errors.
    idempotency_key_field: str = "Idempotency-Key"
    correlation_id_field: str = "X-Correlation-Id"


def parse_request(
    body: Any,
    *,
    settings: Settings,
    templates: Templates | None,
    caller: str,
    envelope: Envelope = Envelope(),
) -> SubmitNotification:
    """The command for a request, or ``InvalidRequest`` naming every bad field (the envelope's first)."""
    errors: list[FieldError] = []
    key = envelope.idempotency_key
    if key is not None and (message := idempotency_key_error(key, settings.idempotency_key_max_chars)) is not None:
        errors.append(FieldError(envelope.idempotency_key_field, message))
        key = None

    body_correlation_id: Any = None
    body_properties: Any = None
    if isinstance(body, dict):
        body = dict(body)
        body_correlation_id = body.pop("correlationId", None)
        body_properties = body.pop("properties", None)

    if envelope.correlation_id:
        correlation_id = _correlation_id(envelope.correlation_id, envelope.correlation_id_field, errors)
    else:
        correlation_id = _correlation_id(body_correlation_id, "/correlationId", errors)
    properties = _body_properties(body_properties, errors)
    properties |= {str(name): _stringified(value) for name, value in envelope.properties.items()}
    _check_properties(properties, errors)

    try:
        cmd = schemas.parse_notification_request(
            body, settings=settings, templates=templates, idempotency_key=key, caller=caller
        )
    except InvalidRequest as exc:
        raise InvalidRequest(errors + exc.errors, exc.detail) from None
    if errors:
        raise InvalidRequest(errors)
    if correlation_id is None and not properties:
        return cmd  # most requests carry neither: no copy of the command (a few us of a batch's items)
    return replace(cmd, correlation_id=correlation_id, caller_properties=properties)


def idempotency_key_error(key: Any, limit: int) -> str | None:
    """Why ``key`` cannot be an idempotency key, or None. It is stored and compared, and echoed
    in logs and problems: one line of at most ``limit`` (IDEMPOTENCY_KEY_MAX_CHARS) characters."""
    if not isinstance(key, str) or not (0 < len(key) <= limit):
        return f"must be a string of 1 to {limit} characters"
    try:
        schemas.check_single_line(key, allow_tab=False)
    except ValueError as exc:
        return str(exc)
    return None


def _pointer(name: str) -> str:
    # RFC 6901: a name with "/" or "~" in it still points at one member.
    return "/properties/" + name.replace("~", "~0").replace("/", "~1")


def _printable(value: str) -> bool:
    # Cs: a lone surrogate, which no UTF-8 store or status event can carry.
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in value)


def _correlation_id(value: Any, where: str, errors: list[FieldError]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not (0 < len(value) <= MAX_CORRELATION_ID_LENGTH) or not _printable(value):
        errors.append(FieldError(where, f"must be a string of 1 to {MAX_CORRELATION_ID_LENGTH} printable characters"))
        return None
    return value


def _stringified(value: Any) -> str:
    """A property value as text: Service Bus properties may be numbers, booleans, bytes, UUIDs or
    times, JSON ones numbers or booleans; status events carry strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _body_properties(value: Any, errors: list[FieldError]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError("/properties", "must be an object of names to strings"))
        return {}
    properties = {}
    for name, item in value.items():
        if isinstance(item, (str, int, float, bool)):
            properties[name] = _stringified(item)
        else:
            errors.append(FieldError(_pointer(name), "must be a string, a number or a boolean"))
    return properties


def _check_properties(properties: dict[str, str], errors: list[FieldError]) -> None:
    if len(properties) > MAX_PROPERTIES:
        errors.append(FieldError("/properties", f"at most {MAX_PROPERTIES} properties (got {len(properties)})"))
        return
    for name, value in properties.items():
        if not (0 < len(name) <= MAX_PROPERTY_NAME_LENGTH) or not _printable(name):
            errors.append(FieldError(_pointer(name), f"names must be 1 to {MAX_PROPERTY_NAME_LENGTH} printable characters"))
        elif len(value) > MAX_PROPERTY_VALUE_LENGTH:
            errors.append(FieldError(_pointer(name), f"must be at most {MAX_PROPERTY_VALUE_LENGTH} characters"))
        elif any(unicodedata.category(ch) == "Cs" for ch in value):
            errors.append(FieldError(_pointer(name), schemas.LONE_SURROGATE))


def openapi_request_schema() -> dict[str, Any]:
    """The single route's body for the OpenAPI document (its models are ``openapi_component_schemas``)."""
    return schemas.openapi_request_schema()


def openapi_component_schemas() -> dict[str, Any]:
    """The request models for the document's ``components/schemas``: each kind of notification,
    plus the envelope fields it may carry."""
    envelope = {
        "correlationId": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CORRELATION_ID_LENGTH,
            "description": "Your reference, echoed on every status event (the X-Correlation-Id header wins)",
        },
        "properties": {
            "type": "object",
            "maxProperties": MAX_PROPERTIES,
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "description": "Your properties, echoed as strings on every status event",
        },
    }
    models = schemas.openapi_component_schemas()
    for name in schemas.REQUEST_MODELS:
        models[name] = models[name] | {"properties": models[name]["properties"] | envelope}
    return models
