"""RFC 9457 problem details, the body of every error the API returns."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ..domain.errors import FieldError

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Malformed request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Validation failed",
    500: "Internal error",
    503: "Service unavailable",
}


# Problems with semantics beyond their HTTP status get a type of their own; the rest are
# "about:blank", as RFC 9457 recommends.
_TYPES = {422: "urn:notify:problem:validation", 409: "urn:notify:problem:conflict"}


def problem_details(status: int, detail: str, *, errors: list[FieldError] | None = None, **extra: Any) -> dict[str, Any]:
    """The problem object itself, for answers that are not HTTP responses (a dead letter's description)."""
    body: dict[str, Any] = {
        "type": _TYPES.get(status, "about:blank"),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    body.update(extra)
    return body


def problem(status: int, detail: str, *, errors: list[FieldError] | None = None, **extra: Any) -> JSONResponse:
    body = problem_details(status, detail, errors=errors, **extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


#: The problem object as JSON Schema, for the OpenAPI document.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "existingId": {"type": "string"},
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems a route can answer with."""
    return {
        status: {"description": _TITLES.get(status, "Error"), "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}
        for status in statuses
    }
