"""Every app setting the service reads, validated in one place.

Names match the Function App's app settings (and ``local.settings.sample.json``), so the same
values work in Azure and on the local stack. An invalid value stops start-up with a message that
names the setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .domain.privacy import DEV_PII_HASH_KEY

ROLES = ("sender", "operator", "eventgrid")

#: App-role values (the ``roles`` claim of an Entra ID token) mapped to the service's roles unless
#: ENTRA_ROLE_MAP says otherwise; docs/security.md lists the app roles to create.
DEFAULT_ENTRA_ROLE_MAP = "Notify.Send=sender,Notify.Operate=operator,Notify.EventGrid=eventgrid"
#: ACS's own limits per send request: a setting may lower them, never raise them.
ACS_EMAIL_MAX_RECIPIENTS = 50
ACS_SMS_MAX_RECIPIENTS = 100
ACS_SMS_MAX_CHARS = 2048
#: RFC 5322's line limit: a longer subject cannot be written as one header line.
RFC5322_LINE_CHARS = 998
#: Below this an Event Grid webhook secret is guessable enough to matter.
MIN_WEBHOOK_SECRET_CHARS = 32
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: ACS's limit on one email request, attachments included (its documents say 10 MB).
ACS_EMAIL_REQUEST_BYTES = 10 * 1024 * 1024
#: Attachment types accepted unless ATTACHMENT_CONTENT_TYPES says otherwise: common documents,
#: images and ZIP, a subset of the types ACS documents as allowed; macro-enabled Office files and
#: SVG, which can carry active content, are left out.
DEFAULT_ATTACHMENT_CONTENT_TYPES = (
    "application/pdf",
    "text/plain",
    "text/csv",
    "text/calendar",
    "image/png",
    "image/jpeg",
    "image/gif",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/zip",
)
#: An Event Grid event type segment: letters and digits, dot-separated (``Contoso.Notify``).
_TYPE_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*")
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", populate_by_name=True)

    # Where the service runs. "local" allows the static dev keys; "azure" refuses them.
    environment: Literal["local", "azure"] = Field("local", alias="NOTIFY_ENVIRONMENT")
    dev_keys: str = Field("", alias="NOTIFY_DEV_KEYS")

    # Entra ID access tokens (required in Azure): the tenant that issues them, the audiences that
    # name this API (its application ID URI and/or client id), the token versions whose issuer is
    # accepted, and how app roles in the token map to the service's roles. docs/security.md.
    entra_tenant_id: str | None = Field(None, alias="ENTRA_TENANT_ID")
    entra_audiences: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="ENTRA_AUDIENCES")
    entra_token_versions: Annotated[list[str], NoDecode] = Field(["2"], alias="ENTRA_TOKEN_VERSIONS")
    entra_role_map: str = Field(DEFAULT_ENTRA_ROLE_MAP, alias="ENTRA_ROLE_MAP")
    # Empty: the tenant's JWKS at login.microsoftonline.com. Set for a sovereign cloud (or a test).
    entra_jwks_url: str | None = Field(None, alias="ENTRA_JWKS_URL")
    # Signing keys are cached this long; a token signed with a key not in the cache refetches
    # them, at most once per ENTRA_JWKS_REFRESH_COOLDOWN_SECONDS, so made-up key ids cannot turn
    # every request into a fetch.
    entra_jwks_cache_seconds: int = Field(3600, alias="ENTRA_JWKS_CACHE_SECONDS", ge=60, le=86400)
    entra_jwks_refresh_cooldown_seconds: int = Field(30, alias="ENTRA_JWKS_REFRESH_COOLDOWN_SECONDS", ge=0, le=3600)

    # The Event Grid webhook (/api/events) also accepts this shared secret, in the
    # X-Notify-Webhook-Secret header or the webhookSecret query parameter; empty turns it off.
    eventgrid_webhook_secret: str | None = Field(None, alias="EVENTGRID_WEBHOOK_SECRET")
    data_dir: Path = Field(Path(".data"), alias="NOTIFY_DATA_DIR")

    # sqlite / embedded: the local stack. table / servicebus: Azure, with the managed identity.
    ledger_backend: Literal["sqlite", "table"] = Field("sqlite", alias="LEDGER_BACKEND")
    queue_backend: Literal["embedded", "servicebus"] = Field("embedded", alias="QUEUE_BACKEND")
    notifications_queue: str = Field("notifications", alias="NOTIFICATIONS_QUEUE")
    # Where other apps put notification requests (the intake trigger's queue, and the CLI's enqueue).
    requests_queue: str = Field("notification-requests", alias="REQUESTS_QUEUE", min_length=1, max_length=260)
    # Where Event Grid puts ACS events in Azure (the report trigger's queue); unused locally, where
    # the emulator posts them to /api/events.
    delivery_reports_queue: str = Field("delivery-reports", alias="DELIVERY_REPORTS_QUEUE", min_length=1, max_length=260)
    # https://<account>.table.core.windows.net (or a Cosmos DB for Table endpoint).
    tables_endpoint: str | None = Field(None, alias="TABLES_ENDPOINT")
    # Only for Azurite on a laptop; in Azure the identity authenticates against TABLES_ENDPOINT.
    tables_connection_string: str | None = Field(None, alias="TABLES_CONNECTION_STRING")
    # Requests each Table Storage adapter keeps in flight when a batch touches many partitions (a
    # batch of delivery reports reads and writes one notification each); also the connection pool.
    table_concurrency: int = Field(8, alias="TABLE_CONCURRENCY", ge=1, le=64)
    # The same setting the Service Bus trigger's identity-based connection reads.
    servicebus_namespace: str | None = Field(None, alias="ServiceBusConnection__fullyQualifiedNamespace")

    acs_endpoint: str = Field(..., alias="ACS_ENDPOINT")
    # Only for the local emulator; in Azure the managed identity authenticates.
    acs_access_key: str | None = Field(None, alias="ACS_ACCESS_KEY")
    # The ACS resource whose delivery reports are trusted (Event Grid `topic` / CloudEvents `source`).
    acs_resource_id: str = Field(..., alias="ACS_RESOURCE_ID")

    # Comma-separated allow-lists; the first entry is the default sender.
    email_senders: Annotated[list[str], NoDecode] = Field(..., alias="EMAIL_SENDERS")
    sms_senders: Annotated[list[str], NoDecode] = Field(..., alias="SMS_SENDERS")

    max_send_attempts: int = Field(8, alias="MAX_SEND_ATTEMPTS", ge=1, le=100)
    retry_base_seconds: float = Field(2.0, alias="RETRY_BASE_SECONDS", gt=0)
    retry_max_seconds: float = Field(900.0, alias="RETRY_MAX_SECONDS", gt=0)
    acs_timeout_seconds: float = Field(30.0, alias="ACS_TIMEOUT_SECONDS", gt=0)
    delivery_report_deadline_seconds: int = Field(3600, alias="DELIVERY_REPORT_DEADLINE_SECONDS", ge=1)
    # ACS's email limit: a request with attachments that ACS would take fits.
    max_request_bytes: int = Field(ACS_EMAIL_REQUEST_BYTES, alias="MAX_REQUEST_BYTES", ge=1024)

    # Input limits, checked at intake (422 naming the field). docs/security.md explains each default.
    email_max_recipients: int = Field(ACS_EMAIL_MAX_RECIPIENTS, alias="EMAIL_MAX_RECIPIENTS", ge=1, le=ACS_EMAIL_MAX_RECIPIENTS)
    sms_max_recipients: int = Field(ACS_SMS_MAX_RECIPIENTS, alias="SMS_MAX_RECIPIENTS", ge=1, le=ACS_SMS_MAX_RECIPIENTS)
    subject_max_chars: int = Field(RFC5322_LINE_CHARS, alias="SUBJECT_MAX_CHARS", ge=1, le=RFC5322_LINE_CHARS)
    # UTF-8 bytes. Mail clients clip long messages (Gmail at about 100 KB of HTML); these bound
    # what one request can make the ledger and ACS carry.
    email_text_max_bytes: int = Field(256 * 1024, alias="EMAIL_TEXT_MAX_BYTES", ge=1)
    email_html_max_bytes: int = Field(1024 * 1024, alias="EMAIL_HTML_MAX_BYTES", ge=1)
    sms_max_chars: int = Field(ACS_SMS_MAX_CHARS, alias="SMS_MAX_CHARS", ge=1, le=ACS_SMS_MAX_CHARS)
    display_name_max_chars: int = Field(256, alias="DISPLAY_NAME_MAX_CHARS", ge=1, le=RFC5322_LINE_CHARS)
    # At least 128: on the requests queue a Service Bus message id (up to 128) stands in for the key.
    idempotency_key_max_chars: int = Field(200, alias="IDEMPOTENCY_KEY_MAX_CHARS", ge=128, le=1024)
    metadata_max_bytes: int = Field(4096, alias="METADATA_MAX_BYTES", ge=2)

    # Email attachments. 7 MiB of content is 9.3 MiB once base64-encoded, which leaves room in
    # ACS's 10 MB request for the body. 0 attachments (or no types) turns attachments off.
    attachment_content_types: Annotated[list[str], NoDecode] = Field(
        list(DEFAULT_ATTACHMENT_CONTENT_TYPES), alias="ATTACHMENT_CONTENT_TYPES"
    )
    attachments_max_count: int = Field(10, alias="ATTACHMENTS_MAX_COUNT", ge=0)
    attachments_max_total_bytes: int = Field(7 * 1024 * 1024, alias="ATTACHMENTS_MAX_TOTAL_BYTES", ge=1)
    # https://<account>.blob.core.windows.net/<container>: where attachments live with LEDGER_BACKEND=table
    # (the app's identity needs Storage Blob Data Contributor on it). Locally they go to the data dir.
    attachments_container_url: str | None = Field(None, alias="ATTACHMENTS_CONTAINER_URL")

    # Send quotas (0 = unlimited). Defaults are ACS's documented limits for a custom email domain
    # and a toll-free number; raise them only after ACS raised the subscription's quota.
    email_rate_per_minute: int = Field(30, alias="EMAIL_RATE_PER_MINUTE", ge=0)
    email_rate_per_hour: int = Field(100, alias="EMAIL_RATE_PER_HOUR", ge=0)
    sms_rate_per_minute: int = Field(200, alias="SMS_RATE_PER_MINUTE", ge=0)
    sms_rate_per_hour: int = Field(0, alias="SMS_RATE_PER_HOUR", ge=0)
    # Optional ramp-up of a new sending domain: hourly caps by day from the start date.
    email_warmup_start: str | None = Field(None, alias="EMAIL_WARMUP_START")
    email_warmup_hourly: str | None = Field(None, alias="EMAIL_WARMUP_HOURLY")

    # ACS throttles senders whose email failure rate passes 1-2 %: warn before it does.
    failure_rate_warning: float = Field(0.01, alias="FAILURE_RATE_WARNING", gt=0, lt=1)
    failure_rate_critical: float = Field(0.02, alias="FAILURE_RATE_CRITICAL", gt=0, lt=1)
    failure_rate_window_minutes: int = Field(60, alias="FAILURE_RATE_WINDOW_MINUTES", ge=1)
    # Below this many sends in the window a rate is noise (one bounce in ten is not a trend).
    failure_rate_min_sent: int = Field(50, alias="FAILURE_RATE_MIN_SENT", ge=1)
    retention_days: int = Field(90, alias="RETENTION_DAYS", ge=1)

    # Approved content, rendered at intake (see templates/).
    templates_dir: Path = Field(Path("templates"), alias="TEMPLATES_DIR")
    # Carriers bill per segment; refuse messages that would cost more than this.
    sms_max_segments: int = Field(6, alias="SMS_MAX_SEGMENTS", ge=1, le=50)

    # Telemetry (shared/telemetry.py). With the App Insights connection string set, everything goes
    # to Azure Monitor; otherwise TELEMETRY_EXPORTER=console prints spans and metrics locally.
    applicationinsights_connection_string: str | None = Field(None, alias="APPLICATIONINSIGHTS_CONNECTION_STRING")
    # "Authorization=AAD" when App Insights takes only Entra-authenticated telemetry (the app's identity).
    applicationinsights_authentication_string: str | None = Field(None, alias="APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    telemetry_exporter: Literal["none", "console"] = Field("none", alias="TELEMETRY_EXPORTER")
    log_format: Literal["text", "json"] = Field("text", alias="LOG_FORMAT")
    # The key of the recipient hashes in telemetry (HMAC-SHA256), one per environment. Changing it
    # makes older telemetry unsearchable by recipient; a fixed development key serves locally.
    pii_hash_key: str = Field(DEV_PII_HASH_KEY, alias="PII_HASH_KEY", min_length=16)
    # Status events out (README "Status events"): the Event Grid custom topic in Azure
    # (https://<topic>.<region>-1.eventgrid.azure.net/api/events; the identity needs EventGrid Data
    # Sender), subscriber URLs on the local stack, comma-separated. Neither: events are dropped
    # as a topic without subscriptions would.
    status_events_topic_endpoint: str | None = Field(None, alias="STATUS_EVENTS_TOPIC_ENDPOINT")
    status_event_subscribers: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="STATUS_EVENT_SUBSCRIBERS")
    # Event types are <prefix>.notification.<status>; the source names the service.
    status_event_type_prefix: str = Field("Notify", alias="STATUS_EVENT_TYPE_PREFIX")
    status_event_source: str = Field("/notify", alias="STATUS_EVENT_SOURCE", min_length=1)
    # How often the local worker relays (the timer's STATUS_RELAY_SCHEDULE does in Azure), and the
    # backoff of a destination that fails: doubling from the base up to the cap, with jitter.
    status_relay_interval_seconds: float = Field(1.0, alias="STATUS_RELAY_INTERVAL_SECONDS", gt=0)
    status_relay_retry_base_seconds: float = Field(1.0, alias="STATUS_RELAY_RETRY_BASE_SECONDS", gt=0)
    status_relay_retry_max_seconds: float = Field(300.0, alias="STATUS_RELAY_RETRY_MAX_SECONDS", gt=0)

    dispatch_concurrency: int = Field(8, alias="DISPATCH_CONCURRENCY", ge=1, le=256)
    queue_lock_seconds: int = Field(60, alias="QUEUE_LOCK_SECONDS", ge=5, le=300)
    queue_max_delivery_count: int = Field(10, alias="QUEUE_MAX_DELIVERY_COUNT", ge=1)
    reconcile_interval_seconds: float = Field(30.0, alias="RECONCILE_INTERVAL_SECONDS", gt=0)

    @field_validator("email_senders", "sms_senders", "entra_audiences", "entra_token_versions", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("email_senders", "sms_senders")
    @classmethod
    def _at_least_one(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one sender; the first is the default")
        return value

    @field_validator("entra_token_versions")
    @classmethod
    def _token_versions(cls, value: list[str]) -> list[str]:
        if not value or set(value) - {"1", "2"}:
            raise ValueError("must be 1, 2 or 1,2: the Entra ID access token versions whose issuer is accepted")
        return sorted(set(value))

    @field_validator(
        "entra_tenant_id",
        "entra_jwks_url",
        "eventgrid_webhook_secret",
        "applicationinsights_connection_string",
        "applicationinsights_authentication_string",
    )
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("entra_tenant_id")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        if value is not None and not _GUID.fullmatch(value):
            raise ValueError("must be the tenant id (a GUID), which Entra ID writes into the token's issuer")
        return value.lower() if value else None

    @field_validator("entra_jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in ("https", "http"):
            raise ValueError("must be an https URL")
        return value

    @field_validator("eventgrid_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value) < MIN_WEBHOOK_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_WEBHOOK_SECRET_CHARS} characters (or empty to turn it off)")
        return value

    @field_validator("status_event_subscribers", mode="before")
    @classmethod
    def _subscriber_urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)):
            bad = [u for u in value if urlparse(str(u)).scheme not in ("http", "https") or not urlparse(str(u)).netloc]
            if bad:
                raise ValueError("must be http(s) URLs, comma-separated")
        return value

    @field_validator("status_events_topic_endpoint")
    @classmethod
    def _topic_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return None
        url = urlparse(value)
        if url.scheme not in ("https", "http") or not url.netloc:
            raise ValueError("must be the topic's endpoint: https://<topic>.<region>-1.eventgrid.azure.net/api/events")
        return value

    @field_validator("status_event_type_prefix")
    @classmethod
    def _type_prefix(cls, value: str) -> str:
        if not _TYPE_PREFIX.fullmatch(value):
            raise ValueError("must be dot-separated words of letters and digits, such as Notify or Contoso.Notify")
        return value

    @field_validator("attachment_content_types", mode="before")
    @classmethod
    def _mime_types(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            types = [str(item).strip().lower() for item in value if str(item).strip()]
            bad = [t for t in types if not _MIME_TYPE.fullmatch(t)]
            if bad:
                raise ValueError(f"not MIME types (type/subtype, comma-separated): {', '.join(bad)}")
            return types
        return value

    @field_validator("attachments_container_url")
    @classmethod
    def _container_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        url = urlparse(value)
        if url.scheme not in ("https", "http") or not url.netloc or not url.path.strip("/"):
            raise ValueError("must be the container's URL: https://<account>.blob.core.windows.net/<container>")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.failure_rate_critical < self.failure_rate_warning:
            raise ValueError("FAILURE_RATE_CRITICAL must not be below FAILURE_RATE_WARNING")
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("RETRY_MAX_SECONDS must not be below RETRY_BASE_SECONDS")
        if self.status_relay_retry_max_seconds < self.status_relay_retry_base_seconds:
            raise ValueError("STATUS_RELAY_RETRY_MAX_SECONDS must not be below STATUS_RELAY_RETRY_BASE_SECONDS")
        if self.environment == "azure":
            # No secrets in Azure, and nothing that lives on the instance's disk.
            if self.dev_keys:
                raise ValueError("NOTIFY_DEV_KEYS must be empty when NOTIFY_ENVIRONMENT=azure")
            if self.acs_access_key:
                raise ValueError("ACS_ACCESS_KEY must not be set in Azure: the managed identity authenticates to ACS")
            if self.tables_connection_string:
                raise ValueError("TABLES_CONNECTION_STRING must not be set in Azure: use TABLES_ENDPOINT")
            if self.pii_hash_key == DEV_PII_HASH_KEY or len(self.pii_hash_key) < 32:
                raise ValueError(
                    "PII_HASH_KEY must be set in Azure to a random key of at least 32 characters, one per environment"
                    " (openssl rand -base64 32): the development key would let anyone reverse the recipient hashes"
                )
            if self.ledger_backend != "table":
                raise ValueError("LEDGER_BACKEND must be table in Azure: a SQLite file does not survive an instance")
            if self.queue_backend != "servicebus":
                raise ValueError("QUEUE_BACKEND must be servicebus in Azure")
            if self.attachments_container_url and not self.attachments_container_url.startswith("https://"):
                raise ValueError("ATTACHMENTS_CONTAINER_URL must be https in Azure")
            if not (self.status_events_topic_endpoint or "").startswith("https://"):
                raise ValueError("STATUS_EVENTS_TOPIC_ENDPOINT must be the https endpoint of the Event Grid topic in Azure")
            if self.status_event_subscribers:
                raise ValueError("STATUS_EVENT_SUBSCRIBERS is for the local stack; in Azure subscribe to the Event Grid topic")
            # Without Entra ID nobody could call the API: dev keys are refused above.
            if not self.entra_tenant_id:
                raise ValueError("ENTRA_TENANT_ID is required when NOTIFY_ENVIRONMENT=azure: callers present Entra ID tokens")
            if self.entra_jwks_url and not self.entra_jwks_url.startswith("https://"):
                raise ValueError("ENTRA_JWKS_URL must be https in Azure")
        if self.entra_tenant_id and not self.entra_audiences:
            raise ValueError("ENTRA_AUDIENCES is required with ENTRA_TENANT_ID: the API's application ID URI and/or client id")
        if self.entra_audiences and not self.entra_tenant_id:
            raise ValueError("ENTRA_TENANT_ID is required with ENTRA_AUDIENCES")
        if self.ledger_backend == "table" and not (self.tables_endpoint or self.tables_connection_string):
            raise ValueError("LEDGER_BACKEND=table needs TABLES_ENDPOINT (or TABLES_CONNECTION_STRING for Azurite)")
        if self.ledger_backend == "table" and not self.attachments_container_url:
            raise ValueError("LEDGER_BACKEND=table needs ATTACHMENTS_CONTAINER_URL (the blob container for email attachments)")
        if self.queue_backend == "servicebus" and not self.servicebus_namespace:
            raise ValueError("QUEUE_BACKEND=servicebus needs ServiceBusConnection__fullyQualifiedNamespace")
        self.parsed_dev_keys()  # fail at start-up, not on the first request
        self.parsed_entra_role_map()
        self.quotas()
        return self

    def quotas(self) -> dict:
        """Send quotas per channel, for the rate limiter."""
        from .service.quota import SendQuota, parse_warmup

        try:
            warmup = parse_warmup(self.email_warmup_start or None, self.email_warmup_hourly or None)
        except ValueError as exc:
            raise ValueError(f"EMAIL_WARMUP_START / EMAIL_WARMUP_HOURLY: {exc}") from None
        return {
            "email": SendQuota(self.email_rate_per_minute or None, self.email_rate_per_hour or None, warmup),
            "sms": SendQuota(self.sms_rate_per_minute or None, self.sms_rate_per_hour or None),
        }

    def parsed_dev_keys(self) -> dict[str, str]:
        """Map token -> role from ``role=key,role=key``."""
        keys: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.dev_keys.split(","))):
            role, sep, key = pair.partition("=")
            role, key = role.strip(), key.strip()
            if not sep or role not in ROLES or not key:
                raise ValueError(f"NOTIFY_DEV_KEYS entries must be role=key with role one of {', '.join(ROLES)}")
            keys[key] = role
        return keys

    def parsed_entra_role_map(self) -> dict[str, str]:
        """Map app-role value -> service role from ``AppRole=role,AppRole=role``."""
        mapping: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.entra_role_map.split(","))):
            app_role, sep, role = (part.strip() for part in pair.partition("="))
            if not sep or not app_role or role not in ROLES:
                raise ValueError(f"ENTRA_ROLE_MAP entries must be AppRole=role with role one of {', '.join(ROLES)}")
            mapping[app_role] = role
        return mapping

    @property
    def entra_issuers(self) -> list[str]:
        """The issuers accepted: one per configured token version, both naming the tenant."""
        tenant = self.entra_tenant_id
        by_version = {"1": f"https://sts.windows.net/{tenant}/", "2": f"https://login.microsoftonline.com/{tenant}/v2.0"}
        return [by_version[v] for v in self.entra_token_versions] if tenant else []

    @property
    def entra_keys_url(self) -> str | None:
        if self.entra_jwks_url:
            return self.entra_jwks_url
        tenant = self.entra_tenant_id
        return f"https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys" if tenant else None

    @property
    def default_email_sender(self) -> str:
        return self.email_senders[0]

    @property
    def default_sms_sender(self) -> str:
        return self.sms_senders[0]


class SettingsError(RuntimeError):
    """Start-up stopped because a setting is missing or invalid."""


def load_settings(**overrides: object) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            name = ".".join(str(part) for part in error["loc"])
            problems.append(f"{name}: {message}" if name else message)
        raise SettingsError("Invalid app settings: " + "; ".join(problems)) from None
