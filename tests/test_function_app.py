"""The Functions app as the host sees it: its bindings, and its functions called directly."""

import asyncio
import json
import re
from datetime import datetime, timezone

import azure.functions as func
from azure.functions.servicebus import ServiceBusMessage

import function_app
from shared.domain.model import NotificationStatus
from tests.conftest import ROOT, SETTINGS

LOCAL_SETTINGS = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]


# get_functions() validates name uniqueness against what it saw before, so it can run once.
_FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}


def functions() -> dict:
    return _FUNCTIONS


def trigger(name: str) -> dict:
    [binding] = [b for b in functions()[name].get_bindings_dict()["bindings"] if b["direction"].name == "IN"]
    return binding


def setting_name(value: str) -> str:
    match = re.fullmatch(r"%(\w+)%", value)
    assert match, f"{value!r} should name an app setting as %NAME%"
    return match.group(1)


def test_the_app_registers_the_http_api_the_dispatcher_the_report_handler_and_the_reconciler():
    kinds = {name: trigger(name)["type"] for name in functions()}
    assert kinds == {
        "http_app_func": "httpTrigger",
        "dispatch_notification": "serviceBusTrigger",
        "apply_delivery_report": "eventGridTrigger",
        "reconcile": "timerTrigger",
    }


def test_the_dispatcher_reads_its_queue_name_and_connection_from_app_settings():
    binding = trigger("dispatch_notification")
    queue_setting = setting_name(binding["queueName"])
    assert LOCAL_SETTINGS[queue_setting] == "notifications"
    connection = binding["connection"]
    assert connection in LOCAL_SETTINGS or f"{connection}__fullyQualifiedNamespace" in LOCAL_SETTINGS
    assert "SharedAccessKey" not in json.dumps(LOCAL_SETTINGS)


def test_the_reconciler_schedule_is_an_app_setting_with_a_six_field_cron():
    schedule = LOCAL_SETTINGS[setting_name(trigger("reconcile")["schedule"])]
    assert len(schedule.split()) == 6


def test_the_http_api_leaves_authentication_to_the_app():
    assert trigger("http_app_func")["authLevel"].name == "ANONYMOUS"
    assert trigger("http_app_func")["route"] == "/{*route}"


def test_every_setting_the_app_reads_has_a_working_local_value():
    from shared.config import Settings

    declared = {field.alias for field in Settings.model_fields.values()}
    missing = declared - LOCAL_SETTINGS.keys()
    assert not missing, f"local.settings.sample.json lacks {sorted(missing)}"
    Settings(**{k: v for k, v in LOCAL_SETTINGS.items() if k in declared})


def call_http(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> func.HttpResponse:
    request = func.HttpRequest(method=method, url=f"http://localhost:7071{path}", headers=headers or {}, body=body)
    handler = functions()["http_app_func"].get_user_function()
    return asyncio.run(handler(request, _Context()))


class _Context:
    invocation_id = "test"
    function_name = "http_app_func"
    function_directory = str(ROOT)
    trace_context = None
    retry_context = None
    thread_local_storage = None


def submit_and_dispatch(services, body: dict) -> str:
    """POST through the HTTP function, then run the Service Bus function on what it queued."""
    call_http("POST", "/api/notifications", json.dumps(body).encode(),
              {"Content-Type": "application/json", "Authorization": "Bearer test-sender"})
    [queued] = services.queue.sent
    message = ServiceBusMessage(
        body=json.dumps(queued.body).encode(), message_id=queued.message_id, delivery_count=1,
        application_properties=queued.application_properties, user_properties={},
    )
    functions()["dispatch_notification"].get_user_function()(message)
    return queued.body["notificationId"]


def test_the_http_function_serves_the_api_under_its_azure_routes(faked_services):
    assert call_http("GET", "/api/health").status_code == 200

    response = call_http(
        "POST",
        "/api/notifications",
        json.dumps({"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"}).encode(),
        {"Content-Type": "application/json", "Authorization": "Bearer test-sender"},
    )

    assert response.status_code == 202
    notification_id = json.loads(response.get_body())["id"]
    assert faked_services.ledger.get(notification_id).status is NotificationStatus.ACCEPTED


def test_the_http_function_refuses_a_request_without_a_token(faked_services):
    response = call_http("GET", "/api/notifications/x")
    assert response.status_code == 401


def test_the_service_bus_function_dispatches_the_queued_notification(faked_services):
    nid = submit_and_dispatch(faked_services, {"channel": "sms", "to": ["+14255551234"], "message": "Code 1"})

    [sms] = faked_services.sms_sender.sent
    assert [r.to for r in sms.recipients] == ["+14255551234"]
    assert faked_services.ledger.get(nid).status is NotificationStatus.SENT


def test_the_service_bus_function_continues_the_trace_of_the_http_function_that_queued_it(faked_services, telemetry):
    submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})

    request = telemetry.span("POST /api/notifications")
    acs = telemetry.span("acs.email.send")
    assert acs.context.trace_id == request.context.trace_id
    assert telemetry.span("notifications process").parent.span_id == telemetry.span("notify.submit").context.span_id


def test_a_malformed_service_bus_message_is_dead_lettered_in_the_ledger_not_retried(faked_services):
    message = ServiceBusMessage(body=b"not json", message_id="m1", delivery_count=1, application_properties={}, user_properties={})
    functions()["dispatch_notification"].get_user_function()(message)  # returns: completed, not abandoned
    assert faked_services.email_sender.sent == [] and faked_services.sms_sender.sent == []


def test_the_event_grid_function_applies_a_delivery_report(faked_services):
    nid = submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})
    event = func.EventGridEvent(
        id="ev-1",
        data={"sender": "DoNotReply@notify.example.com", "recipient": "a@example.com", "messageId": nid, "status": "Delivered",
              "deliveryStatusDetails": {"statusMessage": "ok"}},
        topic=SETTINGS["ACS_RESOURCE_ID"],
        subject=f"sender/x/message/{nid}",
        event_type="Microsoft.Communication.EmailDeliveryReportReceived",
        event_time=datetime.now(timezone.utc),
        data_version="1.0",
    )

    functions()["apply_delivery_report"].get_user_function()(event)

    assert faked_services.ledger.get(nid).status is NotificationStatus.DELIVERED


def test_the_timer_function_marks_overdue_sends_unconfirmed(faked_services):
    nid = submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})
    faked_services.clock.advance(faked_services.settings.delivery_report_deadline_seconds + 1)

    functions()["reconcile"].get_user_function()(None)

    assert faked_services.ledger.get(nid).status is NotificationStatus.UNCONFIRMED
