"""The HTTP API: one FastAPI app, served by Azure Functions (``AsgiFunctionApp``) in Azure and by
uvicorn on the local stack, under the same ``/api`` routes."""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import bootstrap, telemetry
from ..domain.commands import SubmitNotification
from ..domain.errors import AttachmentStoreUnavailable, FieldError, IdempotencyConflict, InvalidRequest, NotificationNotFound
from ..domain.model import Channel, Notification
from ..service import handlers
from . import admin_api, dashboard, group_commit, schemas, triggers
from .auth import (
    WEBHOOK_SECRET_HEADER,
    WEBHOOK_SECRET_QUERY,
    AuthenticationUnavailable,
    Forbidden,
    Principal,
    Unauthenticated,
    authenticate,
    authenticate_webhook,
    authorize,
)
from .eventgrid import read_events
from .intake import Envelope, idempotency_key_error, openapi_component_schemas, openapi_request_schema, parse_request
from .problems import PROBLEM_SCHEMA, problem, problem_responses

log = logging.getLogger(__name__)

MAX_BATCH_ITEMS = 100
#: The batch response's bytes: the same as JSONResponse's ``json.dumps`` writes, four times faster
#: (about 90 us of a hundred results).
_BATCH_RESPONSE = TypeAdapter(dict[str, Any])


class _TooLarge(Exception):
    pass


class _UnsupportedMediaType(Exception):
    pass


class _Malformed(Exception):
    pass


def _is_json(content_type: str | None, *extra: str) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json") or media in extra


async def _json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge()
    body = await request.body()
    if len(body) > limit:
        raise _TooLarge()
    if not _is_json(request.headers.get("content-type")):
        raise _UnsupportedMediaType()
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Malformed(str(exc)) from None
    try:
        # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 store or SDK can carry.
        schemas.json_document_size(document)
    except ValueError as exc:
        raise _Malformed(str(exc)) from None
    return document


def notification_view(n: Notification) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": n.id,
        "channel": n.channel.value,
        "status": n.status.value,
        "sender": n.sender,
        "createdAt": n.created_at.isoformat(),
        "updatedAt": n.updated_at.isoformat(),
        "attempts": n.attempts,
        "recipients": [
            {
                "address": r.address,
                "kind": r.kind,
                "status": r.status.value,
                "messageId": r.message_id,
                "reason": r.reason,
                "updatedAt": r.updated_at.isoformat() if r.updated_at else None,
            }
            for r in n.recipients
        ],
        "metadata": n.metadata,
        "correlationId": n.correlation_id,
        "properties": n.caller_properties,
        "deadLetter": n.dead_letter.model_dump(mode="json") if n.dead_letter else None,
        "history": [h.model_dump(mode="json", exclude_none=True) for h in n.history],
    }
    # The body stays in the ledger: the view shows what identifies it, not what it says.
    # Attachments count by what they are, not by where they are stored.
    attachments = [{k: a[k] for k in ("name", "contentType", "size", "sha256")} for a in n.content.get("attachments", [])]
    identifying = {k: v for k, v in n.content.items() if k not in ("template", "attachments")}
    if attachments:
        identifying["attachments"] = attachments
    canonical = json.dumps(identifying, sort_keys=True, ensure_ascii=False)
    view["contentHash"] = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    if "template" in n.content:
        view["template"] = n.content["template"]
    if n.channel is Channel.EMAIL:
        view["subject"] = n.content.get("subject")
        view["attachments"] = attachments
    else:
        view["segments"] = n.content.get("segments")
        view["encoding"] = n.content.get("encoding")
    return view


# ------------------------------------------------------------------------------ batch intake


def _problem_body(status: int, detail: str, *, errors: list[FieldError] | None = None, **extra: Any) -> dict[str, Any]:
    """The problem object the single route would answer with, as a value inside a batch result."""
    return json.loads(problem(status, detail, errors=errors, **extra).body)


def _batch_items(body: Any) -> list[Any]:
    """The batch body's items, or ``InvalidRequest`` for the whole request."""
    if not isinstance(body, dict):
        raise InvalidRequest([FieldError("/", "the body must be a JSON object with a 'notifications' list")])
    unknown = sorted(set(body) - {"notifications"})
    if unknown:
        raise InvalidRequest([FieldError(f"/{name}", "unknown field") for name in unknown])
    items = body.get("notifications")
    if not isinstance(items, list):
        raise InvalidRequest([FieldError("/notifications", "must be a list of notification requests")])
    if not items:
        raise InvalidRequest([FieldError("/notifications", "must hold at least one notification")])
    if len(items) > MAX_BATCH_ITEMS:
        raise InvalidRequest(
            [FieldError("/notifications", f"at most {MAX_BATCH_ITEMS} notifications per batch (got {len(items)})")]
        )
    return items


def _parse_batch_item(item: Any, svc: bootstrap.Services, caller_id: str) -> SubmitNotification:
    """One item, validated exactly as the single route validates a body plus its Idempotency-Key
    header; the key travels in the item as ``idempotencyKey`` and is not part of the body hash."""
    if not isinstance(item, dict):
        raise InvalidRequest([FieldError("/", "each notification must be a JSON object")])
    key_errors: list[FieldError] = []
    key = None
    if "idempotencyKey" in item:
        item = dict(item)
        key = item.pop("idempotencyKey")
        if (message := idempotency_key_error(key, svc.settings.idempotency_key_max_chars)) is not None:
            key_errors.append(FieldError("/idempotencyKey", message))
            key = None
    try:
        cmd = parse_request(item, settings=svc.settings, templates=svc.templates, caller=caller_id, envelope=Envelope(idempotency_key=key))
    except InvalidRequest as exc:
        raise InvalidRequest(key_errors + exc.errors, exc.detail) from None
    if key_errors:
        raise InvalidRequest(key_errors)
    return cmd


def _submit_batch(items: list[Any], svc: bootstrap.Services, caller_id: str) -> list[dict[str, Any]]:
    """Validate every item, then write the valid ones in order; one result per item, in order.

    Runs in one threadpool hop for the whole batch. A failing item never stops the others and
    nothing is stored or queued for it."""
    results: list[dict[str, Any]] = []
    valid: list[tuple[dict[str, Any], SubmitNotification]] = []
    for index, item in enumerate(items):
        result: dict[str, Any] = {"index": index}
        results.append(result)
        try:
            valid.append((result, _parse_batch_item(item, svc, caller_id)))
        except InvalidRequest as exc:
            result |= {"status": 422, "problem": _problem_body(422, exc.detail, errors=exc.errors)}
    outcomes = handlers.submit_notifications(
        [cmd for _, cmd in valid], ledger=svc.ledger, publisher=svc.publisher, attachments=svc.attachments, clock=svc.clock
    )
    for (result, _), outcome in zip(valid, outcomes):
        if isinstance(outcome, IdempotencyConflict):
            result |= {"status": 409, "problem": _problem_body(409, str(outcome), existingId=outcome.existing_id)}
        elif isinstance(outcome, AttachmentStoreUnavailable):
            log.warning("attachment store unavailable at batch intake: %s", outcome.describe())
            detail = "Attachments cannot be stored right now; try again (with the same idempotencyKey)."
            result |= {"status": 503, "problem": _problem_body(503, detail)}
        else:
            notification, created = outcome
            location = f"/api/notifications/{notification.id}"
            result |= {"status": 202, "id": notification.id, "location": location, "idempotentReplayed": not created}
    return results


#: The single route's request body in the OpenAPI document, which each batch item is.
SINGLE_REQUEST_SCHEMA_REF = "#/paths/~1api~1notifications/post/requestBody/content/application~1json/schema"


def openapi_batch_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The batch request and response bodies for the OpenAPI document."""
    item = {
        "allOf": [{"$ref": SINGLE_REQUEST_SCHEMA_REF}],
        "properties": {
            "idempotencyKey": {
                "type": "string",
                "minLength": 1,
                "description": "This item's Idempotency-Key (scoped to the caller, like the header; at most "
                "IDEMPOTENCY_KEY_MAX_CHARS characters, no control characters); not part of the body",
            }
        },
    }
    request = {
        "type": "object",
        "required": ["notifications"],
        "additionalProperties": False,
        "properties": {"notifications": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_ITEMS, "items": item}},
    }
    problem_schema = {"description": "RFC 9457 problem details, as the single route would answer for this notification"}
    problem_schema |= PROBLEM_SCHEMA

    result = {
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": {"type": "integer"},
            "status": {"type": "integer", "enum": [202, 409, 422, 503]},
            "id": {"type": "string"},
            "location": {"type": "string"},
            "idempotentReplayed": {"type": "boolean"},
            "problem": problem_schema,
        },
    }
    response = {
        "type": "object",
        "properties": {
            "results": {"type": "array", "items": result},
            "accepted": {"type": "integer"},
            "failed": {"type": "integer"},
        },
    }
    return request, response


ACCEPTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "status", "channel", "location"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string"},
        "channel": {"type": "string", "enum": ["email", "sms"]},
        "location": {"type": "string"},
    },
}

NOTIFICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "channel", "status", "recipients", "history", "contentHash"],
    "properties": {
        "id": {"type": "string"},
        "channel": {"type": "string", "enum": ["email", "sms"]},
        "status": {"type": "string"},
        "recipients": {"type": "array", "items": {"type": "object"}},
        "history": {"type": "array", "items": {"type": "object"}},
        "contentHash": {"type": "string"},
    },
}


def _hoist_defs(node: Any, components: dict[str, Any]) -> None:
    """Move the ``$defs`` of schemas embedded in the document (a model's ``model_json_schema()``)
    into ``components/schemas``: their ``#/$defs/...`` references resolve against the document's
    root, where there are no ``$defs``."""
    if isinstance(node, dict):
        for name, definition in node.pop("$defs", {}).items():
            if components.setdefault(name, definition) != definition:
                raise ValueError(f"two different schemas are named {name} in the OpenAPI document")
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for value in node.values():
            _hoist_defs(value, components)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, components)


def create_api(get_services: Callable[[], bootstrap.Services] = bootstrap.services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Validate the settings when the app starts (in Azure: the host's first HTTP call), so a
        # bad one is reported by name instead of failing some later request.
        get_services()
        yield
        telemetry.flush()

    api = FastAPI(
        lifespan=lifespan,
        title="Notification service",
        version="1.0.0",
        description="Transactional email and SMS through Azure Communication Services.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    telemetry.instrument_api(api)

    # Blocking (an Entra ID key-set fetch, about once an hour): async routes call it in the
    # threadpool so a fetch never stalls the event loop.
    def caller(request: Request, *roles: str) -> Principal:
        svc = get_services()
        principal = authenticate(request.headers.get("authorization"), svc.settings, svc.entra_tokens)
        authorize(principal, *roles)
        return principal

    async def on_stores(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn`` (which writes the ledger and the queue) in the threadpool when the stores are
        remote, so a slow call never stalls the event loop; on the loop when they are files on this
        machine. A local write takes tens of microseconds, and under load the hand-off to a worker
        thread and back cost about 0.7 ms of CPU per request, more than the rest of the intake
        together (``bench/intake_latency.py``)."""
        if get_services().stores_in_process:
            return fn(*args, **kwargs)
        return await run_in_threadpool(fn, *args, **kwargs)

    def record(prepared: list[tuple[SubmitNotification, Notification]]) -> list[handlers.Submitted]:
        svc = get_services()
        return handlers.record_notifications(
            prepared, ledger=svc.ledger, publisher=svc.publisher, attachments=svc.attachments, clock=svc.clock
        )

    intake_group = group_commit.GroupCommit(record)

    async def caller_async(request: Request, *roles: str) -> Principal:
        """``caller`` for async routes: in the threadpool when a tenant is configured (a key fetch
        may block); inline with dev keys only, where the check is a dictionary lookup and a hop to
        the threadpool would cost more than the check itself."""
        if get_services().entra_tokens is None:
            return caller(request, *roles)
        return await run_in_threadpool(caller, request, *roles)

    def event_grid(request: Request) -> Principal:
        svc = get_services()
        secret = request.headers.get(WEBHOOK_SECRET_HEADER) or request.query_params.get(WEBHOOK_SECRET_QUERY)
        principal = authenticate_webhook(request.headers.get("authorization"), secret, svc.settings, svc.entra_tokens)
        authorize(principal, "eventgrid")
        return principal

    # ------------------------------------------------------------------ errors as problems

    @api.exception_handler(Unauthenticated)
    async def _unauthenticated(_: Request, exc: Unauthenticated) -> JSONResponse:
        return problem(401, str(exc))

    @api.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, str(exc))

    @api.exception_handler(AuthenticationUnavailable)
    async def _auth_unavailable(_: Request, exc: AuthenticationUnavailable) -> JSONResponse:
        response = problem(503, str(exc))
        response.headers["Retry-After"] = "10"
        return response

    @api.exception_handler(InvalidRequest)
    async def _invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        return problem(422, exc.detail, errors=exc.errors)

    @api.exception_handler(IdempotencyConflict)
    async def _conflict(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return problem(409, str(exc), existingId=exc.existing_id)

    @api.exception_handler(NotificationNotFound)
    async def _not_found(_: Request, exc: NotificationNotFound) -> JSONResponse:
        return problem(404, "No notification with that id.")

    @api.exception_handler(AttachmentStoreUnavailable)
    async def _store_unavailable(_: Request, exc: AttachmentStoreUnavailable) -> JSONResponse:
        log.warning("attachment store unavailable at intake: %s", exc.describe())
        response = problem(503, "Attachments cannot be stored right now; try again (with the same Idempotency-Key).")
        response.headers["Retry-After"] = "5"
        return response

    @api.exception_handler(_TooLarge)
    async def _too_large(_: Request, exc: _TooLarge) -> JSONResponse:
        return problem(413, f"The body is larger than {get_services().settings.max_request_bytes} bytes.")

    @api.exception_handler(_UnsupportedMediaType)
    async def _media(_: Request, exc: _UnsupportedMediaType) -> JSONResponse:
        return problem(415, "Send the body as application/json.")

    @api.exception_handler(_Malformed)
    async def _malformed(_: Request, exc: _Malformed) -> JSONResponse:
        return problem(400, f"The body is not valid JSON: {exc}")

    @api.exception_handler(RequestValidationError)
    async def _query(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError("/".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()
        ]
        return problem(422, "The request parameters are not valid.", errors=errors)

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", type(exc).__name__)
        return problem(500, "Something went wrong on our side; it has been logged.")

    default_openapi = api.openapi

    def openapi() -> dict[str, Any]:
        # Every route but health takes a bearer token: an Entra ID access token in Azure, a dev
        # key on the local stack (docs/security.md).
        if api.openapi_schema is None:
            schema = default_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(openapi_component_schemas())
            _hoist_defs(schema, components)
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Entra ID access token (or a dev key locally)"}
            }
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    if path != "/api/health":
                        operation["security"] = [{"bearer": []}]
                        # Any authenticated route: no or a bad token, no role, the key set out of
                        # reach, or a bug; each a problem (shared/entrypoints/problems.py).
                        for status, response in problem_responses(401, 403, 500, 503).items():
                            responses.setdefault(str(status), response)
                    if "422" in responses and "application/json" in responses["422"].get("content", {}):
                        # FastAPI's default for invalid parameters; ours answers a problem instead.
                        responses["422"] = problem_responses(422)[422]
            # The key's limit is a setting; the document is built once, on its first request.
            limit = get_services().settings.idempotency_key_max_chars
            submit = schema["paths"]["/api/notifications"]["post"]
            [header] = [p for p in submit["parameters"] if p["name"] == "Idempotency-Key"]
            header["schema"]["maxLength"] = limit
            batch = schema["paths"]["/api/notifications/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            batch["properties"]["notifications"]["items"]["properties"]["idempotencyKey"]["maxLength"] = limit
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]

    # ------------------------------------------------------------------ routes

    @api.get("/api/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.post(
        "/api/notifications",
        status_code=202,
        tags=["notifications"],
        responses={
            202: {
                "description": "Accepted: queued for sending",
                "headers": {
                    "Location": {"schema": {"type": "string"}},
                    "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true", "false"]}},
                },
                "content": {"application/json": {"schema": ACCEPTED_SCHEMA}},
                # Clients (and the stateful fuzz test) learn from it where the notification is.
                "links": {
                    "GetNotification": {
                        "operationId": "get_notification",
                        "parameters": {"notification_id": "$response.body#/id"},
                    }
                },
            },
            **problem_responses(400, 401, 403, 409, 413, 415, 422, 500, 503),
        },
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": openapi_request_schema()}}},
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "At most IDEMPOTENCY_KEY_MAX_CHARS characters, no control characters",
                    "schema": {"type": "string", "minLength": 1},
                },
                {"name": "X-Correlation-Id", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
        },
    )
    async def submit(request: Request) -> Response:
        principal = await caller_async(request, "sender")
        svc = get_services()
        envelope = Envelope(
            idempotency_key=request.headers.get("idempotency-key"), correlation_id=request.headers.get("x-correlation-id")
        )
        body = await _json_body(request, svc.settings.max_request_bytes)
        cmd = parse_request(body, settings=svc.settings, templates=svc.templates, caller=principal.id, envelope=envelope)
        if svc.stores_in_process:
            notification, created = await group_commit.submit(intake_group, cmd, attachments=svc.attachments, clock=svc.clock)
        else:
            notification, created = await run_in_threadpool(
                handlers.submit_notification,
                cmd,
                ledger=svc.ledger,
                publisher=svc.publisher,
                attachments=svc.attachments,
                clock=svc.clock,
            )
        location = f"/api/notifications/{notification.id}"
        return JSONResponse(
            {"id": notification.id, "status": notification.status.value, "channel": notification.channel.value, "location": location},
            status_code=202,
            headers={"Location": location, "Idempotent-Replayed": "false" if created else "true"},
        )

    batch_request_schema, batch_response_schema = openapi_batch_schemas()

    @api.post(
        "/api/notifications/batch",
        status_code=200,
        tags=["notifications"],
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": batch_request_schema}}},
            "responses": {
                "200": {
                    "description": "One result per notification, in order",
                    "content": {"application/json": {"schema": batch_response_schema}},
                }
            },
        },
        responses=problem_responses(400, 401, 403, 413, 415, 422, 500, 503),
    )
    async def submit_batch(request: Request) -> Response:
        principal = await caller_async(request, "sender")
        svc = get_services()
        if request.headers.get("idempotency-key") is not None:
            # A batch has no single key; ignoring one would make a retried batch send twice.
            raise InvalidRequest(
                [FieldError("Idempotency-Key", "not used on the batch route; give each notification an idempotencyKey")]
            )
        items = _batch_items(await _json_body(request, svc.settings.max_request_bytes))
        results = await on_stores(_submit_batch, items, svc, principal.id)
        accepted = sum(1 for r in results if r["status"] == 202)
        body = _BATCH_RESPONSE.dump_json({"results": results, "accepted": accepted, "failed": len(results) - accepted})
        return Response(body, media_type="application/json")

    @api.get(
        "/api/notifications/{notification_id}",
        tags=["notifications"],
        operation_id="get_notification",
        responses={
            200: {"description": "The notification", "content": {"application/json": {"schema": NOTIFICATION_SCHEMA}}},
            **problem_responses(401, 403, 404, 422, 500, 503),
        },
    )
    def get_notification(notification_id: str, request: Request) -> dict[str, Any]:
        principal = caller(request, "sender", "operator")
        notification = get_services().ledger.get(notification_id)
        # Another sender's notification is "not found", not "forbidden": its existence is theirs.
        if notification is None or ("operator" not in principal.roles and notification.owner != principal.id):
            raise NotificationNotFound(notification_id)
        return notification_view(notification)

    webhook_parameters = [
        {
            "name": WEBHOOK_SECRET_HEADER,
            "in": "header",
            "required": False,
            "description": "The EVENTGRID_WEBHOOK_SECRET, as a static delivery header of the subscription",
            "schema": {"type": "string"},
        },
        {
            "name": WEBHOOK_SECRET_QUERY,
            "in": "query",
            "required": False,
            "description": "The EVENTGRID_WEBHOOK_SECRET, as a query parameter of the subscription's endpoint URL",
            "schema": {"type": "string"},
        },
    ]

    @api.options(
        "/api/events",
        tags=["events"],
        response_class=Response,
        responses={200: {"description": "The CloudEvents abuse-protection handshake"}, **problem_responses(401, 403, 422, 500, 503)},
        openapi_extra={"parameters": webhook_parameters},
    )
    def events_handshake(request: Request, webhook_request_origin: str | None = Header(None)) -> Response:
        # CloudEvents 1.0 abuse protection: Event Grid asks before it delivers.
        event_grid(request)
        headers = {"Allow": "POST, OPTIONS"}
        if webhook_request_origin:
            headers["WebHook-Allowed-Origin"] = webhook_request_origin
            headers["WebHook-Allowed-Rate"] = "*"
        return Response(status_code=200, headers=headers)

    @api.post(
        "/api/events",
        tags=["events"],
        responses={
            200: {
                "description": "The validation code (subscription handshake), or what was applied",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **problem_responses(400, 401, 403, 413, 415, 422, 500, 503),
        },
        openapi_extra={
            "parameters": webhook_parameters,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "description": "A batch of events in the Event Grid schema or CloudEvents 1.0, or one event",
                            "oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}],
                        }
                    }
                },
            },
        },
    )
    async def events(request: Request) -> Response:
        await run_in_threadpool(event_grid, request)
        svc = get_services()
        payload = await _json_body(request, max(svc.settings.max_request_bytes, 1024 * 1024))
        items = payload if isinstance(payload, list) else [payload]
        # The validation handshake must be answered before anything is applied.
        validation = read_events(items[:1], trusted_source=svc.settings.acs_resource_id).validation_code
        if validation is not None:
            return JSONResponse({"validationResponse": validation})
        applied = await run_in_threadpool(triggers.apply_events, items, svc)
        return JSONResponse(applied.summary(len(items)))

    @api.get(
        "/api/reconciliation",
        tags=["operations"],
        responses={
            200: {"description": "Counts by status and the failure rate", "content": {"application/json": {"schema": {"type": "object"}}}},
            **problem_responses(401, 403, 422, 500, 503),
        },
    )
    def reconciliation(
        request: Request,
        start: datetime | None = Query(None, alias="from"),
        end: datetime | None = Query(None, alias="to"),
        channel: Channel | None = Query(None),
    ) -> dict[str, Any]:
        caller(request, "operator")
        end = end or get_services().clock.now()
        start = start or end - timedelta(hours=24)
        if start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
        if end.tzinfo is None:
            end = end.replace(tzinfo=timezone.utc)
        if start >= end:
            raise InvalidRequest([FieldError("from", "must be before 'to'")])
        return handlers.reconciliation_report(ledger=get_services().ledger, start=start, end=end, channel=channel)

    admin_api.register(api, get_services, caller)
    dashboard.register(api, caller, get_services)
    return api
