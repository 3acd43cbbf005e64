"""Email attachments: checked at the HTTP edge, stored outside the ledger and the queue, and sent
to ACS with their bytes."""

import base64
import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from shared.config import Settings
from shared.domain.commands import NewAttachment
from shared.domain.errors import AttachmentStoreUnavailable
from shared.domain.model import NotificationStatus
from shared.entrypoints.api import create_api
from shared.service.handlers import Completed, DeadLettered, Rescheduled
from tests.conftest import SETTINGS
from tests.unit.builders import World, email_command

SENDER = {"Authorization": "Bearer test-sender"}
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
EMAIL = {"channel": "email", "to": ["a@example.com"], "subject": "Your invoice", "text": "Attached."}


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode("ascii")


def attachment(name="invoice.pdf", content_type="application/pdf", content=PDF, **changes) -> dict:
    return {"name": name, "contentType": content_type, "contentBase64": b64(content)} | changes


@pytest.fixture
def client(faked_services):
    # Attachments need more room than the 4 KiB the other HTTP tests run with.
    faked_services.settings = Settings(**SETTINGS | {"MAX_REQUEST_BYTES": str(1024 * 1024)})
    return TestClient(create_api(), raise_server_exceptions=False)


def post(client, body, headers=SENDER):
    return client.post("/api/notifications", json=body, headers=headers)


def nothing_was_kept(services) -> bool:
    return not services.queue.sent and not services.ledger.rows and not services.attachments.contents


# ---------------------------------------------------------------------------- intake


def test_an_email_with_an_attachment_is_accepted_and_its_bytes_kept_outside_the_ledger_and_queue(client, faked_services):
    response = post(client, EMAIL | {"attachments": [attachment()]})

    assert response.status_code == 202
    nid = response.json()["id"]
    stored = faked_services.ledger.rows[nid]
    assert stored.content["attachments"] == [
        {
            "name": "invoice.pdf",
            "contentType": "application/pdf",
            "size": len(PDF),
            "sha256": hashlib.sha256(PDF).hexdigest(),
            "ref": f"{nid}/0",
        }
    ]
    assert faked_services.attachments.contents == {f"{nid}/0": PDF}
    assert b64(PDF) not in stored.model_dump_json()
    [message] = faked_services.queue.sent
    assert b64(PDF) not in json.dumps(message.body)


def test_the_view_lists_each_attachment_by_name_type_size_and_sha256_without_its_content(client):
    created = post(client, EMAIL | {"attachments": [attachment(), attachment("notes.txt", "text/plain", b"hello")]}).json()

    view = client.get(created["location"], headers=SENDER).json()

    assert view["attachments"] == [
        {"name": "invoice.pdf", "contentType": "application/pdf", "size": len(PDF), "sha256": hashlib.sha256(PDF).hexdigest()},
        {"name": "notes.txt", "contentType": "text/plain", "size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()},
    ]
    assert b64(PDF) not in json.dumps(view) and "ref" not in json.dumps(view["attachments"])


def test_attachments_go_with_a_template_as_well_as_with_literal_content(client, faked_services):
    body = {
        "channel": "email",
        "to": ["a@example.com"],
        "template": {"name": "order-shipped", "data": {"order_id": "A-1", "customer_name": "Jane", "carrier": "DHL"}},
        "attachments": [attachment()],
    }

    response = post(client, body)

    assert response.status_code == 202, response.text
    assert faked_services.ledger.rows[response.json()["id"]].content["attachments"][0]["name"] == "invoice.pdf"


def test_a_content_type_is_compared_without_regard_to_case_and_stored_in_lower_case(client, faked_services):
    response = post(client, EMAIL | {"attachments": [attachment(content_type="Application/PDF")]})

    assert response.status_code == 202
    assert faked_services.ledger.rows[response.json()["id"]].content["attachments"][0]["contentType"] == "application/pdf"


@pytest.mark.parametrize(
    "attachments, field",
    [
        ([attachment(contentBase64="not base64!")], "/attachments/0/contentBase64"),
        ([attachment(contentBase64="YWI")], "/attachments/0/contentBase64"),  # "ab" without its padding
        ([attachment(contentBase64=b64(PDF)[:40] + "\n" + b64(PDF)[40:])], "/attachments/0/contentBase64"),
        ([attachment(contentBase64=b64(PDF).replace("+", "-").replace("/", "_") + "-_")], "/attachments/0/contentBase64"),
        ([attachment(contentBase64="QR==")], "/attachments/0/contentBase64"),  # not the canonical form of "A"
        ([attachment(contentBase64="")], "/attachments/0/contentBase64"),
        ([attachment(content_type="application/x-msdownload", name="setup.exe")], "/attachments/0/contentType"),
        ([attachment(content_type="text/html")], "/attachments/0/contentType"),
        ([attachment(), attachment(content_type="image/svg+xml")], "/attachments/1/contentType"),
        ([attachment(name="")], "/attachments/0/name"),
        ([attachment(name="   ")], "/attachments/0/name"),
        ([attachment(name="../../etc/passwd")], "/attachments/0/name"),
        ([attachment(name="reports/invoice.pdf")], "/attachments/0/name"),
        ([attachment(name="C:\\invoice.pdf")], "/attachments/0/name"),
        ([attachment(name=".htaccess")], "/attachments/0/name"),
        ([attachment(name="invoice\r\nContent-Type: text/html.pdf")], "/attachments/0/name"),
        ([attachment(name="invoice\x00.pdf")], "/attachments/0/name"),
        ([attachment(name="invoice\u202efdp.exe")], "/attachments/0/name"),  # right-to-left override
        ([attachment(name="a" * 252 + ".pdf")], "/attachments/0/name"),  # 256 characters
        ([{"name": "invoice.pdf", "contentBase64": b64(PDF)}], "/attachments/0/contentType"),
        ([attachment(content=PDF) | {"contentId": "logo"}], "/attachments/0/contentId"),
        ([attachment() for _ in range(11)], "/attachments"),
    ],
    ids=[
        "not base64", "no padding", "line break", "base64url", "non-canonical", "empty content",
        "executable type", "html", "svg", "empty name", "blank name", "path traversal", "folder", "windows path",
        "leading dot", "header injection", "nul", "bidi override", "256 characters", "no content type",
        "unknown field", "11 attachments",
    ],
)
def test_a_bad_attachment_is_422_naming_it_and_nothing_is_stored_or_queued(client, faked_services, attachments, field):
    response = post(client, EMAIL | {"attachments": attachments})

    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    assert nothing_was_kept(faked_services)


def test_attachments_over_the_total_size_limit_are_422_and_nothing_is_stored(client, faked_services):
    faked_services.settings = Settings(**SETTINGS | {"MAX_REQUEST_BYTES": str(1024 * 1024), "ATTACHMENTS_MAX_TOTAL_BYTES": "1000"})

    response = post(client, EMAIL | {"attachments": [attachment(content=b"x" * 600), attachment("b.pdf", content=b"y" * 401)]})

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "/attachments" and "1001 bytes" in error["message"] and "1000" in error["message"]
    assert nothing_was_kept(faked_services)


def test_attachments_at_exactly_the_total_size_limit_are_accepted(client, faked_services):
    faked_services.settings = Settings(**SETTINGS | {"MAX_REQUEST_BYTES": str(1024 * 1024), "ATTACHMENTS_MAX_TOTAL_BYTES": "1000"})

    response = post(client, EMAIL | {"attachments": [attachment(content=b"x" * 600), attachment("b.pdf", content=b"y" * 400)]})

    assert response.status_code == 202


def test_with_the_default_limits_more_than_7_mib_of_attachments_is_refused_though_the_request_fits(client, faked_services):
    faked_services.settings = Settings(**{k: v for k, v in SETTINGS.items() if k != "MAX_REQUEST_BYTES"})
    chunk = b"\x00" * (3 * 1024 * 1024 + 512 * 1024)  # 3.5 MiB, twice: 7 MiB and a byte more

    response = post(client, EMAIL | {"attachments": [attachment(content=chunk), attachment("b.pdf", content=chunk + b"!")]})

    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["/attachments"]
    assert nothing_was_kept(faked_services)


def test_a_request_larger_than_max_request_bytes_is_413_before_any_attachment_is_read(client, faked_services):
    faked_services.settings = Settings(**SETTINGS)  # 4 KiB

    response = post(client, EMAIL | {"attachments": [attachment(content=b"x" * 5000)]})

    assert response.status_code == 413
    assert nothing_was_kept(faked_services)


def test_more_attachments_than_the_configured_count_are_refused(client, faked_services):
    faked_services.settings = Settings(**SETTINGS | {"MAX_REQUEST_BYTES": str(1024 * 1024), "ATTACHMENTS_MAX_COUNT": "2"})

    response = post(client, EMAIL | {"attachments": [attachment(), attachment(), attachment()]})

    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "/attachments", "message": "at most 2 attachments"}]
    assert nothing_was_kept(faked_services)


def test_an_sms_with_attachments_is_refused_because_attachments_are_for_email_only(client, faked_services):
    body = {"channel": "sms", "to": ["+14255551234"], "message": "Code 1", "attachments": [attachment()]}

    response = post(client, body)

    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "/attachments", "message": "attachments are for email only"}]
    assert nothing_was_kept(faked_services)


def test_every_bad_attachment_is_named_in_one_answer(client, faked_services):
    response = post(
        client,
        EMAIL | {"attachments": [attachment(content_type="text/html"), attachment(contentBase64="@@@@"), attachment()]},
    )

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["/attachments/0/contentType", "/attachments/1/contentBase64"]
    assert nothing_was_kept(faked_services)


def test_an_unreachable_attachment_store_is_503_and_nothing_is_recorded_or_queued(client, faked_services):
    faked_services.attachments.failures.append(AttachmentStoreUnavailable("blob service down"))

    response = post(client, EMAIL | {"attachments": [attachment()]})

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert not faked_services.queue.sent and not faked_services.ledger.rows


def test_the_same_idempotency_key_and_attachments_return_the_first_notification_and_keep_one_copy(client, faked_services):
    body = EMAIL | {"attachments": [attachment()]}
    key = {"Idempotency-Key": "invoice-42"}

    first = post(client, body, SENDER | key)
    again = post(client, body, SENDER | key)

    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert list(faked_services.attachments.contents) == [f"{first.json()['id']}/0"]


def test_the_same_idempotency_key_with_a_different_attachment_is_a_conflict(client, faked_services):
    key = {"Idempotency-Key": "invoice-43"}
    first = post(client, EMAIL | {"attachments": [attachment()]}, SENDER | key)

    conflict = post(client, EMAIL | {"attachments": [attachment(content=PDF + b"changed")]}, SENDER | key)

    assert conflict.status_code == 409
    assert list(faked_services.attachments.contents) == [f"{first.json()['id']}/0"]


# ---------------------------------------------------------------------------- dispatch


def email_with_attachments(*attachments: NewAttachment, to: str = "someone@example.com"):
    cmd = email_command(to)
    return type(cmd)(**{**cmd.__dict__, "attachments": list(attachments)})


def test_the_email_sent_carries_each_attachments_bytes_and_the_store_is_emptied_once_it_is_sent():
    world = World()
    logo = bytes(range(256)) * 4
    n, _ = world.submit(
        email_with_attachments(NewAttachment("invoice.pdf", "application/pdf", PDF), NewAttachment("logo.png", "image/png", logo))
    )

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, Completed)
    [email] = world.email.sent
    assert [(a.name, a.content_type, a.content) for a in email.attachments] == [
        ("invoice.pdf", "application/pdf", PDF),
        ("logo.png", "image/png", logo),
    ]
    assert world.ledger.get(n.id).status is NotificationStatus.SENT
    assert world.attachments.contents == {}
    assert world.ledger.get(n.id).content["attachments"][1]["size"] == len(logo)


def test_an_attachment_gone_from_the_store_dead_letters_the_email_without_sending_it():
    world = World()
    n, _ = world.submit(email_with_attachments(NewAttachment("invoice.pdf", "application/pdf", PDF)))
    world.attachments.contents.clear()

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, DeadLettered) and outcome.reason == "AttachmentMissing"
    assert world.email.sent == []
    assert world.ledger.get(n.id).status is NotificationStatus.DEAD_LETTERED


def test_an_attachment_changed_in_the_store_is_not_sent():
    world = World()
    n, _ = world.submit(email_with_attachments(NewAttachment("invoice.pdf", "application/pdf", PDF)))
    world.attachments.contents[f"{n.id}/0"] = b"something else"

    outcome = world.dispatch(n.id)

    assert isinstance(outcome, DeadLettered) and outcome.reason == "AttachmentMissing"
    assert world.email.sent == []


def test_an_unreachable_attachment_store_at_send_time_is_retried_later_and_then_sent():
    world = World()
    n, _ = world.submit(email_with_attachments(NewAttachment("invoice.pdf", "application/pdf", PDF)))
    world.attachments.failures.append(AttachmentStoreUnavailable("blob service down"))

    first = world.dispatch(n.id)
    world.clock.advance(first.delay_seconds + 1)
    second = world.dispatch(n.id, 2)

    assert isinstance(first, Rescheduled) and isinstance(second, Completed)
    [email] = world.email.sent
    assert email.attachments[0].content == PDF


def test_an_email_without_attachments_is_sent_without_touching_the_store():
    world = World()
    n, _ = world.submit(email_command())
    world.attachments.failures.append(AttachmentStoreUnavailable("would fail if asked"))

    assert isinstance(world.dispatch(n.id), Completed)
    assert world.email.sent[0].attachments == []
    assert world.attachments.deleted == []
