"""What the handlers tell operators: spans, metrics and the notification id of every log line.

The service layer talks to the OpenTelemetry *API* directly rather than through a port of our
own. The API is the vendor-neutral half of OpenTelemetry, made for exactly this: code that records
telemetry without knowing where it goes. Until a process installs an SDK (``shared.telemetry``,
from bootstrap) every call here is a no-op, so handlers run unchanged in unit tests, and a port
would only re-declare the API's tracer and meter under other names. What stays out of this layer
is the choice of exporter and anything from ``opentelemetry.sdk`` or ``azure.monitor``
(tests/test_architecture.py enforces it).

Privacy: a recipient reaches a span only as ``recipient_attributes`` (keyed hashes and email
domains, see ``shared.domain.privacy``), a body never; error text goes through ``redact_text``.
"""

from __future__ import annotations

import contextvars
import functools
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, TypeVar

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode

from ..domain.privacy import DEV_PII_HASH_KEY, recipient_domain, recipient_hash, redact_text

tracer = trace.get_tracer("notify.service")
meter = metrics.get_meter("notify.service")

#: The notification a log line is about; the logging filter in ``shared.telemetry`` reads it.
current_notification: contextvars.ContextVar[str | None] = contextvars.ContextVar("notification_id", default=None)

_pii_key = DEV_PII_HASH_KEY
F = TypeVar("F", bound=Callable[..., Any])


def use_pii_hash_key(key: str) -> None:
    """Set by bootstrap from PII_HASH_KEY, once per process, before any handler runs."""
    global _pii_key
    _pii_key = key


def hash_recipient(address: str) -> str:
    return recipient_hash(address, _pii_key)


# ------------------------------------------------------------------------------ metrics

# Notifications (one request) for intake and dead letters; messages (one recipient each, which is
# what ACS bills and judges the failure rate by) for everything ACS reports on.
accepted = meter.create_counter("notify.notifications.accepted", "{notification}", "Notifications accepted at intake")
dead_lettered = meter.create_counter(
    "notify.notifications.dead_lettered", "{notification}", "Notifications given up on, by reason"
)
sent = meter.create_counter("notify.messages.sent", "{message}", "Recipients handed to ACS")
OUTCOME_COUNTERS = {
    status: meter.create_counter(f"notify.messages.{status}", "{message}", f"Recipients whose final status became {status}")
    for status in ("delivered", "bounced", "failed", "suppressed")
}
send_duration = meter.create_histogram("notify.send.duration", "s", "One ACS send call, by channel and outcome")
delivery_duration = meter.create_histogram(
    "notify.delivery.duration", "s", "From accepted to the delivery report saying delivered"
)
queue_age = meter.create_histogram("notify.queue.age", "s", "How long a dispatch message waited on the queue")
failure_rate = meter.create_gauge(
    "notify.failure_rate", "1", "Bounced, failed and suppressed over sent, in the reconciler's window"
)

#: Recipient statuses to the outcome counter they count in (quarantine and spam filtering are
#: failures to deliver, as in the notification's status).
OUTCOME_OF_STATUS = {
    "delivered": "delivered",
    "bounced": "bounced",
    "suppressed": "suppressed",
    "failed": "failed",
    "quarantined": "failed",
    "filtered_spam": "failed",
}


def count_outcome(channel: str, status: str, n: int = 1, *, source: str = "delivery_report") -> None:
    """``source``: ``delivery_report`` (ACS's verdict), ``acs_refused`` (ACS refused a recipient
    at send time) or ``suppression_list`` (ours, before sending: not in ACS's failure rate)."""
    outcome = OUTCOME_OF_STATUS.get(status)
    if outcome is not None and n:
        OUTCOME_COUNTERS[outcome].add(n, {"channel": channel, "source": source})


# ------------------------------------------------------------------------------ context


class about:
    """Every log line inside is about this notification.

    A class rather than a ``@contextmanager`` generator: it is entered once per delivery report,
    a thousand times a batch, and costs a quarter as much."""

    __slots__ = ("_notification_id", "_token")

    def __init__(self, notification_id: str) -> None:
        self._notification_id = notification_id

    def __enter__(self) -> None:
        self._token = current_notification.set(self._notification_id)

    def __exit__(self, *exc_info: object) -> None:
        current_notification.reset(self._token)


def tracing() -> bool:
    """Whether this process records spans: an SDK provider is installed (``shared.telemetry``).
    Without one every span is a no-op that still costs about 10 us to open and close, which a
    per-item span in a batch of a thousand (the delivery reports) cannot afford for nothing."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


#: A span to use in place of ``span(...)`` when ``tracing()`` is false: attributes set on it go
#: nowhere, and the current span (whose context log lines carry) stays the caller's, as it does
#: under a no-op span.
NOT_RECORDED: ContextManager[Span] = nullcontext(trace.INVALID_SPAN)


def recipient_attributes(addresses: Iterable[str]) -> dict[str, Any]:
    """Span attributes that let an operator find a recipient (by its keyed hash) and group by email
    domain, without the address itself."""
    addresses = list(addresses)
    attributes: dict[str, Any] = {"notify.recipient.count": len(addresses)}
    if addresses and tracing():
        # Hashed only when a process exports spans: without an SDK nothing would read them.
        attributes["notify.recipient.hashes"] = [hash_recipient(a) for a in addresses]
        domains = sorted({d for a in addresses if (d := recipient_domain(a))})
        if domains:
            attributes["notify.recipient.domains"] = domains
    return attributes


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store with a notification."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None  # what the propagator would say, without its work (most requests, locally)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def trace_properties(traceparent: str | None = None) -> dict[str, str]:
    """W3C trace context for a queue message's application properties: the current span's, or the
    given ``traceparent`` (a message sent on a notification's behalf outside its trace)."""
    carrier: dict[str, str] = {}
    if traceparent:
        carrier["traceparent"] = traceparent
    elif trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}


def extract(properties: Mapping[str, Any] | None) -> Context:
    """The trace context a queue message carries (an empty one when it carries none)."""
    carrier = {str(k): str(v) for k, v in (properties or {}).items() if str(k) in ("traceparent", "tracestate")}
    return propagate.extract(carrier)


def link_to(traceparent: str | None) -> list[Link]:
    """A span link to the trace a notification was accepted in, if it was recorded."""
    if not traceparent:
        return []
    context = trace.get_current_span(propagate.extract({"traceparent": traceparent})).get_span_context()
    return [Link(context, {"notify.link": "notification"})] if context.is_valid else []


@contextmanager
def span(name: str, **options: Any) -> Iterator[Span]:
    """``tracer.start_as_current_span`` for our spans: an exception that escapes marks the span
    failed with its text masked, rather than the SDK's raw ``str(exception)``."""
    with tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False, **options) as current:
        try:
            yield current
        except Exception as exc:
            failed(current, exc)
            raise


def in_span(name: str, attributes: Callable[[Any], dict[str, Any]] | None = None) -> Callable[[F], F]:
    """A handler that runs in a span of its own (``attributes`` computed from its command)."""

    def wrap(handler: F) -> F:
        @functools.wraps(handler)
        def traced(cmd: Any, **ports: Any) -> Any:
            with span(name, attributes=attributes(cmd) if attributes else None):
                return handler(cmd, **ports)

        return traced  # type: ignore[return-value]

    return wrap


def failed(span: Span, error: BaseException) -> None:
    """Mark a span failed without putting the error's raw text on it (ACS echoes addresses)."""
    span.set_status(Status(StatusCode.ERROR, redact_text(str(error))[:500]))
    span.set_attribute("error.type", type(error).__name__)


def since(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)

