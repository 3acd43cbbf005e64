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
    data_dir: Path = Field(Path(".data"), alias="NOTIFY_DATA_DIR")

    # sqlite / embedded: the local stack. table / servicebus: Azure, with the managed identity.
    ledger_backend: Literal["sqlite", "table"] = Field("sqlite", alias="LEDGER_BACKEND")
    queue_backend: Literal["embedded", "servicebus"] = Field("embedded", alias="QUEUE_BACKEND")
    notifications_queue: str = Field("notifications", alias="NOTIFICATIONS_QUEUE")
    # Where other apps put notification requests (the intake trigger's queue, and the CLI's enqueue).
    requests_queue: str = Field("notification-requests", alias="REQUESTS_QUEUE", min_length=1, max_length=260)
    # https://<account>.table.core.windows.net (or a Cosmos DB for Table endpoint).
    tables_endpoint: str | None = Field(None, alias="TABLES_ENDPOINT")
    # Only for Azurite on a laptop; in Azure the identity authenticates against TABLES_ENDPOINT.
    tables_connection_string: str | None = Field(None, alias="TABLES_CONNECTION_STRING")
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

    @field_validator("applicationinsights_connection_string", "applicationinsights_authentication_string")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("email_senders", "sms_senders", mode="before")
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
        if self.ledger_backend == "table" and not (self.tables_endpoint or self.tables_connection_string):
            raise ValueError("LEDGER_BACKEND=table needs TABLES_ENDPOINT (or TABLES_CONNECTION_STRING for Azurite)")
        if self.ledger_backend == "table" and not self.attachments_container_url:
            raise ValueError("LEDGER_BACKEND=table needs ATTACHMENTS_CONTAINER_URL (the blob container for email attachments)")
        if self.queue_backend == "servicebus" and not self.servicebus_namespace:
            raise ValueError("QUEUE_BACKEND=servicebus needs ServiceBusConnection__fullyQualifiedNamespace")
        self.parsed_dev_keys()  # fail at start-up, not on the first request
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
