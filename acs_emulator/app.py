"""The emulator's HTTP surface: the ACS email and SMS endpoints plus the ``/emulator`` control API.

ACS endpoints (HMAC-authenticated, fault injection applies):

* ``POST /emails:send?api-version=...`` -> 202 ``{"id", "status": "Running"}`` with
  ``Operation-Location`` and ``retry-after``.
* ``GET /emails/operations/{id}?api-version=...`` -> 200 ``{"id", "status"}`` or 404 ``NotFound``.
* ``POST /sms?api-version=...`` -> 202 ``{"value": [per-recipient results]}``.

Control API (no authentication): see :mod:`acs_emulator` for the list.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import AuthFailure, content_hash, verify_hmac
from .config import EmulatorConfig
from .reports import (
    DUPLICATE,
    FOREIGN,
    ReportDispatcher,
    email_delivery_event,
    foreign_copy,
    sms_delivery_event,
    sms_segments,
    utc_now_iso,
)
from .state import (
    E164,
    REPORT_DISABLED,
    REPORT_NONE,
    REPORT_PENDING,
    EmulatorState,
    Faults,
    MessageRecord,
    RecipientReport,
    email_outcome,
    sms_outcome,
)

logger = logging.getLogger(__name__)

EMAIL_API_VERSIONS = frozenset({"2023-03-31", "2024-07-01-preview", "2025-09-01"})
SMS_API_VERSIONS = frozenset(
    {
        "2021-03-07",
        "2022-07-07",
        "2024-01-02",
        "2024-02-05",
        "2025-09-17",
        "2026-01-23",
        "2024-12-10-preview",
        "2025-05-29-preview",
        "2025-08-01-preview",
    }
)
MAX_EMAIL_RECIPIENTS = 50
MAX_SMS_RECIPIENTS = 100
MAX_SMS_LENGTH = 2048
#: Seconds the emulator tells the client to wait between polls of a running email operation.
EMAIL_RETRY_AFTER_S = 1

_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
EMAIL_ADDRESS = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")
#: type/subtype with RFC 6838 name characters. Whether ACS refuses types outside the list it
#: documents is not confirmed, so the emulator checks only the form.
MIME_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")


class AcsError(Exception):
    """An ACS-style error answer: ``{"error": {"code", "message"[, "target"]}}`` + ``x-ms-error-code``."""

    def __init__(self, status: int, code: str, message: str, *, target: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return JSONResponse(
            {"error": error}, status_code=self.status, headers={"x-ms-error-code": self.code, **self.headers}
        )


def _bad(message: str, target: str | None = None, code: str = "BadRequest") -> AcsError:
    return AcsError(400, code, message, target=target)


class _RequestLogMiddleware:
    """Echoes ``x-ms-client-request-id``, adds ``x-ms-request-id`` and logs ACS calls in the state
    (``GET /emulator/requests``) so tests can count what a client really sent, retries included."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        track = not path.startswith("/emulator")
        request_id = str(uuid.uuid4())
        client_request_id = None
        operation_id = None
        for name, value in scope.get("headers", []):
            if name == b"x-ms-client-request-id":
                client_request_id = value.decode("latin-1")
            elif name == b"operation-id":
                operation_id = value.decode("latin-1")
        info: dict[str, Any] = {}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name.lower() == b"x-ms-error-code":
                        info["errorCode"] = value.decode("latin-1")
                headers.append((b"x-ms-request-id", request_id.encode()))
                if client_request_id is not None:
                    headers.append((b"x-ms-client-request-id", client_request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        start = time.monotonic()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if track:
                entry = {
                    "at": utc_now_iso(),
                    "method": scope["method"],
                    "path": path,
                    "status": info.get("status"),
                    "durationMs": round((time.monotonic() - start) * 1000, 1),
                }
                if "errorCode" in info:
                    entry["errorCode"] = info["errorCode"]
                if operation_id is not None:
                    entry["operationId"] = operation_id
                self.state.log_request(entry)


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build the emulator app. State lives in ``app.state.emulator`` (an :class:`EmulatorState`),
    the report thread in ``app.state.dispatcher`` (started on the first report, stopped with the
    app's lifespan)."""
    config = config or EmulatorConfig()
    state = EmulatorState()
    dispatcher = ReportDispatcher(
        config.webhook_url,
        config.webhook_token,
        retry_interval_s=config.report_retry_interval_ms / 1000.0,
        give_up_after_s=config.report_give_up_after_s,
    )
    key = config.access_key_bytes
    report_delay_s = config.report_delay_ms / 1000.0

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        logger.info(
            "ACS emulator ready; reports go to the webhook after %d ms (reports %s)",
            config.report_delay_ms,
            "on" if config.webhook_url else "off",
        )
        yield
        dispatcher.stop()

    app = FastAPI(
        title="Azure Communication Services emulator",
        description="Local stand-in for ACS Email and SMS with simulated delivery reports.",
        lifespan=lifespan,
        docs_url="/emulator/docs",
        openapi_url="/emulator/openapi.json",
        redoc_url=None,
    )
    app.state.emulator = state
    app.state.dispatcher = dispatcher
    app.state.config = config

    @app.exception_handler(AcsError)
    async def _acs_error(_request: Request, exc: AcsError) -> JSONResponse:
        return exc.response()

    # -- delivery reports -------------------------------------------------------------------------
    def schedule_reports(
        events: list[dict[str, Any]], on_done: Callable[[list[dict[str, Any]], str], None]
    ) -> None:
        """Schedule the reports of one accepted message, applying the report faults.

        Each event gets a delay (the report delay plus jitter); events with the same delay go in one
        job (so without jitter a message's reports are one batch, as before).
        ``on_done(events, outcome)`` is called per job; with no events, once after the report delay
        with ``events == []``. Duplicates and foreign copies are jobs of their own without callback.
        """
        if not events:
            dispatcher.schedule(report_delay_s, [], lambda outcome: on_done([], outcome))
            return
        plans = state.plan_reports(len(events), report_delay_s)
        groups: dict[float, list[dict[str, Any]]] = {}
        for event, plan in zip(events, plans):
            groups.setdefault(plan.delay_s, []).append(event)
        for delay_s, group in groups.items():
            dispatcher.schedule(delay_s, group, lambda outcome, group=group: on_done(group, outcome))
        if not config.webhook_url:
            return  # reports are off: no extra copies either
        for event, plan in zip(events, plans):
            if plan.duplicate_delay_s is not None:
                dispatcher.schedule(plan.duplicate_delay_s, [copy.deepcopy(event)], None, kind=DUPLICATE)
            if plan.foreign_delay_s is not None:
                dispatcher.schedule(plan.foreign_delay_s, [foreign_copy(event)], None, kind=FOREIGN)

    # -- shared gate for the ACS endpoints ------------------------------------------------------
    async def gate(request: Request, body: bytes) -> None:
        """Latency, authentication and injected faults, in that order. Raises AcsError."""
        faults = state.get_faults()
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000.0)
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path_and_query = raw_path.decode("latin-1")
        if request.scope.get("query_string"):
            path_and_query += "?" + request.scope["query_string"].decode("latin-1")
        try:
            verify_hmac(
                key=key,
                method=request.method,
                path_and_query=path_and_query,
                headers=request.headers,
                body=body,
                max_skew_s=config.max_clock_skew_s,
            )
        except AuthFailure as failure:
            logger.info("Rejected %s %s: %s", request.method, request.url.path, failure.reason)
            raise AcsError(
                401,
                "Denied",
                f"Denied by the resource provider: {failure.reason}.",
                headers={"WWW-Authenticate": "HMAC-SHA256"},
            ) from None
        fault, faults = state.draw_fault()
        if fault == "throttle":
            logger.info("Injected 429 for %s %s", request.method, request.url.path)
            raise AcsError(
                429,
                "TooManyRequests",
                "Too many requests; retry after the time given in Retry-After (injected by the emulator).",
                headers={"Retry-After": str(faults.retry_after_seconds)},
            )
        if fault == "server_error":
            logger.info("Injected 500 for %s %s", request.method, request.url.path)
            raise AcsError(500, "InternalServerError", "An internal error occurred (injected by the emulator).")

    def api_version(request: Request, allowed: frozenset[str]) -> str:
        version = request.query_params.get("api-version")
        if not version:
            raise _bad("The api-version query parameter is required.", "api-version", "MissingApiVersionParameter")
        if version not in allowed:
            raise _bad(
                f"The api-version '{version}' is not supported; use one of: {', '.join(sorted(allowed))}.",
                "api-version",
                "UnsupportedApiVersion",
            )
        return version

    def parse_json_object(body: bytes) -> dict[str, Any]:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _bad("The request body is not valid JSON.") from None
        if not isinstance(parsed, dict):
            raise _bad("The request body must be a JSON object.")
        return parsed

    def base_url(request: Request) -> str:
        host = request.headers.get("host") or f"{config.host}:{config.port}"
        return f"{request.url.scheme}://{host}"

    # -- email ----------------------------------------------------------------------------------
    @app.post("/emails:send", status_code=202, tags=["acs"])
    async def send_email(request: Request) -> Response:
        body = await request.body()
        await gate(request, body)
        version = api_version(request, EMAIL_API_VERSIONS)

        operation_id = request.headers.get("operation-id") or str(uuid.uuid4())
        headers = {
            "Operation-Location": (
                f"{base_url(request)}/emails/operations/{quote(operation_id, safe='')}?api-version={version}"
            ),
            "retry-after": str(EMAIL_RETRY_AFTER_S),
        }

        body_hash = content_hash(body)
        known = state.find_operation(operation_id)
        if known is not None:
            if state.operation_body_hash(operation_id) != body_hash:
                logger.warning("Operation-Id reused with a different body; nothing new is sent")
            logger.info("Repeated Operation-Id; answering with the existing operation")
            return JSONResponse({"id": known[0], "status": known[1]}, status_code=202, headers=headers)

        if len(body) > config.max_email_request_bytes:
            raise AcsError(
                413,
                "PayloadTooLarge",
                f"The email request is {len(body)} bytes; the limit (attachments included) is "
                f"{config.max_email_request_bytes} bytes.",
            )
        message = parse_json_object(body)
        sender, recipients, attachments = validate_email(message, config)

        sender_domain = sender.rpartition("@")[2].lower()
        reports: dict[str, RecipientReport] = {}
        for _kind, address in recipients:
            key_ = address.lower()
            if any(existing.lower() == key_ for existing in reports):
                continue
            outcome = email_outcome(address)
            reports[address] = RecipientReport(outcome, REPORT_PENDING if outcome else REPORT_NONE)
        content = message["content"]
        record = MessageRecord(
            id=operation_id,
            channel="email",
            sender=sender,
            recipients=[address for _kind, address in recipients],
            received_at=utc_now_iso(),
            reports=reports,
            operation_id=operation_id,
            details={
                "to": [a for k, a in recipients if k == "to"],
                "cc": [a for k, a in recipients if k == "cc"],
                "bcc": [a for k, a in recipients if k == "bcc"],
                "subject": content.get("subject"),
                "plainText": content.get("plainText"),
                "html": content.get("html"),
                # What arrived, not the content: name, type, decoded size and SHA-256.
                "attachments": attachments,
                "headers": message.get("headers") or {},
                "apiVersion": version,
            },
        )
        created, status = state.add_email(record, body_hash)
        if not created:  # a concurrent request with the same Operation-Id won the race
            return JSONResponse({"id": operation_id, "status": status}, status_code=202, headers=headers)

        internet_message_id = f"<{uuid.uuid4()}@{sender_domain}>"
        events = [
            email_delivery_event(
                topic=config.resource_id,
                sender=sender,
                recipient=address,
                message_id=operation_id,
                internet_message_id=internet_message_id,
                status=report.status,
            )
            for address, report in reports.items()
            if report.status is not None
        ]
        schedule_reports(
            events,
            lambda done, outcome: state.email_reports_done(
                operation_id, outcome, record, [e["data"]["recipient"] for e in done] if done else None
            ),
        )
        logger.info("Accepted email operation %s with %d recipient(s)", operation_id, len(recipients))
        return JSONResponse({"id": operation_id, "status": "Running"}, status_code=202, headers=headers)

    @app.get("/emails/operations/{operation_id}", tags=["acs"])
    async def get_email_operation(operation_id: str, request: Request) -> Response:
        await gate(request, await request.body())
        api_version(request, EMAIL_API_VERSIONS)
        known = state.find_operation(operation_id)
        if known is None:
            raise AcsError(404, "NotFound", "No email operation with this id exists.", target="operationId")
        op_id, status = known
        headers = {"retry-after": str(EMAIL_RETRY_AFTER_S)} if status in ("NotStarted", "Running") else {}
        return JSONResponse({"id": op_id, "status": status}, headers=headers)

    # -- sms ------------------------------------------------------------------------------------
    @app.post("/sms", status_code=202, tags=["acs"])
    async def send_sms(request: Request) -> Response:
        body = await request.body()
        await gate(request, body)
        api_version(request, SMS_API_VERSIONS)
        payload = parse_json_object(body)
        sender, recipients, text, options = validate_sms(payload)
        enable_report = bool(options.get("enableDeliveryReport")) if options else False
        tag = options.get("tag") if options else None
        segments = sms_segments(text)

        results = []
        for index, recipient in enumerate(recipients):
            results.append(
                send_one_sms(
                    index=index,
                    recipient=recipient,
                    sender=sender,
                    text=text,
                    tag=tag,
                    enable_report=enable_report,
                    segments=segments,
                )
            )
        accepted = sum(1 for r in results if r.get("successful"))
        logger.info("SMS request: %d recipient(s), %d accepted", len(results), accepted)
        return JSONResponse({"value": results}, status_code=202)

    def send_one_sms(
        *, index: int, recipient: dict, sender: str, text: str, tag: Any, enable_report: bool, segments: int
    ) -> dict[str, Any]:
        to = recipient["to"]
        request_id = recipient.get("repeatabilityRequestId")
        first_sent = recipient.get("repeatabilityFirstSent")

        def rejected(message: str) -> dict[str, Any]:
            return {
                "to": to,
                "httpStatusCode": 400,
                "repeatabilityResult": "rejected",
                "successful": False,
                "errorMessage": message,
            }

        if request_id is not None or first_sent is not None:
            if not isinstance(request_id, str) or not request_id.strip():
                return rejected("Invalid value for repeatability-request-id.")
            if not isinstance(first_sent, str) or not _is_rfc1123(first_sent):
                return rejected("Invalid DateTime value for repeatability-first-sent.")
            earlier = state.sms_repeat(request_id)
            if earlier is not None:
                logger.info("Repeated SMS repeatabilityRequestId (recipient %d); returning the first result", index)
                return earlier

        repeatability = {"repeatabilityResult": "accepted"} if request_id is not None else {}
        if not E164.match(to):
            item = {
                "to": to,
                "httpStatusCode": 400,
                **repeatability,
                "successful": False,
                "errorMessage": "Invalid To phone number format.",
            }
            return state.add_sms_result(request_id, item, None)

        now = datetime.now(timezone.utc)
        message_id = f"Outgoing_{now:%Y%m%d%H%M%S}{uuid.uuid4()}"
        outcome = sms_outcome(to)
        if outcome is None:
            report = RecipientReport(None, REPORT_NONE)
        else:
            report = RecipientReport(outcome, REPORT_PENDING if enable_report else REPORT_DISABLED)
        record = MessageRecord(
            id=message_id,
            channel="sms",
            sender=sender,
            recipients=[to],
            received_at=utc_now_iso(),
            reports={to: report},
            repeatability_request_id=request_id,
            details={"message": text, "tag": tag, "enableDeliveryReport": enable_report, "segments": segments},
        )
        item = {
            "to": to,
            "messageId": message_id,
            "httpStatusCode": 202,
            **repeatability,
            "successful": True,
        }
        stored = state.add_sms_result(request_id, item, record)
        if stored.get("messageId") != message_id:
            return stored  # a concurrent request with the same repeatability id won the race
        if report.report == REPORT_PENDING:
            event = sms_delivery_event(
                topic=config.resource_id,
                message_id=message_id,
                sender=sender,
                to=to,
                status=outcome,
                segments=segments,
                sent_at=utc_now_iso(),
                tag=tag,
            )
            schedule_reports([event], lambda _done, result: state.sms_report_done(message_id, result, record))
        return item

    # -- control surface ------------------------------------------------------------------------
    @app.get("/emulator/health", tags=["emulator"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "pendingReports": dispatcher.pending()}

    @app.get("/emulator/stats", tags=["emulator"])
    def stats() -> dict[str, Any]:
        """Per channel: messages accepted, report events posted (first deliveries by status,
        duplicates, foreign copies), still pending and given up; plus the webhook's answers summed."""
        out = dispatcher.stats()
        accepted = state.accepted_counts()
        for channel, counts in out["channels"].items():
            out["channels"][channel] = {"accepted": accepted.get(channel, 0), **counts}
        return out

    @app.get("/emulator/messages", tags=["emulator"])
    def list_messages(channel: str | None = None) -> Response:
        if channel is not None and channel not in ("email", "sms"):
            return JSONResponse({"error": {"code": "BadRequest", "message": "channel is email or sms"}}, 400)
        return JSONResponse(state.list_messages(channel))

    @app.get("/emulator/messages/{message_id}", tags=["emulator"])
    def get_message(message_id: str) -> Response:
        found = state.get_message(message_id)
        if found is None:
            return JSONResponse({"error": {"code": "NotFound", "message": "unknown message id"}}, 404)
        return JSONResponse(found)

    @app.delete("/emulator/messages", tags=["emulator"])
    def clear_messages() -> dict[str, Any]:
        dropped = dispatcher.clear()
        cleared = state.clear()
        logger.info("Cleared %d message(s) and %d pending report batch(es)", cleared, dropped)
        return {"clearedMessages": cleared, "droppedReportBatches": dropped}

    @app.get("/emulator/faults", tags=["emulator"])
    def get_faults() -> dict[str, Any]:
        return state.get_faults().to_json()

    @app.put("/emulator/faults", tags=["emulator"])
    async def put_faults(request: Request) -> Response:
        try:
            changes = Faults.validate(json.loads(await request.body() or b"{}"))
        except ValueError as exc:  # includes JSONDecodeError
            return JSONResponse({"error": {"code": "BadRequest", "message": str(exc)}}, 400)
        faults = state.update_faults(changes)
        logger.info("Faults now %s", faults.to_json())
        return JSONResponse(faults.to_json())

    @app.delete("/emulator/faults", tags=["emulator"])
    def reset_faults() -> dict[str, Any]:
        return state.reset_faults().to_json()

    @app.get("/emulator/requests", tags=["emulator"])
    def list_requests() -> list[dict[str, Any]]:
        return state.list_requests()

    app.add_middleware(_RequestLogMiddleware, state=state)
    return app


def _is_rfc1123(value: str) -> bool:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False
    return parsed is not None


# -- validation -------------------------------------------------------------------------------------


def _address_list(value: Any, target: str, *, required: bool) -> list[str]:
    if value is None:
        if required:
            raise _bad(f"{target} is required and must list at least one recipient.", target)
        return []
    if not isinstance(value, list):
        raise _bad(f"{target} must be an array of {{address, displayName}} objects.", target)
    if required and not value:
        raise _bad(f"{target} must list at least one recipient.", target)
    out = []
    for i, item in enumerate(value):
        where = f"{target}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            raise _bad(f"{where}.address is required.", f"{where}.address")
        if "displayName" in item and item["displayName"] is not None and not isinstance(item["displayName"], str):
            raise _bad(f"{where}.displayName must be a string.", f"{where}.displayName")
        if not EMAIL_ADDRESS.match(item["address"]):
            raise AcsError(400, "InvalidEmailAddress", f"{where}.address is not a valid email address.", target=where)
        out.append(item["address"])
    return out


def validate_email(
    message: dict[str, Any], config: EmulatorConfig
) -> tuple[str, list[tuple[str, str]], list[dict[str, Any]]]:
    """Check an EmailMessage body the way ACS does; returns the sender, (kind, address) pairs and
    what the emulator records of each attachment."""
    sender = message.get("senderAddress")
    if not isinstance(sender, str) or not sender:
        raise _bad("senderAddress is required.", "senderAddress")
    if not EMAIL_ADDRESS.match(sender):
        raise AcsError(
            400, "InvalidEmailAddress", "senderAddress is not a valid email address.", target="senderAddress"
        )
    domain = sender.rpartition("@")[2].lower()
    if config.allowed_sender_domains and domain not in config.allowed_sender_domains:
        raise AcsError(
            400, "DomainNotLinked", "The specified sender domain has not been linked.", target="senderAddress"
        )

    recipients = message.get("recipients")
    if not isinstance(recipients, dict):
        raise _bad("recipients is required.", "recipients")
    to = _address_list(recipients.get("to"), "recipients.to", required=True)
    cc = _address_list(recipients.get("cc"), "recipients.cc", required=False)
    bcc = _address_list(recipients.get("bcc"), "recipients.bcc", required=False)
    total = len(to) + len(cc) + len(bcc)
    if total > MAX_EMAIL_RECIPIENTS:
        raise _bad(
            f"The email has {total} recipients in to, cc and bcc; the limit is {MAX_EMAIL_RECIPIENTS}.",
            "recipients",
            "TooManyRecipients",
        )

    content = message.get("content")
    if not isinstance(content, dict):
        raise _bad("content is required.", "content")
    subject = content.get("subject")
    if not isinstance(subject, str) or not subject:
        raise _bad("content.subject is required.", "content.subject")
    for part in ("plainText", "html"):
        if content.get(part) is not None and not isinstance(content[part], str):
            raise _bad(f"content.{part} must be a string.", f"content.{part}")

    _address_list(message.get("replyTo"), "replyTo", required=False)
    headers = message.get("headers")
    if headers is not None and (
        not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values())
    ):
        raise _bad("headers must map header names to strings.", "headers")

    attachments = message.get("attachments")
    recorded: list[dict[str, Any]] = []
    if attachments is not None:
        if not isinstance(attachments, list):
            raise _bad("attachments must be an array.", "attachments")
        for i, attachment in enumerate(attachments):
            where = f"attachments[{i}]"
            if not isinstance(attachment, dict):
                raise _bad(f"{where} must be an object.", where, "InvalidAttachment")
            for name in ("name", "contentType", "contentInBase64"):
                if not isinstance(attachment.get(name), str) or not attachment[name]:
                    raise _bad(f"{where}.{name} is required.", f"{where}.{name}", "InvalidAttachment")
            if not MIME_TYPE.match(attachment["contentType"]):
                raise _bad(
                    f"{where}.contentType is not a MIME type (type/subtype).", f"{where}.contentType", "InvalidAttachment"
                )
            try:
                content = base64.b64decode(attachment["contentInBase64"], validate=True)
            except (binascii.Error, ValueError):
                raise _bad(
                    f"{where}.contentInBase64 is not valid base64.", f"{where}.contentInBase64", "InvalidAttachment"
                ) from None
            recorded.append(
                {
                    "name": attachment["name"],
                    "contentType": attachment["contentType"],
                    "size": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                }
            )

    kinds = [("to", a) for a in to] + [("cc", a) for a in cc] + [("bcc", a) for a in bcc]
    return sender, kinds, recorded


def validate_sms(payload: dict[str, Any]) -> tuple[str, list[dict[str, Any]], str, dict[str, Any] | None]:
    sender = payload.get("from")
    if not isinstance(sender, str) or not sender:
        raise _bad("from is required.", "from")
    recipients = payload.get("smsRecipients")
    if not isinstance(recipients, list) or not recipients:
        raise _bad("smsRecipients is required and must list at least one recipient.", "smsRecipients")
    if len(recipients) > MAX_SMS_RECIPIENTS:
        raise _bad(f"smsRecipients lists more than {MAX_SMS_RECIPIENTS} recipients.", "smsRecipients")
    for i, recipient in enumerate(recipients):
        if not isinstance(recipient, dict) or not isinstance(recipient.get("to"), str):
            raise _bad(f"smsRecipients[{i}].to is required.", f"smsRecipients[{i}].to")
    text = payload.get("message")
    if not isinstance(text, str):
        raise _bad("message is required.", "message")
    if len(text) > MAX_SMS_LENGTH:
        raise _bad(f"message is longer than {MAX_SMS_LENGTH} characters.", "message")
    options = payload.get("smsSendOptions")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("enableDeliveryReport"), bool):
            raise _bad("smsSendOptions.enableDeliveryReport is required.", "smsSendOptions.enableDeliveryReport")
        if options.get("tag") is not None and not isinstance(options["tag"], str):
            raise _bad("smsSendOptions.tag must be a string.", "smsSendOptions.tag")
    return sender, recipients, text, options
