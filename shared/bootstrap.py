"""Composition root: the only place that reads settings and builds adapters and SDK clients.

Everything is built on first use, so importing ``function_app`` (in a test, or while the
Functions host indexes functions) needs no environment at all.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from .config import Settings, load_settings
from .service.retry import RetryPolicy

#: Matches the Service Bus queue's duplicate detection window in infra.
DUPLICATE_DETECTION_WINDOW = timedelta(minutes=10)


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def configure_telemetry(self, role: str) -> None:
        """The process's exporters, log format and recipient-hash key (``shared.telemetry``)."""
        from . import telemetry

        s = self.settings
        entra = "aad" in (s.applicationinsights_authentication_string or "").lower()
        credential = self.azure_credential if s.applicationinsights_connection_string and entra else None
        telemetry.configure(s, role=role, credential=credential)

    @cached_property
    def clock(self):
        from .adapters.clock import SystemClock

        return SystemClock()

    @cached_property
    def policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(max_attempts=s.max_send_attempts, base_seconds=s.retry_base_seconds, max_seconds=s.retry_max_seconds)

    @cached_property
    def templates(self):
        from .adapters.jinja_templates import JinjaTemplates

        folder = self.settings.templates_dir
        # A relative folder is the repo's (the Functions app's root), wherever the process starts.
        return JinjaTemplates(folder if folder.is_absolute() else Path(__file__).resolve().parents[1] / folder)

    @cached_property
    def azure_credential(self):
        """One credential for every Azure client: the managed identity in Azure, a developer's
        sign-in locally (DefaultAzureCredential tries them in turn)."""
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    @cached_property
    def table_service(self):
        from azure.data.tables import TableServiceClient

        s = self.settings
        if s.tables_connection_string:
            return TableServiceClient.from_connection_string(s.tables_connection_string)
        return TableServiceClient(endpoint=s.tables_endpoint, credential=self.azure_credential)

    @cached_property
    def ledger(self):
        if self.settings.ledger_backend == "table":
            from .adapters.table_ledger import TableLedger

            return TableLedger(self.table_service)
        from .adapters.sqlite_ledger import SqliteLedger

        return SqliteLedger(self.settings.data_dir / "ledger.sqlite3")

    @cached_property
    def attachments(self):
        """Attachment bytes: a blob container beside the Table ledger, a folder beside the SQLite one."""
        s = self.settings
        if s.ledger_backend == "table":
            from azure.storage.blob import ContainerClient

            from .adapters.blob_attachments import BlobAttachmentStore

            # The ACS clients' options: no SDK retries (the storage SDK's backoff starts at 15 s,
            # a sleep inside a request or a worker; intake answers 503 and the dispatcher
            # reschedules through the queue), and timeouts that keep an attempt inside its lease.
            container = ContainerClient.from_container_url(
                s.attachments_container_url, credential=self.azure_credential, **self._acs_client_options()
            )
            return BlobAttachmentStore(container)
        from .adapters.file_attachments import FileAttachmentStore

        return FileAttachmentStore(s.data_dir / "attachments")

    @cached_property
    def suppressions(self):
        if self.settings.ledger_backend == "table":
            from .adapters.table_suppressions import TableSuppressionList

            return TableSuppressionList(self.table_service)
        from .adapters.sqlite_suppressions import SqliteSuppressionList

        return SqliteSuppressionList(self.settings.data_dir / "ledger.sqlite3")

    @cached_property
    def rate_limiter(self):
        # Shared by every dispatcher instance, so it lives beside the ledger.
        if self.settings.ledger_backend == "table":
            from .adapters.table_rate_limiter import TableRateLimiter

            return TableRateLimiter(self.table_service, self.settings.quotas())
        from .adapters.sqlite_rate_limiter import SqliteRateLimiter

        return SqliteRateLimiter(self.settings.data_dir / "queue.sqlite3", self.settings.quotas())

    @property
    def send_lease(self) -> timedelta:
        # Longer than the slowest attempt, so a lease never runs out under a live send: an email
        # attempt may make two ACS calls (look up, then send), each up to connect + read timeout.
        options = self._acs_client_options()
        per_call = options["connection_timeout"] + options["read_timeout"]
        return timedelta(seconds=2 * per_call + 10)

    @cached_property
    def queue(self):
        s = self.settings
        if s.queue_backend == "servicebus":
            from azure.servicebus import ServiceBusClient

            from .adapters.servicebus_queue import ServiceBusQueue

            client = ServiceBusClient(fully_qualified_namespace=s.servicebus_namespace, credential=self.azure_credential)
            return ServiceBusQueue(client, s.notifications_queue)
        from .adapters.embedded_queue import EmbeddedQueue

        return EmbeddedQueue(
            s.data_dir / "queue.sqlite3",
            s.notifications_queue,
            max_delivery_count=s.queue_max_delivery_count,
            lock_duration=timedelta(seconds=s.queue_lock_seconds),
            duplicate_detection_window=DUPLICATE_DETECTION_WINDOW,
            clock=self.clock,
        )

    @property
    def publisher(self):
        return self.queue

    def _acs_credential(self):
        if self.settings.acs_access_key:
            from azure.core.credentials import AzureKeyCredential

            return AzureKeyCredential(self.settings.acs_access_key)
        return self.azure_credential

    def _acs_client_options(self) -> dict:
        # retry_total=0: the SDK's own retries would sleep inside the worker, honouring
        # Retry-After for minutes; our retry policy reschedules through the queue instead.
        return {
            "retry_total": 0,
            "connection_timeout": min(10.0, self.settings.acs_timeout_seconds),
            "read_timeout": self.settings.acs_timeout_seconds,
        }

    @cached_property
    def email_sender(self):
        from azure.communication.email import EmailClient

        from .adapters.acs_email import AcsEmailSender

        client = EmailClient(self.settings.acs_endpoint, self._acs_credential(), **self._acs_client_options())
        return AcsEmailSender(client)

    @cached_property
    def sms_sender(self):
        from azure.communication.sms import SmsClient

        from .adapters.acs_sms import AcsSmsSender

        client = SmsClient(self.settings.acs_endpoint, self._acs_credential(), **self._acs_client_options())
        return AcsSmsSender(client)


_lock = threading.Lock()
_services: Services | None = None


def services(role: str = "functions") -> Services:
    """The process-wide services, built from the environment on first call, which also sets up the
    process's telemetry (``role`` names the process in it: api, worker, functions)."""
    global _services
    with _lock:
        if _services is None:
            built = Services(load_settings())
            built.configure_telemetry(role)
            _services = built
        return _services


def use(custom: Services | None) -> None:
    """Replace the process-wide services (tests, the local runner)."""
    global _services
    with _lock:
        _services = custom
