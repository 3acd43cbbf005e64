"""Azure Functions entry point (Python v2 model): binds triggers to handlers, nothing more.

Binding settings are app-setting names: ``%NOTIFICATIONS_QUEUE%``, ``%REQUESTS_QUEUE%``,
``%DELIVERY_REPORTS_QUEUE%``, ``%RECONCILE_SCHEDULE%`` and ``%STATUS_RELAY_SCHEDULE%`` are resolved
by the host, and ``ServiceBusConnection`` names the identity-based connection
(``ServiceBusConnection__fullyQualifiedNamespace``).
"""

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.servicebus as servicebus

from shared.entrypoints import triggers
from shared.entrypoints.api import create_api
from shared.service.handlers import DeadLettered

# The API authenticates every route itself (bearer tokens with roles), so the host lets all
# requests through to it; function keys would be a second, weaker secret to manage.
app = func.AsgiFunctionApp(app=create_api(), http_auth_level=func.AuthLevel.ANONYMOUS)

log = logging.getLogger("function_app")


@app.function_name(name="dispatch_notification")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%NOTIFICATIONS_QUEUE%", connection="ServiceBusConnection")
def dispatch_notification(msg: func.ServiceBusMessage) -> None:
    outcome = triggers.dispatch_queue_message(msg.get_body(), msg.application_properties, msg.enqueued_time_utc)
    if isinstance(outcome, DeadLettered):
        # The ledger holds the dead letter with its reason; returning completes the message so
        # the host does not redeliver it in a hot loop.
        log.warning("message %s dead-lettered in the ledger: %s", msg.message_id, outcome.reason)


@app.function_name(name="accept_notification_request")
@app.service_bus_queue_trigger(
    arg_name="msg", queue_name="%REQUESTS_QUEUE%", connection="ServiceBusConnection", auto_complete_messages=False
)
def accept_notification_request(
    msg: servicebus.ServiceBusReceivedMessage, message_actions: servicebus.ServiceBusMessageActions
) -> None:
    # Settled here, not by the host: only an explicit dead-letter carries a reason. A transient
    # failure raises before any settlement, so the host releases the lock and the message is
    # delivered again (up to the queue's maxDeliveryCount).
    outcome = triggers.accept_request_message(triggers.request_from_servicebus(msg))
    if isinstance(outcome, triggers.RequestRefused):
        message_actions.deadletter(msg, deadletter_reason=outcome.reason, deadletter_error_description=outcome.description)
    else:
        message_actions.complete(msg)


# Event Grid puts each ACS event on the delivery-reports queue, and the host hands them over in
# batches (host.json maxMessageBatchSize): one ledger read and one write per batch. Settled here:
# a message whose body is not JSON is dead-lettered with a reason, the rest completed once applied
# (events refused as malformed or foreign are logged and counted); a failure raises before any
# settlement, so the batch is delivered again.
@app.function_name(name="apply_delivery_reports")
@app.service_bus_queue_trigger(
    arg_name="messages",
    queue_name="%DELIVERY_REPORTS_QUEUE%",
    connection="ServiceBusConnection",
    cardinality=func.Cardinality.MANY,
    auto_complete_messages=False,
)
def apply_delivery_reports(
    messages: list[servicebus.ServiceBusReceivedMessage], message_actions: servicebus.ServiceBusMessageActions
) -> None:
    outcome = triggers.apply_event_messages(triggers.event_bodies_from_servicebus(messages))
    unreadable = set(outcome.unreadable)
    for position, msg in enumerate(messages):
        if position in unreadable:
            message_actions.deadletter(
                msg,
                deadletter_reason=triggers.UNREADABLE_EVENT,
                deadletter_error_description="The message body is not an Event Grid or CloudEvents JSON event.",
            )
        else:
            message_actions.complete(msg)


@app.function_name(name="reconcile")
@app.timer_trigger(arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=False, use_monitor=True)
def reconcile(timer: func.TimerRequest) -> None:
    triggers.run_reconciliation()


# Every few seconds: status events wait in the ledger's outbox until then, so sending never waits
# for Event Grid. The timer runs on one instance at a time, which keeps each notification's
# events in order. (A sub-minute schedule needs no schedule monitor: a missed run is the next one.)
@app.function_name(name="relay_status_events")
@app.timer_trigger(arg_name="timer", schedule="%STATUS_RELAY_SCHEDULE%", run_on_startup=False, use_monitor=False)
def relay_status_events(timer: func.TimerRequest) -> None:
    triggers.relay_status_events()
