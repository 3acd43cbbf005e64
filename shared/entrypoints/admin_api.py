"""The operators' HTTP API (role ``operator``): dead letters and the suppression list.

Registered on the app by ``create_api``; errors are problem details like the rest of the API, and
every change is recorded in the ledger's audit trail with the caller's identity.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import bootstrap
from ..domain.commands import DeadLetterFilter, ReplayDeadLetters
from ..domain.errors import FieldError, InvalidRequest
from ..domain.model import Channel, Suppression
from ..service import operator
from .auth import Principal
from .problems import problem, problem_responses
from .schemas import normalise_e164, normalise_email

MAX_LIMIT = 1000
MAX_REASON_LENGTH = 500


class ReplayRequest(BaseModel):
    """``POST /api/admin/dead-letters/replay``: by ``ids``, or else by the listing's filters."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ids: list[str] = Field(default_factory=list, max_length=MAX_LIMIT)
    channel: Channel | None = None
    reason: str | None = Field(None, min_length=1, max_length=200)
    since: datetime | None = None
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    dry_run: bool = Field(False, alias="dryRun")


class NewSuppression(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    address: str = Field(min_length=1, max_length=320)
    reason: str = Field(min_length=1, max_length=MAX_REASON_LENGTH)


M = TypeVar("M", bound=BaseModel)


async def _body(request: Request, model: type[M], limit: int) -> M:
    """The JSON body as ``model``, read only after the caller is authorized (a body that FastAPI
    validated first would tell an unauthenticated caller about its mistakes)."""
    from . import api  # here, not at the top: api.py imports this module

    data = await api._json_body(request, limit)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [FieldError("/" + "/".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise InvalidRequest(errors) from None


def _utc(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def _address(channel: Channel, address: str, field: str) -> str:
    try:
        return normalise_email(address) if channel is Channel.EMAIL else normalise_e164(address)
    except ValueError as exc:
        raise InvalidRequest([FieldError(field, str(exc))]) from None


def suppression_view(entry: Suppression) -> dict[str, Any]:
    return {
        "channel": entry.channel.value,
        "address": entry.address,
        "reason": entry.reason,
        "createdAt": entry.created_at.isoformat(),
        "notificationId": entry.notification_id,
    }


def register(
    api: FastAPI,
    get_services: Callable[[], bootstrap.Services],
    caller: Callable[..., Principal],
) -> None:
    """Add the operator routes to ``api``; ``caller(request, role)`` authenticates and authorizes."""

    # ------------------------------------------------------------------ dead letters

    @api.get("/api/admin/dead-letters", tags=["operations"])
    def list_dead_letters(
        request: Request,
        channel: Channel | None = Query(None),
        reason: str | None = Query(None, min_length=1, max_length=200),
        since: datetime | None = Query(None),
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
    ) -> dict[str, Any]:
        caller(request, "operator")
        svc = get_services()
        found = operator.list_dead_letters(
            DeadLetterFilter(channel=channel, reason=reason, since=_utc(since), limit=limit),
            ledger=svc.ledger,
            dead_letters=svc.queue,
        )
        return {"deadLetters": [d.summary() for d in found]}

    @api.get("/api/admin/dead-letters/{dead_letter_id}", tags=["operations"], responses=problem_responses(404))
    def get_dead_letter(dead_letter_id: str, request: Request) -> Response:
        caller(request, "operator")
        svc = get_services()
        found = operator.get_dead_letter(dead_letter_id, ledger=svc.ledger, dead_letters=svc.queue)
        if found is None:
            return problem(404, "No dead letter with that id.")
        from .api import notification_view  # here, not at the top: api.py imports this module

        return JSONResponse(
            found.summary()
            | {
                "queueMessages": [
                    {
                        "sequenceNumber": m.sequence_number,
                        "messageId": m.message_id,
                        "body": m.body,
                        "applicationProperties": m.application_properties,
                        "deliveryCount": m.delivery_count,
                        "enqueuedAt": m.enqueued_at.isoformat(),
                        "reason": m.reason,
                        "description": m.description,
                    }
                    for m in found.queue_messages
                ],
                "notification": notification_view(found.notification) if found.notification else None,
            }
        )

    @api.post(
        "/api/admin/dead-letters/replay",
        tags=["operations"],
        responses=problem_responses(400, 413, 415, 422),
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": ReplayRequest.model_json_schema(by_alias=True)}}}},
    )
    async def replay_dead_letters(request: Request) -> dict[str, Any]:
        principal = caller(request, "operator")
        svc = get_services()
        body = await _body(request, ReplayRequest, svc.settings.max_request_bytes)
        cmd = ReplayDeadLetters(
            actor=principal.id,
            ids=tuple(body.ids),
            filter=DeadLetterFilter(channel=body.channel, reason=body.reason, since=_utc(body.since), limit=body.limit),
            dry_run=body.dry_run,
        )
        result = await run_in_threadpool(
            operator.replay_dead_letters,
            cmd,
            ledger=svc.ledger,
            dead_letters=svc.queue,
            publisher=svc.publisher,
            suppressions=svc.suppressions,
            clock=svc.clock,
        )
        return result.summary()

    # ------------------------------------------------------------------ suppressions

    @api.get("/api/admin/suppressions", tags=["operations"])
    def list_suppressions(
        request: Request, channel: Channel | None = Query(None), limit: int = Query(100, ge=1, le=MAX_LIMIT)
    ) -> dict[str, Any]:
        caller(request, "operator")
        entries = get_services().suppressions.list(channel=channel, limit=limit)
        return {"suppressions": [suppression_view(e) for e in entries]}

    @api.post(
        "/api/admin/suppressions",
        tags=["operations"],
        responses={
            201: {"description": "Added to the suppression list", "content": {"application/json": {"schema": {"type": "object"}}}},
            **problem_responses(400, 413, 415, 422),
        },
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": NewSuppression.model_json_schema()}}}},
    )
    async def add_suppression(request: Request) -> Response:
        principal = caller(request, "operator")
        svc = get_services()
        body = await _body(request, NewSuppression, svc.settings.max_request_bytes)
        address = _address(body.channel, body.address, "/address")
        added = await run_in_threadpool(
            operator.add_suppression,
            body.channel, address, body.reason,
            actor=principal.id, suppressions=svc.suppressions, ledger=svc.ledger, clock=svc.clock,
        )
        entry = svc.suppressions.find(body.channel, [address]).get(address)
        view = suppression_view(entry) if entry else {"channel": body.channel.value, "address": address}
        location = f"/api/admin/suppressions/{body.channel.value}/{address}"
        return JSONResponse(view | {"added": added}, status_code=201 if added else 200, headers={"Location": location})

    @api.delete(
        "/api/admin/suppressions/{channel}/{address}", tags=["operations"], status_code=204, responses=problem_responses(404, 422)
    )
    def remove_suppression(channel: str, address: str, request: Request) -> Response:
        principal = caller(request, "operator")
        svc = get_services()
        if channel not in {c.value for c in Channel}:
            # Checked after the caller: path parameters FastAPI validated would answer before auth.
            raise InvalidRequest([FieldError("channel", f"must be one of {', '.join(c.value for c in Channel)}")])
        removed = operator.remove_suppression(
            Channel(channel), address, actor=principal.id, suppressions=svc.suppressions, ledger=svc.ledger, clock=svc.clock
        )
        if not removed:
            return problem(404, "That recipient is not on the suppression list.")
        return Response(status_code=204)
