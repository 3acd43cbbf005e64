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
from .domain.commands import FailureRateThresholds
from .domain.commands import RelayStatusEvents
from .service.retry import RetryPolicy
from .service.status_events import Destination

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
    def stores_in_process(self) -> bool:
        """Whether the ledger and the queue are files on this machine (SQLite and the embedded
        queue, the local stack) rather than services across a network."""
        s = self.settings
        return s.ledger_backend == "sqlite" and s.queue_backend == "embedded"

    @cached_property
    def clock(self):
        from .adapters.clock import SystemClock

        return SystemClock()

    @cached_property
    def policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(max_attempts=s.max_send_attempts, base_seconds=s.retry_base_seconds, max_seconds=s.retry_max_seconds)

    @property
    def failure_rate_thresholds(self) -> FailureRateThresholds:
        s = self.settings
        return FailureRateThresholds(
            warning=s.failure_rate_warning,
            critical=s.failure_rate_critical,
            window_minutes=s.failure_rate_window_minutes,
            min_sent=s.failure_rate_min_sent,
        )

    @cached_property
    def status_relay_policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(base_seconds=s.status_relay_retry_base_seconds, max_seconds=s.status_relay_retry_max_seconds)

    @property
    def status_relay_command(self) -> RelayStatusEvents:
        s = self.settings
        return RelayStatusEvents(type_prefix=s.status_event_type_prefix, source=s.status_event_source)

    @cached_property
    def status_destinations(self) -> list[Destination]:
        """Where status events go, each with its backoff, kept for the life of the process."""
        s = self.settings
        destinations = []
        if s.status_events_topic_endpoint:
            from azure.eventgrid import EventGridPublisherClient

            from .adapters.eventgrid_topic import EventGridTopic

            client = EventGridPublisherClient(s.status_events_topic_endpoint, self.azure_credential)
            destinations.append(Destination(EventGridTopic(client, s.status_events_topic_endpoint)))
        if s.status_event_subscribers:
            import httpx

            from .adapters.webhook_subscribers import WebhookSubscriber

            # Event Grid waits 30 s for a subscriber; a local one that takes longer is failing.
            client = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))
            destinations += [Destination(WebhookSubscriber(url, client)) for url in s.status_event_subscribers]
        return destinations

    @cached_property
    def templates(self):
        from .adapters.jinja_templates import JinjaTemplates

        folder = self.settings.templates_dir
        # A relative folder is the repo's (the Functions app's root), wherever the process starts.
        return JinjaTemplates(folder if folder.is_absolute() else Path(__file__).resolve().parents[1] / folder)

    @cached_property
    def entra_tokens(self):
        """The Entra ID token validator (its JWKS cache lives as long as the process), or None
        when no tenant is configured (the local stack with dev keys only)."""
        from .entrypoints.auth import EntraTokenValidator

        return EntraTokenValidator.from_settings(self.settings)

    @cached_property
    def azure_credential(self):
        """One credential for every Azure client: the managed identity in Azure, a developer's
        sign-in locally (DefaultAzureCredential tries them in turn)."""
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    @cached_property
    def table_service(self):
        s = self.settings
        if s.tables_connection_string:
            return table_service_client(connection_string=s.tables_connection_string, concurrency=s.table_concurrency)
        return table_service_client(
            endpoint=s.tables_endpoint, credential=self.azure_credential, concurrency=s.table_concurrency
        )

    @cached_property
    def ledger(self):
        if self.settings.ledger_backend == "table":
            from .adapters.table_ledger import TableLedger

            return TableLedger(self.table_service, concurrency=self.settings.table_concurrency)
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

            return TableSuppressionList(self.table_service, concurrency=self.settings.table_concurrency)
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
    def servicebus_client(self):
        from azure.servicebus import ServiceBusClient

        return ServiceBusClient(fully_qualified_namespace=self.settings.servicebus_namespace, credential=self.azure_credential)

    def _named_queue(self, name: str):
        s = self.settings
        if s.queue_backend == "servicebus":
            from .adapters.servicebus_queue import ServiceBusQueue

            return ServiceBusQueue(self.servicebus_client, name)
        from .adapters.embedded_queue import EmbeddedQueue

        # Every named queue in one file, as every queue of one namespace in Service Bus.
        return EmbeddedQueue(
            s.data_dir / "queue.sqlite3",
            name,
            max_delivery_count=s.queue_max_delivery_count,
            lock_duration=timedelta(seconds=s.queue_lock_seconds),
            duplicate_detection_window=DUPLICATE_DETECTION_WINDOW,
            clock=self.clock,
        )

    @cached_property
    def queue(self):
        """The dispatch queue: accepted notifications waiting to be sent."""
        return self._named_queue(self.settings.notifications_queue)

    @cached_property
    def requests_queue(self):
        """The requests queue: notification requests other apps put on Service Bus (received by
        the intake trigger in Azure, by the local worker on the local stack)."""
        return self._named_queue(self.settings.requests_queue)

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


def table_service_client(*, concurrency: int, connection_string: str | None = None, endpoint: str | None = None,
                         credential=None):
    """A Table Storage client whose connection pool holds ``concurrency`` connections: each Table
    adapter keeps that many requests in flight, and past the pool's size (ten by default) every
    extra request would open a connection (a TLS handshake in Azure) and drop it afterwards."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.data.tables import TableServiceClient
    from urllib3.util.retry import Retry

    import os
    import urllib.request

    session = requests.Session()
    transport_options = {}
    if not urllib.request.getproxies():
        # With no proxy configured there is nothing in the environment for requests to look up,
        # but ``trust_env`` makes it look anyway on every request (proxy variables and a ~/.netrc
        # on disk): 9 % of the Python time of a batch of delivery reports on Table Storage. The CA
        # bundle variables are the one setting it would still take from there, so they are read
        # once, here (the transport passes its own ``verify`` with every request).
        session.trust_env = False
        transport_options["connection_verify"] = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
    # Retries are the SDK pipeline's job, as on the session the SDK would build itself.
    adapter = requests.adapters.HTTPAdapter(
        pool_maxsize=max(concurrency, 10), max_retries=Retry(total=False, redirect=False, raise_on_status=False)
    )
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    transport = RequestsTransport(session=session, session_owner=True, **transport_options)
    if connection_string:
        return TableServiceClient.from_connection_string(connection_string, transport=transport)
    return TableServiceClient(endpoint=endpoint, credential=credential, transport=transport)


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
