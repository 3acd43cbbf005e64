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


@pytest.fixture
def faked_services():
    """Process-wide services with every port faked; restored after the test."""
    services = bootstrap.Services(Settings(**SETTINGS))
    services.clock = FakeClock()
    services.ledger = FakeLedger()
    services.queue = FakeQueue()
    services.attachments = FakeAttachmentStore()
    services.email_sender = FakeEmailSender()
    services.sms_sender = FakeSmsSender()
    services.suppressions = FakeSuppressionList()
    services.rate_limiter = UnlimitedRateLimiter()
    services.policy = RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=10)
    bootstrap.use(services)
    yield services
    bootstrap.use(None)


@pytest.fixture(scope="session")
def azurite_tables(tmp_path_factory):
    """A connection string to Azurite's Table service, started once for the session (or the one
    named by AZURITE_TABLE_CONNECTION_STRING); skips when Azurite is not installed."""
    from tests import azurite

    with azurite.table_endpoint(tmp_path_factory.mktemp("azurite")) as connection_string:
        yield connection_string
