"""Settings of the ACS emulator: defaults, ``ACS_EMULATOR_*`` environment variables, validation."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

#: The fixed development access key. Not a secret: it only ever opens the local emulator.
DEFAULT_ACCESS_KEY = base64.b64encode(b"local-acs-emulator-dev-access-key-0000000000").decode("ascii")
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:7071/api/events"
DEFAULT_WEBHOOK_TOKEN = "dev-eventgrid-key"
DEFAULT_RESOURCE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local"
    "/providers/Microsoft.Communication/communicationServices/acs-emulator"
)

ENV_PREFIX = "ACS_EMULATOR_"


def _parse_domains(value: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator can be told. Each field ``name`` is also read from
    ``ACS_EMULATOR_<NAME>`` (upper case) by :meth:`from_env` and set by the CLI flag ``--name``
    (with dashes).
    """

    host: str = "127.0.0.1"
    port: int = 7072
    #: Base64 access key the HMAC signatures must be made with (what ``AzureKeyCredential`` holds).
    access_key: str = DEFAULT_ACCESS_KEY
    #: Where delivery reports (Event Grid schema arrays) are POSTed; empty turns reports off.
    webhook_url: str = DEFAULT_WEBHOOK_URL
    #: Sent as ``Authorization: Bearer <token>`` with each report POST; empty sends no header.
    webhook_token: str = DEFAULT_WEBHOOK_TOKEN
    #: Time between accepting a message and posting its delivery reports.
    report_delay_ms: int = 500
    #: The Event Grid ``topic`` of every report (the ACS resource id).
    resource_id: str = DEFAULT_RESOURCE_ID
    #: Sender domains treated as linked to the resource; empty allows every domain.
    allowed_sender_domains: tuple[str, ...] = ()
    #: Pause between attempts to post a report batch the webhook did not take.
    report_retry_interval_ms: int = 500
    #: How long undeliverable reports are retried before they are dropped (and logged).
    report_give_up_after_s: float = 60.0
    #: Largest accepted email request, attachments included (ACS documents 10 MB).
    max_email_request_bytes: int = 10 * 1024 * 1024
    #: Allowed difference between ``x-ms-date`` and the emulator's clock.
    max_clock_skew_s: int = 15 * 60
    log_level: str = "info"

    def __post_init__(self) -> None:
        if isinstance(self.allowed_sender_domains, str):
            object.__setattr__(self, "allowed_sender_domains", _parse_domains(self.allowed_sender_domains))
        else:
            object.__setattr__(
                self,
                "allowed_sender_domains",
                tuple(d.strip().lower() for d in self.allowed_sender_domains if d.strip()),
            )
        try:
            key = base64.b64decode(self.access_key, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("access_key must be base64 (like the ACS resource's access key)") from None
        if not key:
            raise ValueError("access_key must not be empty")
        if self.report_delay_ms < 0:
            raise ValueError("report_delay_ms must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.report_retry_interval_ms <= 0:
            raise ValueError("report_retry_interval_ms must be > 0")

    @property
    def access_key_bytes(self) -> bytes:
        return base64.b64decode(self.access_key)

    @property
    def endpoint(self) -> str:
        """The endpoint to give the SDK clients, with ``AzureKeyCredential(access_key)``.

        Not a connection string: both SDKs' ``from_connection_string`` drop the scheme and then
        assume https, which the emulator does not speak.
        """
        return f"http://{self.host}:{self.port}"

    def with_overrides(self, **changes: Any) -> EmulatorConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EmulatorConfig:
        """Defaults, then ``ACS_EMULATOR_*`` variables, then ``overrides`` (``None`` values ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_INT_FIELDS = {"port", "report_delay_ms", "report_retry_interval_ms", "max_email_request_bytes", "max_clock_skew_s"}
_FLOAT_FIELDS = {"report_give_up_after_s"}


def _coerce(name: str, raw: str) -> Any:
    try:
        if name in _INT_FIELDS:
            return int(raw)
        if name in _FLOAT_FIELDS:
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if name == "allowed_sender_domains":
        return _parse_domains(raw)
    return raw
