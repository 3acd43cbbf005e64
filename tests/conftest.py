from pathlib import Path

import pytest

from shared import bootstrap
from shared.config import Settings
from tests.fakes import (
    FakeAttachmentStore,
    FakeClock,
    FakeEmailSender,
    FakeLedger,
    FakeQueue,
    FakeSmsSender,
    FakeSuppressionList,
    UnlimitedRateLimiter,
)
from shared.service.retry import RetryPolicy

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = dict(
    NOTIFY_DEV_KEYS="sender=test-sender,sender=other-app,operator=test-operator,eventgrid=test-eventgrid",
    ACS_ENDPOINT="http://127.0.0.1:1",
    ACS_ACCESS_KEY="dGVzdA==",
    ACS_RESOURCE_ID="/subscriptions/0/resourceGroups/t/providers/Microsoft.Communication/communicationServices/acs-test",
    EMAIL_SENDERS="DoNotReply@notify.example.com,alerts@notify.example.com",
    SMS_SENDERS="+18005550100",
    MAX_REQUEST_BYTES="4096",
)


def fake_services(**overrides: str) -> bootstrap.Services:
    """Services built from SETTINGS (and ``overrides``) with every port faked."""
    services = bootstrap.Services(Settings(**(SETTINGS | overrides)))
    services.clock = FakeClock()
    services.ledger = FakeLedger()
    services.queue = FakeQueue()
    services.attachments = FakeAttachmentStore()
    services.email_sender = FakeEmailSender()
    services.sms_sender = FakeSmsSender()
    services.suppressions = FakeSuppressionList()
    services.rate_limiter = UnlimitedRateLimiter()
    services.policy = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
    return services


@pytest.fixture
def faked_services():
    """Process-wide services with every port faked; restored after the test."""
    services = fake_services()
    bootstrap.use(services)
    yield services
    bootstrap.use(None)


@pytest.fixture
def api_client():
    """A factory: ``api_client(**settings)`` is a TestClient for the API over faked ports built from
    SETTINGS plus ``settings`` (those services installed process-wide, and kept on
    ``client.services``); restored after the test."""

    def make(**settings: str):
        from fastapi.testclient import TestClient

        from shared.entrypoints.api import create_api

        services = fake_services(**settings)
        bootstrap.use(services)
        client = TestClient(create_api(), raise_server_exceptions=False)
        client.services = services
        return client

    yield make
    bootstrap.use(None)


@pytest.fixture(scope="session")
def azurite_tables(tmp_path_factory):
    """A connection string to Azurite's Table service, started once for the session (or the one
    named by AZURITE_TABLE_CONNECTION_STRING); skips when Azurite is not installed."""
    from tests import azurite

    with azurite.table_endpoint(tmp_path_factory.mktemp("azurite")) as connection_string:
        yield connection_string


class Telemetry:
    """What the process exported through the SDK's in-memory span exporter and metric reader."""

    def __init__(self, exporter, reader) -> None:
        self.exporter = exporter
        self.reader = reader

    def spans(self, name: str | None = None) -> list:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def span(self, name: str):
        [found] = self.spans(name)
        return found

    def points(self, name: str, **attributes) -> list:
        """Data points of a metric whose attributes include ``attributes`` (cumulative since start)."""
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
            if attributes.items() <= dict(point.attributes).items()
        ]

    def total(self, name: str, **attributes) -> float:
        """A counter's sum, or a histogram's count, over the matching data points."""
        return sum(getattr(p, "value", None) if hasattr(p, "value") else p.count for p in self.points(name, **attributes))


@pytest.fixture(scope="session")
def _telemetry_providers():
    from shared import telemetry

    return telemetry.configure_for_tests()


@pytest.fixture
def telemetry(_telemetry_providers):
    """The process's spans and metrics; spans start empty, metrics are cumulative (compare totals
    before and after)."""
    exporter, reader = _telemetry_providers
    exporter.clear()
    return Telemetry(exporter, reader)
