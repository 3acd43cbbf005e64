"""The Functions app as the host sees it: its bindings, and its functions called directly."""

import asyncio
import json
import re
import subprocess
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import azure.functions as func
import pytest
import uamqp
from azure.functions.servicebus import ServiceBusMessage
from azurefunctions.extensions.base import Datum
from azurefunctions.extensions.bindings.servicebus import ServiceBusConverter, ServiceBusReceivedMessage
from uamqp.message import MessageProperties

import function_app
from shared.domain.model import NotificationStatus
from tests.conftest import ROOT, SETTINGS
from tests.fakes import FakeLedger

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
        "accept_notification_request": "serviceBusTrigger",
        "apply_delivery_reports": "serviceBusTrigger",
        "reconcile": "timerTrigger",
        "relay_status_events": "timerTrigger",
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


def test_the_status_relay_runs_every_few_seconds_from_an_app_setting():
    schedule = LOCAL_SETTINGS[setting_name(trigger("relay_status_events")["schedule"])]
    seconds, *rest = schedule.split()
    assert len(rest) == 5 and rest == ["*"] * 5
    assert seconds.startswith("*/") and 1 <= int(seconds[2:]) <= 10


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


def test_the_timer_function_marks_overdue_sends_unconfirmed(faked_services):
    nid = submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})
    faked_services.clock.advance(faked_services.settings.delivery_report_deadline_seconds + 1)

    functions()["reconcile"].get_user_function()(None)

    assert faked_services.ledger.get(nid).status is NotificationStatus.UNCONFIRMED


def test_the_http_function_serves_the_dashboard_page_and_its_data_only_to_an_operator(faked_services):
    page = call_http("GET", "/api/admin/dashboard")
    assert page.status_code == 200 and b"Operator key or token" in page.get_body()
    assert call_http("GET", "/api/admin/dashboard/dashboard.js").status_code == 200
    assert call_http("GET", "/api/admin/dashboard/data").status_code == 401
    data = call_http("GET", "/api/admin/dashboard/data", headers={"Authorization": "Bearer test-operator"})
    assert data.status_code == 200 and "failureRate" in json.loads(data.get_body())


def test_the_package_keeps_the_dashboard_files_and_leaves_the_tests_out():
    # .funcignore has .gitignore's syntax, so git itself says what it leaves out of the package.
    static = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "shared" / "entrypoints" / "static").iterdir())
    assert {"shared/entrypoints/static/dashboard.html", "shared/entrypoints/static/dashboard.js"} <= set(static)

    def left_out(path: str) -> bool:
        checked = subprocess.run(
            ["git", "-c", f"core.excludesFile={ROOT / '.funcignore'}", "check-ignore", "--no-index", "-q", path],
            cwd=ROOT, capture_output=True,
        )
        assert checked.returncode in (0, 1), checked.stderr
        return checked.returncode == 0

    assert left_out("tests/unit/test_dashboard.py")
    assert [p for p in static if left_out(p)] == []
# ------------------------------------------------------------------------------ the requests queue


def test_the_intake_trigger_reads_the_requests_queue_from_app_settings_and_settles_messages_itself():
    binding = trigger("accept_notification_request")
    assert LOCAL_SETTINGS[setting_name(binding["queueName"])] == "notification-requests"
    assert binding["connection"] == trigger("dispatch_notification")["connection"]
    # Only a function that settles its own messages can dead-letter one with a reason.
    assert binding["autoCompleteMessages"] is False


def host_message(body: bytes, *, message_id: str = "m-1", correlation_id: str | None = None, **properties):
    """A request message as the Functions host hands it to an SDK-type binding: the AMQP message
    and its lock token, decoded by the extension's own converter."""
    amqp = uamqp.Message(
        body=body,
        properties=MessageProperties(message_id=message_id, correlation_id=correlation_id, content_type="application/json"),
        application_properties=properties or None,
    )
    content = uuid.uuid4().bytes_le + b"x-opt-lock-token" + amqp.encode_message()
    data = SimpleNamespace(version="1.0", source="AzureServiceBusReceivedMessage", content_type="application/octet-stream", content=content)
    return ServiceBusConverter.decode(Datum(data, "model_binding_data"), trigger_metadata=None, pytype=ServiceBusReceivedMessage)


class UnreachableLedger(FakeLedger):
    """A ledger whose store cannot be reached: what intake and report application call fails."""

    def add(self, notification):
        raise ConnectionError("the ledger cannot be reached")

    def find_by_message_ids(self, message_ids):
        raise ConnectionError("the ledger cannot be reached")


class RecordingMessageActions:
    """Stands in for ServiceBusMessageActions, which talks to the host over gRPC."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def complete(self, message) -> None:
        self.calls.append(("complete", message.lock_token))

    def deadletter(self, message, deadletter_reason=None, deadletter_error_description=None) -> None:
        self.calls.append(("deadletter", message.lock_token, deadletter_reason, deadletter_error_description))


def call_intake(message) -> RecordingMessageActions:
    actions = RecordingMessageActions()
    functions()["accept_notification_request"].get_user_function()(message, actions)
    return actions


def test_a_valid_request_from_the_requests_queue_is_accepted_and_its_message_completed(faked_services):
    body = json.dumps({"channel": "sms", "to": ["+14255551234"], "message": "Code 1"}).encode()
    message = host_message(body, correlation_id="order-42", tenant="contoso")

    actions = call_intake(message)

    assert actions.calls == [("complete", message.lock_token)]
    [notification] = faked_services.ledger.rows.values()
    assert (notification.correlation_id, notification.caller_properties) == ("order-42", {"tenant": "contoso"})
    assert len(faked_services.queue.sent) == 1


def test_an_invalid_request_from_the_requests_queue_is_dead_lettered_as_validation_failed(faked_services):
    message = host_message(json.dumps({"channel": "email", "to": ["nobody"], "subject": "Hi", "text": "x"}).encode())

    actions = call_intake(message)

    [(action, lock_token, reason, description)] = actions.calls
    assert (action, lock_token, reason) == ("deadletter", message.lock_token, "ValidationFailed")
    assert [e["field"] for e in json.loads(description)["errors"]] == ["/to/0/address"]
    assert faked_services.ledger.rows == {} and faked_services.queue.sent == []


def test_the_same_message_delivered_twice_by_the_host_makes_one_notification(faked_services):
    body = json.dumps({"channel": "sms", "to": ["+14255551234"], "message": "Code 1"}).encode()

    call_intake(host_message(body, message_id="m-7"))
    call_intake(host_message(body, message_id="m-7"))

    assert len(faked_services.ledger.rows) == 1 and len(faked_services.queue.sent) == 1


def test_a_request_whose_ledger_is_unreachable_raises_unsettled_so_the_host_delivers_it_again(faked_services):
    faked_services.ledger = UnreachableLedger()
    actions = RecordingMessageActions()

    with pytest.raises(ConnectionError):
        functions()["accept_notification_request"].get_user_function()(
            host_message(json.dumps({"channel": "sms", "to": ["+14255551234"], "message": "Code 1"}).encode()), actions
        )
    assert actions.calls == []


def test_the_status_relay_timer_publishes_what_the_dispatcher_left_in_the_outbox(faked_services):
    from shared.service.status_events import Destination
    from tests.fakes import FakeStatusEventPublisher

    topic = FakeStatusEventPublisher("topic")
    faked_services.status_destinations = [Destination(topic)]
    nid = submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})

    functions()["relay_status_events"].get_user_function()(None)

    assert [(e["type"], e["subject"]) for e in topic.events] == [
        ("Notify.notification.accepted", f"notifications/{nid}"), ("Notify.notification.sent", f"notifications/{nid}"),
    ]
    assert faked_services.ledger.pending_status_events(10) == []


# ------------------------------------------------------------------------------ the delivery-reports queue


def test_the_report_trigger_takes_its_queue_in_batches_from_app_settings_and_settles_messages_itself():
    binding = trigger("apply_delivery_reports")
    assert LOCAL_SETTINGS[setting_name(binding["queueName"])] == "delivery-reports"
    assert binding["connection"] == trigger("dispatch_notification")["connection"]
    assert binding["cardinality"] == func.Cardinality.MANY
    assert binding["autoCompleteMessages"] is False


def host_batch(bodies: list[bytes]) -> list:
    """Messages as the Functions host hands a batch to an SDK-type binding (cardinality many)."""
    model_binding_data = []
    for position, body in enumerate(bodies):
        amqp = uamqp.Message(body=body, properties=MessageProperties(message_id=f"eg-{position}", content_type="application/json"))
        content = uuid.uuid4().bytes_le + b"x-opt-lock-token" + amqp.encode_message()
        model_binding_data.append(
            SimpleNamespace(version="1.0", source="AzureServiceBusReceivedMessage", content_type="application/octet-stream", content=content)
        )
    data = SimpleNamespace(model_binding_data=model_binding_data)
    return ServiceBusConverter.decode(
        Datum(data, "collection_model_binding_data"), trigger_metadata=None, pytype=list[ServiceBusReceivedMessage]
    )


def report_event(nid: str, status: str, event_id: str, recipient: str = "a@example.com") -> bytes:
    """One ACS email delivery report as Event Grid writes it into a Service Bus message body."""
    return json.dumps({
        "id": event_id,
        "topic": SETTINGS["ACS_RESOURCE_ID"],
        "subject": f"sender/DoNotReply@notify.example.com/message/{nid}",
        "eventType": "Microsoft.Communication.EmailDeliveryReportReceived",
        "eventTime": datetime.now(timezone.utc).isoformat(),
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "data": {"sender": "DoNotReply@notify.example.com", "recipient": recipient, "messageId": nid,
                 "status": status, "deliveryStatusDetails": {"statusMessage": "ok"}},
    }).encode()


def call_reports(messages) -> RecordingMessageActions:
    actions = RecordingMessageActions()
    functions()["apply_delivery_reports"].get_user_function()(messages, actions)
    return actions


def test_a_batch_of_delivery_reports_from_the_queue_is_applied_and_every_message_completed(faked_services):
    email = {"channel": "email", "subject": "Hi", "text": "Hello"}
    delivered = submit_and_dispatch(faked_services, {**email, "to": ["a@example.com"]})
    faked_services.queue.sent.clear()
    bounced = submit_and_dispatch(faked_services, {**email, "to": ["b@example.com"]})
    messages = host_batch([report_event(delivered, "Delivered", "ev-1"), report_event(bounced, "Bounced", "ev-2", "b@example.com")])

    actions = call_reports(messages)

    assert actions.calls == [("complete", m.lock_token) for m in messages]
    assert faked_services.ledger.get(delivered).status is NotificationStatus.DELIVERED
    assert faked_services.ledger.get(bounced).status is NotificationStatus.BOUNCED


def test_a_message_that_holds_no_event_is_dead_lettered_and_the_rest_of_its_batch_applied(faked_services):
    nid = submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})
    too_deep = b"[" * 100_000 + b"]" * 100_000  # json.loads gives up with RecursionError
    messages = host_batch([b"not json", report_event(nid, "Delivered", "ev-1"), b'"a string, not an event"', too_deep])

    actions = call_reports(messages)

    assert [(call[0], call[1]) for call in actions.calls] == [
        ("deadletter", messages[0].lock_token), ("complete", messages[1].lock_token),
        ("deadletter", messages[2].lock_token), ("deadletter", messages[3].lock_token),
    ]
    assert {call[2] for call in actions.calls if call[0] == "deadletter"} == {"UnreadableEvent"}
    assert faked_services.ledger.get(nid).status is NotificationStatus.DELIVERED


def test_the_same_report_delivered_twice_by_the_queue_is_applied_once(faked_services):
    nid = submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})
    call_reports(host_batch([report_event(nid, "Delivered", "ev-1")]))
    history = len(faked_services.ledger.get(nid).history)

    actions = call_reports(host_batch([report_event(nid, "Delivered", "ev-1")]))

    assert [call[0] for call in actions.calls] == ["complete"]
    assert len(faked_services.ledger.get(nid).history) == history


def test_a_report_batch_whose_ledger_is_unreachable_raises_unsettled_so_the_host_delivers_it_again(faked_services):
    nid = submit_and_dispatch(faked_services, {"channel": "email", "to": ["a@example.com"], "subject": "Hi", "text": "Hello"})

    faked_services.ledger = UnreachableLedger()
    actions = RecordingMessageActions()

    with pytest.raises(ConnectionError):
        functions()["apply_delivery_reports"].get_user_function()(host_batch([report_event(nid, "Delivered", "ev-1")]), actions)
    assert actions.calls == []
