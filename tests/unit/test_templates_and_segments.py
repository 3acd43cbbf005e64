"""Templates and SMS segments at the HTTP edge: rendered or refused at intake, never at send time."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.adapters.jinja_templates import JinjaTemplates
from shared.domain.model import Channel
from shared.entrypoints.api import create_api
from shared.service.ports import TemplateError

SENDER = {"Authorization": "Bearer test-sender"}
REPO_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
ORDER = {"name": "order-shipped", "data": {"order_id": "A-42", "customer_name": "Jane", "carrier": None}}


@pytest.fixture
def client(faked_services):
    return TestClient(create_api(), raise_server_exceptions=False)


def post(client, body):
    return client.post("/api/notifications", json=body, headers=SENDER)


def test_an_email_from_a_template_is_rendered_at_intake_and_sent_as_rendered(client, faked_services):
    response = post(client, {"channel": "email", "to": ["jane@example.com"], "template": ORDER})

    assert response.status_code == 202, response.text
    stored = faked_services.ledger.get(response.json()["id"])
    assert stored.content["subject"] == "Your order A-42 has shipped"
    assert "Hello Jane," in stored.content["text"] and "with" not in stored.content["text"]
    assert stored.content["template"] == {"name": "order-shipped", "version": 2, "locale": "en"}
    assert stored.history[0].detail["template"]["version"] == 2


def test_the_get_shows_the_rendered_subject_the_template_and_a_content_hash_but_not_the_body(client):
    created = post(client, {"channel": "email", "to": ["jane@example.com"], "template": ORDER}).json()

    view = client.get(created["location"], headers=SENDER).json()

    assert view["subject"] == "Your order A-42 has shipped"
    assert view["template"]["name"] == "order-shipped"
    assert view["contentHash"].startswith("sha256:") and len(view["contentHash"]) == 71
    assert "Hello Jane" not in json.dumps(view)


def test_html_is_autoescaped(client, faked_services):
    data = ORDER["data"] | {"customer_name": "<script>alert(1)</script>"}
    created = post(client, {"channel": "email", "to": ["jane@example.com"], "template": ORDER | {"data": data}}).json()

    html = faked_services.ledger.get(created["id"]).content["html"]
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_locale_variant_is_used_and_a_regional_locale_falls_back_to_its_language(client, faked_services):
    created = post(client, {"channel": "email", "to": ["jane@example.com"], "template": ORDER | {"locale": "fr-CA"}}).json()

    stored = faked_services.ledger.get(created["id"])
    assert stored.content["subject"] == "Votre commande A-42 est en route"
    assert stored.content["template"]["locale"] == "fr"


@pytest.mark.parametrize(
    "template, field, words",
    [
        ({"name": "no-such-template"}, "/template/name", "no template"),
        ({"name": "draft-newsletter"}, "/template/name", "not approved"),
        (ORDER | {"version": 1}, "/template/version", "version 2"),
        ({"name": "order-shipped", "data": {"order_id": "A-42"}}, "/template/data", "customer_name"),
        ({"name": "verification-code", "data": {"code": "1"}}, "/template/name", "no email content"),
        ({"name": "../etc/passwd"}, "/template/name", "not a template name"),
    ],
)
def test_an_unusable_template_is_a_422_naming_the_field_and_queues_nothing(client, faked_services, template, field, words):
    response = post(client, {"channel": "email", "to": ["jane@example.com"], "template": template})

    assert response.status_code == 422
    [error] = [e for e in response.json()["errors"] if e["field"] == field]
    assert words in error["message"]
    assert faked_services.queue.sent == []


def test_a_template_and_literal_content_together_are_refused(client):
    response = post(client, {"channel": "email", "to": ["jane@example.com"], "subject": "Hi", "template": ORDER})
    assert response.status_code == 422
    assert "/template" in [e["field"] for e in response.json()["errors"]]


def test_a_template_cannot_reach_python_internals(tmp_path):
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "manifest.json").write_text('{"version": 1, "approved": true}')
    (tmp_path / "evil" / "subject.txt").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    (tmp_path / "evil" / "text.txt").write_text("x")

    with pytest.raises(TemplateError) as raised:
        JinjaTemplates(tmp_path).render(name="evil", channel=Channel.EMAIL, data={})
    assert "not allowed" in raised.value.message


def test_an_sms_from_a_template_records_its_segments(client, faked_services):
    template = {"name": "verification-code", "data": {"code": "123456", "minutes": 10}}
    created = post(client, {"channel": "sms", "to": ["+14255551234"], "template": template}).json()

    view = client.get(created["location"], headers=SENDER).json()
    assert (view["segments"], view["encoding"]) == (1, "GSM-7")
    assert faked_services.ledger.get(created["id"]).content["message"].startswith("Your verification code is 123456")


def test_an_sms_longer_than_the_segment_limit_is_refused_at_intake(client, faked_services):
    response = post(client, {"channel": "sms", "to": ["+14255551234"], "message": "🙂" * 300})

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "/message" and "UCS-2 segments; the limit is 6" in error["message"]
    assert faked_services.queue.sent == []


def test_a_template_may_name_its_sender_which_must_still_be_allowed(tmp_path, faked_services, client):
    (tmp_path / "promo").mkdir()
    (tmp_path / "promo" / "manifest.json").write_text('{"version": 1, "approved": true, "sender": {"email": "alerts@notify.example.com"}}')
    (tmp_path / "promo" / "subject.txt").write_text("Hi")
    (tmp_path / "promo" / "text.txt").write_text("Hello")
    (tmp_path / "rogue").mkdir()
    (tmp_path / "rogue" / "manifest.json").write_text('{"version": 1, "approved": true, "sender": {"email": "ceo@evil.example"}}')
    (tmp_path / "rogue" / "subject.txt").write_text("Hi")
    (tmp_path / "rogue" / "text.txt").write_text("Hello")
    faked_services.templates = JinjaTemplates(tmp_path)

    ok = post(client, {"channel": "email", "to": ["jane@example.com"], "template": {"name": "promo"}})
    rogue = post(client, {"channel": "email", "to": ["jane@example.com"], "template": {"name": "rogue"}})

    assert faked_services.ledger.get(ok.json()["id"]).sender == "alerts@notify.example.com"
    assert rogue.status_code == 422 and rogue.json()["errors"][0]["field"] == "/template"
