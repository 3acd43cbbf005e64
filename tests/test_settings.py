"""A missing or invalid setting stops start-up with a message that names it."""

import os
import subprocess
import sys

import pytest

from shared.config import SettingsError, load_settings
from tests.conftest import ROOT, SETTINGS


TENANT = "11111111-2222-3333-4444-555555555555"


def settings_with(**changes):
    values = {**SETTINGS, **changes}
    return load_settings(**{k: v for k, v in values.items() if v is not None})


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"EMAIL_SENDERS": ""}, "EMAIL_SENDERS"),
        ({"ACS_ENDPOINT": None}, "ACS_ENDPOINT"),
        ({"MAX_SEND_ATTEMPTS": "0"}, "MAX_SEND_ATTEMPTS"),
        ({"RETRY_BASE_SECONDS": "10", "RETRY_MAX_SECONDS": "5"}, "RETRY_MAX_SECONDS"),
        ({"NOTIFY_DEV_KEYS": "admin=secret"}, "NOTIFY_DEV_KEYS"),
        ({"NOTIFY_ENVIRONMENT": "azure"}, "NOTIFY_DEV_KEYS"),
        ({"EMAIL_WARMUP_START": "2026-11-01"}, "EMAIL_WARMUP_HOURLY"),
        ({"EMAIL_WARMUP_START": "soon", "EMAIL_WARMUP_HOURLY": "50,100"}, "EMAIL_WARMUP_START"),
        ({"EMAIL_RATE_PER_MINUTE": "-1"}, "EMAIL_RATE_PER_MINUTE"),
        ({"LEDGER_BACKEND": "table"}, "TABLES_ENDPOINT"),
        ({"TABLE_CONCURRENCY": "0"}, "TABLE_CONCURRENCY"),
        ({"TABLE_CONCURRENCY": "65"}, "TABLE_CONCURRENCY"),
        ({"QUEUE_BACKEND": "servicebus"}, "ServiceBusConnection__fullyQualifiedNamespace"),
        ({"LEDGER_BACKEND": "mongodb"}, "LEDGER_BACKEND"),
        ({"FAILURE_RATE_WARNING": "0.05", "FAILURE_RATE_CRITICAL": "0.02"}, "FAILURE_RATE_CRITICAL"),
        ({"ATTACHMENT_CONTENT_TYPES": "application/pdf,pdf"}, "ATTACHMENT_CONTENT_TYPES"),
        ({"ATTACHMENTS_MAX_COUNT": "-1"}, "ATTACHMENTS_MAX_COUNT"),
        ({"ATTACHMENTS_MAX_TOTAL_BYTES": "0"}, "ATTACHMENTS_MAX_TOTAL_BYTES"),
        ({"ATTACHMENTS_CONTAINER_URL": "notify.blob.core.windows.net"}, "ATTACHMENTS_CONTAINER_URL"),
        ({"ENTRA_TENANT_ID": "contoso.onmicrosoft.com", "ENTRA_AUDIENCES": "api://notify"}, "ENTRA_TENANT_ID"),
        ({"ENTRA_TENANT_ID": TENANT}, "ENTRA_AUDIENCES"),
        ({"ENTRA_AUDIENCES": "api://notify"}, "ENTRA_TENANT_ID"),
        ({"ENTRA_TOKEN_VERSIONS": "3"}, "ENTRA_TOKEN_VERSIONS"),
        ({"ENTRA_ROLE_MAP": "Notify.Send=admin"}, "ENTRA_ROLE_MAP"),
        ({"ENTRA_ROLE_MAP": "Notify.Send"}, "ENTRA_ROLE_MAP"),
        ({"ENTRA_JWKS_URL": "file:///etc/keys.json"}, "ENTRA_JWKS_URL"),
        ({"ENTRA_JWKS_CACHE_SECONDS": "0"}, "ENTRA_JWKS_CACHE_SECONDS"),
        ({"EVENTGRID_WEBHOOK_SECRET": "short"}, "EVENTGRID_WEBHOOK_SECRET"),
        # A limit may be lowered, never raised past what ACS or RFC 5322 takes.
        ({"EMAIL_MAX_RECIPIENTS": "51"}, "EMAIL_MAX_RECIPIENTS"),
        ({"SMS_MAX_RECIPIENTS": "101"}, "SMS_MAX_RECIPIENTS"),
        ({"SMS_MAX_CHARS": "2049"}, "SMS_MAX_CHARS"),
        ({"SUBJECT_MAX_CHARS": "999"}, "SUBJECT_MAX_CHARS"),
        ({"EMAIL_TEXT_MAX_BYTES": "0"}, "EMAIL_TEXT_MAX_BYTES"),
        ({"EMAIL_HTML_MAX_BYTES": "-1"}, "EMAIL_HTML_MAX_BYTES"),
        ({"DISPLAY_NAME_MAX_CHARS": "0"}, "DISPLAY_NAME_MAX_CHARS"),
        ({"IDEMPOTENCY_KEY_MAX_CHARS": "127"}, "IDEMPOTENCY_KEY_MAX_CHARS"),
        ({"METADATA_MAX_BYTES": "1"}, "METADATA_MAX_BYTES"),
        ({"STATUS_EVENT_SUBSCRIBERS": "http://127.0.0.1:9000/hook,localhost:9001"}, "STATUS_EVENT_SUBSCRIBERS"),
        ({"STATUS_EVENTS_TOPIC_ENDPOINT": "mytopic.westeurope-1.eventgrid.azure.net"}, "STATUS_EVENTS_TOPIC_ENDPOINT"),
        ({"STATUS_EVENT_TYPE_PREFIX": "Notify."}, "STATUS_EVENT_TYPE_PREFIX"),
        ({"STATUS_RELAY_RETRY_BASE_SECONDS": "10", "STATUS_RELAY_RETRY_MAX_SECONDS": "5"}, "STATUS_RELAY_RETRY_MAX_SECONDS"),
    ],
)
def test_an_invalid_setting_is_refused_by_name(changes, named):
    with pytest.raises(SettingsError) as raised:
        settings_with(**changes)
    assert named in str(raised.value)


def test_the_api_process_does_not_start_with_an_invalid_setting():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "NOTIFY_", "EMAIL_", "SMS_"))}
    env |= {**SETTINGS, "EMAIL_SENDERS": ""}
    result = subprocess.run(
        [sys.executable, "-m", "shared", "api", "--port", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "EMAIL_SENDERS" in result.stdout + result.stderr


AZURE = {
    "NOTIFY_ENVIRONMENT": "azure",
    "ENTRA_TENANT_ID": TENANT,
    "ENTRA_AUDIENCES": "api://notify-prod",
    "NOTIFY_DEV_KEYS": "",
    "ACS_ACCESS_KEY": None,
    "LEDGER_BACKEND": "table",
    "TABLES_ENDPOINT": "https://notify.table.core.windows.net",
    "QUEUE_BACKEND": "servicebus",
    "ServiceBusConnection__fullyQualifiedNamespace": "notify.servicebus.windows.net",
    "ATTACHMENTS_CONTAINER_URL": "https://notify.blob.core.windows.net/attachments",
    "PII_HASH_KEY": "yJ3wq0mC4tV8pX1sN6bE9rK2fH5gL7dA0zQ3uW8iO1c=",
    "STATUS_EVENTS_TOPIC_ENDPOINT": "https://evgt-notify.westeurope-1.eventgrid.azure.net/api/events",
}


def test_a_complete_azure_configuration_with_no_secrets_is_accepted():
    settings = settings_with(**AZURE)
    assert (settings.ledger_backend, settings.queue_backend) == ("table", "servicebus")


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"ACS_ACCESS_KEY": "c2VjcmV0"}, "ACS_ACCESS_KEY"),
        ({"TABLES_CONNECTION_STRING": "AccountKey=x"}, "TABLES_CONNECTION_STRING"),
        ({"LEDGER_BACKEND": "sqlite"}, "LEDGER_BACKEND"),
        ({"QUEUE_BACKEND": "embedded"}, "QUEUE_BACKEND"),
        ({"NOTIFY_DEV_KEYS": "sender=abc"}, "NOTIFY_DEV_KEYS"),
        ({"ENTRA_TENANT_ID": None, "ENTRA_AUDIENCES": None}, "ENTRA_TENANT_ID"),
        ({"ENTRA_AUDIENCES": None}, "ENTRA_AUDIENCES"),
        ({"ENTRA_JWKS_URL": "http://keys.example.com/keys"}, "ENTRA_JWKS_URL"),
        ({"ATTACHMENTS_CONTAINER_URL": None}, "ATTACHMENTS_CONTAINER_URL"),
        ({"ATTACHMENTS_CONTAINER_URL": "http://notify.blob.core.windows.net/attachments"}, "ATTACHMENTS_CONTAINER_URL"),
        ({"PII_HASH_KEY": None}, "PII_HASH_KEY"),
        ({"PII_HASH_KEY": "short-but-16-chars"}, "PII_HASH_KEY"),
        ({"STATUS_EVENTS_TOPIC_ENDPOINT": None}, "STATUS_EVENTS_TOPIC_ENDPOINT"),
        ({"STATUS_EVENT_SUBSCRIBERS": "https://hooks.example.com/notify"}, "STATUS_EVENT_SUBSCRIBERS"),
    ],
)
def test_in_azure_secrets_and_local_backends_are_refused_by_name(changes, named):
    with pytest.raises(SettingsError) as raised:
        settings_with(**(AZURE | changes))
    assert named in str(raised.value)


def test_in_azure_bootstrap_builds_the_service_bus_queue_and_identity_clients_without_connecting():
    from shared.bootstrap import Services

    services = Services(settings_with(**AZURE))
    credential = services.azure_credential
    assert type(credential).__name__ == "DefaultAzureCredential"
    assert services._acs_credential() is credential
    assert services.table_service.url.startswith("https://notify.table.core.windows.net")
    assert type(services.attachments).__name__ == "BlobAttachmentStore"
    assert services.attachments._container.url == "https://notify.blob.core.windows.net/attachments"
    [topic] = services.status_destinations
    assert type(topic.publisher).__name__ == "EventGridTopic"
    assert topic.publisher._client._credential is credential


def test_locally_each_subscriber_url_is_its_own_status_event_destination():
    from shared.bootstrap import Services

    services = Services(settings_with(STATUS_EVENT_SUBSCRIBERS=" http://127.0.0.1:9000/a , http://127.0.0.1:9001/b?code=x"))

    assert [d.name for d in services.status_destinations] == ["http://127.0.0.1:9000/a", "http://127.0.0.1:9001/b"]
    assert Services(settings_with()).status_destinations == []


def test_attachment_limits_default_to_what_fits_acs_10_mb_email_request():
    settings = settings_with(MAX_REQUEST_BYTES=None)

    assert settings.max_request_bytes == 10 * 1024 * 1024
    assert settings.attachments_max_count == 10
    assert settings.attachments_max_total_bytes == 7 * 1024 * 1024
    # base64 turns 3 bytes into 4: the largest total allowed still fits ACS's limit once encoded.
    assert 4 * -(-settings.attachments_max_total_bytes // 3) < settings.max_request_bytes
    assert "application/pdf" in settings.attachment_content_types


def test_attachment_content_types_are_a_comma_list_compared_in_lower_case():
    settings = settings_with(ATTACHMENT_CONTENT_TYPES=" Application/PDF , text/plain,")
    assert settings.attachment_content_types == ["application/pdf", "text/plain"]


def test_in_azure_the_tenants_v2_issuer_and_keys_are_trusted_and_nothing_else():
    settings = settings_with(**AZURE)
    assert settings.entra_issuers == [f"https://login.microsoftonline.com/{TENANT}/v2.0"]
    assert settings.entra_keys_url == f"https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys"
    assert settings_with(**AZURE, ENTRA_TOKEN_VERSIONS="1,2").entra_issuers == [
        f"https://sts.windows.net/{TENANT}/",
        f"https://login.microsoftonline.com/{TENANT}/v2.0",
    ]


def test_app_roles_map_to_the_services_roles_by_default():
    assert settings_with().parsed_entra_role_map() == {
        "Notify.Send": "sender",
        "Notify.Operate": "operator",
        "Notify.EventGrid": "eventgrid",
    }


def test_empty_telemetry_and_entra_settings_count_as_unset():
    # App settings deployed as '' (a parameter left empty) must not switch exporters or auth on.
    settings = settings_with(
        APPLICATIONINSIGHTS_CONNECTION_STRING="", APPLICATIONINSIGHTS_AUTHENTICATION_STRING="", ENTRA_TENANT_ID=" "
    )
    assert settings.applicationinsights_connection_string is None
    assert settings.applicationinsights_authentication_string is None
    assert settings.entra_tenant_id is None


def test_bootstrap_builds_the_table_adapters_with_the_table_concurrency_setting():
    from shared.bootstrap import Services

    services = Services(settings_with(**AZURE, TABLE_CONCURRENCY="24"))
    assert services.ledger._store._concurrency == 24
    assert services.suppressions._store._concurrency == 24
    adapter = services.table_service._client._client._pipeline._transport.session.get_adapter("https://")
    assert adapter._pool_maxsize == 24
