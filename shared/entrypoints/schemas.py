"""Request bodies of the HTTP API (and, later, the Service Bus intake), validated at the edge.

Parsing turns a JSON document into a ``SubmitNotification`` command or raises ``InvalidRequest``
naming every bad field as a JSON pointer, so handlers never see malformed input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import unicodedata
from typing import Any, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import models_json_schema

from ..config import Settings
from ..domain.commands import NewAttachment, SubmitNotification
from ..domain.errors import FieldError, InvalidRequest
from ..domain.model import Channel, Recipient
from ..domain.sms import count_segments
from ..service.ports import RenderedTemplate, TemplateError, Templates

# The other limits are settings (shared/config.py, docs/security.md); they are checked in
# parse_notification_request, where the settings are at hand.
MAX_ATTACHMENT_NAME_LENGTH = 255  # what most file systems allow for a file name


LONE_SURROGATE = "a string holds a lone surrogate escape (\\ud800-\\udfff), which is not Unicode text"


def json_document_size(document: Any) -> int:
    """The size in UTF-8 bytes of ``document`` as JSON, or ``ValueError`` (``LONE_SURROGATE``) if
    a string in it holds a lone surrogate. JSON may escape one ("\\ud800"), but no UTF-8 store,
    SDK or status event can carry it, so every way in (HTTP and the requests queue) refuses it."""
    try:
        return len(json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(LONE_SURROGATE) from None


def normalise_email(value: str) -> str:
    try:
        # Deliverability (DNS) is ACS's job; syntax is ours.
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def normalise_e164(value: str) -> str:
    if not value.startswith("+"):
        raise ValueError("phone numbers must be in E.164 form, starting with + and the country code")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("not a valid E.164 phone number") from None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if formatted != value or not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid E.164 phone number")
    return formatted


def check_single_line(value: str, *, allow_tab: bool) -> str:
    """``value`` if it can be one header line: no CR, LF or other control character (C0, DEL,
    C1; a tab only where ``allow_tab``), and no Unicode line or paragraph separator, any of which
    could end the header early or smuggle a second one in (header injection)."""
    for ch in value:
        if (unicodedata.category(ch) == "Cc" and not (allow_tab and ch == "\t")) or ch in "\u2028\u2029":
            raise ValueError(f"must not contain line breaks or control characters (found U+{ord(ch):04X})")
    return value


#: For the OpenAPI document only (the validators above decide): one header line, no control
#: characters, as ``check_single_line`` checks. Generated clients and fuzzers then send values
#: that can pass.
SINGLE_LINE = {"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"}
SINGLE_LINE_WITH_TAB = {"pattern": "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class AddressIn(_Strict):
    address: str = Field(json_schema_extra={"format": "email"})
    #: At most DISPLAY_NAME_MAX_CHARS, checked with the settings in parse_notification_request.
    displayName: str | None = Field(None, json_schema_extra=SINGLE_LINE)

    @field_validator("address")
    @classmethod
    def _valid(cls, value: str) -> str:
        return normalise_email(value)

    @field_validator("displayName")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        return None if value is None else check_single_line(value, allow_tab=False)


def _address(value: Any) -> Any:
    return {"address": value} if isinstance(value, str) else value


def _file_name(value: str) -> str:
    """A name a mail client can save as it is: no folders, nothing hidden, nothing invisible."""
    if not value.strip():
        raise ValueError("must not be empty")
    if "/" in value or "\\" in value:
        raise ValueError("must be a file name without a path (no / or \\)")
    # Cc: control characters; Cf: invisible formatting, e.g. the right-to-left override that makes
    # "invoice\u202efdp.exe" look like "invoiceexe.pdf"; Zl/Zp: line and paragraph separators.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in value):
        raise ValueError("must not contain control or invisible formatting characters")
    if value.startswith("."):
        raise ValueError("must not start with a dot")
    return value


def _strict_base64(value: str) -> bytes:
    """Standard base64 (RFC 4648 section 4) with padding, no line breaks, in its canonical form."""
    try:
        content = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64 with padding and no line breaks") from None
    if base64.b64encode(content).decode("ascii") != value:
        raise ValueError("must be standard base64 with padding and no line breaks")
    return content


class AttachmentIn(_Strict):
    name: str = Field(max_length=MAX_ATTACHMENT_NAME_LENGTH)
    contentType: str = Field(min_length=1, max_length=255)
    #: Decoded (once) by ``_attachments``, which also checks the type and the sizes.
    contentBase64: str = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _file_name(value)


class TemplateRef(_Strict):
    name: str = Field(min_length=1, max_length=64)
    version: int | None = Field(None, ge=1)
    data: dict[str, Any] = Field(default_factory=dict)
    locale: str | None = Field(None, max_length=35)


class EmailRequest(_Strict):
    # The document says what _content and parse_notification_request check: literal content
    # (a subject and text or html) or a template.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"required": ["subject", "text"]}, {"required": ["subject", "html"]}, {"required": ["template"]}]
        }
    )

    channel: Literal["email"]
    to: list[AddressIn] = Field(min_length=1)
    cc: list[AddressIn] = Field(default_factory=list)
    bcc: list[AddressIn] = Field(default_factory=list)
    #: At most SUBJECT_MAX_CHARS, checked with the settings in parse_notification_request.
    subject: str | None = Field(None, min_length=1, json_schema_extra=SINGLE_LINE_WITH_TAB)
    text: str | None = None
    html: str | None = None
    template: TemplateRef | None = None
    replyTo: list[AddressIn] = Field(default_factory=list, max_length=10)
    attachments: list[AttachmentIn] = Field(default_factory=list)
    sender: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("to", "cc", "bcc", "replyTo", mode="before")
    @classmethod
    def _strings_are_addresses(cls, value: Any) -> Any:
        return [_address(v) for v in value] if isinstance(value, list) else value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        return None if value is None else _subject_line(value)

    @model_validator(mode="after")
    def _content(self) -> EmailRequest:
        if self.template is None and not (self.text and self.text.strip()) and not (self.html and self.html.strip()):
            raise ValueError("an email needs text or html, or a template")
        return self


def _subject_line(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    # A tab is folding white space in a header, harmless in a subject.
    return check_single_line(value, allow_tab=True)


class SmsRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["message"]}, {"required": ["template"]}]})

    channel: Literal["sms"]
    to: list[str] = Field(min_length=1, json_schema_extra={"items": {"type": "string", "pattern": "^\\+[1-9][0-9]{6,14}$"}})
    message: str | None = None
    template: TemplateRef | None = None
    sender: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("to")
    @classmethod
    def _numbers(cls, value: list[str]) -> list[str]:
        errors = []
        for index, number in enumerate(value):
            try:
                normalise_e164(number)
            except ValueError as exc:
                errors.append(f"[{index}] {exc}")
        if errors:
            raise ValueError("; ".join(errors))
        return value

    @field_validator("message")
    @classmethod
    def _message(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value


def _pointer(location: tuple[Any, ...]) -> str:
    return "/" + "/".join(str(part) for part in location) if location else "/"


def _field_errors(exc: ValidationError, channel: str) -> list[FieldError]:
    errors = []
    for error in exc.errors(include_url=False):
        location = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
            if location == ("attachments",) and channel == "sms":
                message = "attachments are for email only"
        errors.append(FieldError(_pointer(location), message))
    return errors


def _attachments(request: EmailRequest, settings: Settings, errors: list[FieldError]) -> list[NewAttachment]:
    """Decode and check the attachments against the configured limits; bad ones become errors."""
    given = request.attachments
    if len(given) > settings.attachments_max_count:
        errors.append(FieldError("/attachments", f"at most {settings.attachments_max_count} attachments"))
        return []
    allowed = set(settings.attachment_content_types)
    accepted = []
    for index, attachment in enumerate(given):
        where = f"/attachments/{index}"
        content_type = attachment.contentType.strip().lower()
        if content_type not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            errors.append(FieldError(f"{where}/contentType", f"is not an allowed attachment type (allowed: {listed})"))
        try:
            content = _strict_base64(attachment.contentBase64)
        except ValueError as exc:
            errors.append(FieldError(f"{where}/contentBase64", str(exc)))
            continue
        if not content:
            errors.append(FieldError(f"{where}/contentBase64", "must not be empty"))
            continue
        accepted.append(NewAttachment(name=attachment.name, content_type=content_type, content=content))
    total, limit = sum(len(a.content) for a in accepted), settings.attachments_max_total_bytes
    if total > limit:
        errors.append(FieldError("/attachments", f"{total} bytes together (decoded); the limit is {limit} bytes"))
    return accepted


def _utf8_len(value: str) -> int:
    # surrogatepass: a lone surrogate (valid JSON, "\ud800") is counted, not a crash.
    return len(value.encode("utf-8", "surrogatepass"))


def _display_names(request: EmailRequest, limit: int, errors: list[FieldError]) -> None:
    for kind in ("to", "cc", "bcc", "replyTo"):
        for index, address in enumerate(getattr(request, kind)):
            if address.displayName is not None and len(address.displayName) > limit:
                errors.append(FieldError(f"/{kind}/{index}/displayName", f"is {len(address.displayName)} characters; the limit is {limit}"))


def _email_sizes(content: dict[str, Any], settings: Settings, rendered_field: str | None, errors: list[FieldError]) -> None:
    """Subject, text and HTML against their limits; a rendered template's are reported on it."""
    subject = content.get("subject")
    if subject is not None and len(subject) > settings.subject_max_chars:
        field = rendered_field or "/subject"
        errors.append(FieldError(field, f"the subject is {len(subject)} characters; the limit is {settings.subject_max_chars}"))
    for part, limit in (("text", settings.email_text_max_bytes), ("html", settings.email_html_max_bytes)):
        value = content.get(part)
        if value is not None and (size := _utf8_len(value)) > limit:
            errors.append(FieldError(rendered_field or f"/{part}", f"the {part} is {size} bytes (UTF-8); the limit is {limit}"))


def request_hash(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _render(
    request: EmailRequest | SmsRequest, channel: Channel, templates: Templates | None, errors: list[FieldError]
) -> RenderedTemplate | None:
    """The template's content, or None for a literal request; a template given beside literal
    content, or one that cannot be used, is the caller's error."""
    ref = request.template
    if ref is None:
        return None
    literal = ("subject", "text", "html") if channel is Channel.EMAIL else ("message",)
    given = [f for f in literal if getattr(request, f) is not None]
    if given:
        errors.append(FieldError("/template", f"give a template or {', '.join(literal)}, not both"))
        return None
    if templates is None:
        errors.append(FieldError("/template", "templates are not available here"))
        return None
    try:
        return templates.render(name=ref.name, channel=channel, data=ref.data, version=ref.version, locale=ref.locale)
    except TemplateError as exc:
        errors.append(FieldError(exc.field, exc.message))
        return None


def parse_notification_request(
    body: Any,
    *,
    settings: Settings,
    templates: Templates | None = None,
    idempotency_key: str | None = None,
    caller: str = "anonymous",
) -> SubmitNotification:
    if not isinstance(body, dict):
        raise InvalidRequest([FieldError("/", "the body must be a JSON object")])
    channel = body.get("channel")
    if channel not in ("email", "sms"):
        raise InvalidRequest([FieldError("/channel", "must be 'email' or 'sms'")])
    model = EmailRequest if channel == "email" else SmsRequest
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(_field_errors(exc, channel)) from None

    errors: list[FieldError] = []
    # Most requests have no metadata: "{}" needs no serialising to be measured.
    metadata_bytes = (
        _utf8_len(json.dumps(request.metadata, separators=(",", ":"), ensure_ascii=False)) if request.metadata else len("{}")
    )
    if metadata_bytes > settings.metadata_max_bytes:
        errors.append(FieldError("/metadata", f"is {metadata_bytes} bytes of JSON; the limit is {settings.metadata_max_bytes}"))
    rendered = _render(request, Channel(channel), templates, errors)
    template_sender = rendered.sender if rendered else None

    if isinstance(request, EmailRequest):
        allowed = settings.email_senders
        recipients = [
            Recipient(address=a.address, kind=kind, display_name=a.displayName)
            for kind, items in (("to", request.to), ("cc", request.cc), ("bcc", request.bcc))
            for a in items
        ]
        if len(recipients) > settings.email_max_recipients:
            errors.append(FieldError("/to", f"at most {settings.email_max_recipients} recipients in to, cc and bcc together"))
        _display_names(request, settings.display_name_max_chars, errors)
        if rendered is not None:
            content: dict[str, Any] = {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}
            try:
                _subject_line(rendered.subject or "")
            except ValueError as exc:
                errors.append(FieldError("/template", f"the rendered subject {exc}"))
        else:
            content = {"subject": request.subject, "text": request.text, "html": request.html}
            if request.subject is None and request.template is None:
                errors.append(FieldError("/subject", "is required unless a template is given"))
        _email_sizes(content, settings, "/template" if rendered is not None else None, errors)
        if request.replyTo:
            content["replyTo"] = [{"address": a.address, "display_name": a.displayName} for a in request.replyTo]
        sender = request.sender or template_sender or settings.default_email_sender
        sender_ok = sender.lower() in {s.lower() for s in allowed}
        attachments = _attachments(request, settings, errors)
    else:
        allowed = settings.sms_senders
        attachments = []
        recipients = [Recipient(address=number) for number in request.to]
        if len(recipients) > settings.sms_max_recipients:
            errors.append(FieldError("/to", f"at most {settings.sms_max_recipients} recipients"))
        message = rendered.message if rendered is not None else request.message
        content = {"message": message}
        if rendered is None and request.message is None and request.template is None:
            errors.append(FieldError("/message", "is required unless a template is given"))
        if message is not None:
            field = "/template" if rendered is not None else "/message"
            if not message.strip():
                errors.append(FieldError(field, "the message is empty"))
            elif len(message) > settings.sms_max_chars:
                errors.append(FieldError(field, f"the message is {len(message)} characters; the limit is {settings.sms_max_chars}"))
            segments = count_segments(message)
            content |= {"segments": segments.segments, "encoding": segments.encoding}
            if segments.segments > settings.sms_max_segments:
                errors.append(
                    FieldError(field, f"needs {segments.segments} {segments.encoding} segments; the limit is {settings.sms_max_segments}")
                )
        sender = request.sender or template_sender or settings.default_sms_sender
        sender_ok = sender in allowed

    if not sender_ok:
        field = "/sender" if request.sender else "/template"
        errors.append(FieldError(field, "is not one of the configured senders for this channel"))
    seen: set[str] = set()
    for index, recipient in enumerate(recipients):
        key = recipient.address.lower()
        if key in seen:
            errors.append(FieldError(f"/{recipient.kind}", f"recipient {index + 1} appears more than once"))
        seen.add(key)
    if errors:
        raise InvalidRequest(errors)
    if rendered is not None:
        content["template"] = {"name": rendered.name, "version": rendered.version, "locale": rendered.locale}

    return SubmitNotification(
        channel=Channel(channel),
        sender=sender,
        recipients=recipients,
        content=content,
        metadata=request.metadata,
        owner=caller,
        idempotency_key=f"{caller}:{idempotency_key}" if idempotency_key else None,
        # Over the request as sent, attachments included: a different file is a different request.
        # Only a request with a key can meet its own earlier body; without one it is not needed.
        request_hash=request_hash(body) if idempotency_key else None,
        attachments=attachments,
    )


#: Where the request models live in the OpenAPI document.
OPENAPI_SCHEMAS = "#/components/schemas/"
#: The request body's models, by their name in the document.
REQUEST_MODELS = ("EmailRequest", "SmsRequest")


def openapi_request_schema() -> dict[str, Any]:
    """JSON Schema of the request body for the OpenAPI document; the models it refers to are
    ``openapi_component_schemas()``."""
    return {
        "oneOf": [{"$ref": f"{OPENAPI_SCHEMAS}EmailRequest"}, {"$ref": f"{OPENAPI_SCHEMAS}SmsRequest"}],
        "discriminator": {
            "propertyName": "channel",
            "mapping": {"email": f"{OPENAPI_SCHEMAS}EmailRequest", "sms": f"{OPENAPI_SCHEMAS}SmsRequest"},
        },
    }


def openapi_component_schemas() -> dict[str, Any]:
    """The request models and the models they use, for ``components/schemas``: their references
    point there (a model's own ``$defs`` would resolve against the document's root)."""
    _, schemas = models_json_schema(
        [(EmailRequest, "validation"), (SmsRequest, "validation")], ref_template=OPENAPI_SCHEMAS + "{model}"
    )
    return schemas["$defs"]
