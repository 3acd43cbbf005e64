"""Telemetry for one process: where spans, metrics and logs go. The only module that knows.

``configure`` runs once per process, from ``bootstrap.services()`` (never when the domain or the
service layer is imported), and picks the exporter from the settings:

* ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set: Azure Monitor, through the
  ``azure-monitor-opentelemetry`` distro (traces, metrics and logs to App Insights);
* else ``TELEMETRY_EXPORTER=console``: spans and metrics as one JSON object a line on stdout (the
  local stack, and the end-to-end privacy test, which reads them back from the processes' output);
* else nothing is exported, but log lines still carry ids and stay free of recipients.

Tests install the SDK's in-memory exporter and reader with ``configure_for_tests``.

Every log line carries ``notification_id`` (from the handler's context) and ``trace_id`` /
``span_id`` (from the current span), as text locally or JSON lines with ``LOG_FORMAT=json``; and
every log line passes through ``redact_text``, so an address that an error message or a library
let slip is masked before any handler writes or exports it.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from opentelemetry import metrics, trace

from .domain.privacy import redact_text
from .service import observability

SERVICE_NAME = "notification-service"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [notification=%(notification_id)s trace=%(trace_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(notification_id)s %(trace_id)s %(span_id)s"
#: Each console line is one JSON object under one of these keys, so a reader tells spans and
#: metrics from log lines.
CONSOLE_SPAN_KEY = "otel.span"
CONSOLE_METRICS_KEY = "otel.metrics"

_lock = threading.Lock()
_configured = False


class LogContext(logging.Filter):
    """Adds the notification and trace ids to a record, and masks recipients in its text.

    Installed on handlers rather than loggers: a logger's filters never see records propagated
    from its children, a handler's see every record it writes or exports.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # Every handler runs this on the same record; each step is idempotent.
        if not getattr(record, "notification_id", None):
            record.notification_id = observability.current_notification.get() or "-"
        context = trace.get_current_span().get_span_context()
        if context.is_valid or not hasattr(record, "trace_id"):
            record.trace_id = format(context.trace_id, "032x") if context.is_valid else "-"
            record.span_id = format(context.span_id, "016x") if context.is_valid else "-"
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact_text(text)
            if record.exc_text != text:
                # The exception's own text names a recipient; exporters read exc_info directly, so
                # only the masked rendering may travel.
                record.exc_info = None
        return True


def _mask_span_text(span: Any) -> None:
    """Mask recipients in a finished span's status message and exception events.

    Our own spans never put raw error text there (``observability.span``), but instrumentation
    libraries do: the FastAPI server span records any exception that escapes a route, message and
    all. OpenTelemetry has no hook to change a span before export except a processor's ``on_end``,
    and the SDK hands every processor the same ``ReadableSpan``; so this one, registered before the
    exporting processor, rewrites the two fields in place (private attributes of the pinned SDK).
    """
    from opentelemetry.sdk.trace import Event
    from opentelemetry.trace import Status

    status = span.status
    if status.description and (masked := redact_text(status.description)) != status.description:
        span._status = Status(status.status_code, masked)
    if span.events:
        span._events = tuple(
            Event(e.name, {k: redact_text(v) if isinstance(v, str) else v for k, v in (e.attributes or {}).items()}, e.timestamp)
            for e in span.events
        )


def _masking_processor():
    from opentelemetry.sdk.trace import SpanProcessor

    class MaskRecipients(SpanProcessor):
        def on_end(self, span) -> None:
            _mask_span_text(span)

    return MaskRecipients()


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger", "asctime": "time"})
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: str = "text") -> None:
    """Format every root handler (adding a stderr one when there is none) and give it the filter."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    context = LogContext()
    for handler in root.handlers:
        if not any(isinstance(f, LogContext) for f in handler.filters):
            handler.addFilter(context)
        if isinstance(handler, logging.StreamHandler):
            handler.setFormatter(_formatter(log_format))


def _resource(role: str):
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": SERVICE_NAME, "service.namespace": "notify", "service.instance.role": role})


def _one_line(kind: str, payload: str) -> str:
    return json.dumps({kind: json.loads(payload)}, separators=(",", ":")) + "\n"


def _console(role: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    resource = _resource(role)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(_masking_processor())
    # Simple, not batched: locally a span should be on the screen when its work is done.
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(formatter=lambda span: _one_line(CONSOLE_SPAN_KEY, span.to_json())))
    )
    trace.set_tracer_provider(tracer_provider)
    # Every OTEL_METRIC_EXPORT_INTERVAL ms (the SDK's own variable; 60 s unless set), and at exit.
    reader = PeriodicExportingMetricReader(
        ConsoleMetricExporter(formatter=lambda data: _one_line(CONSOLE_METRICS_KEY, data.to_json()))
    )
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def _azure_monitor(connection_string: str, role: str, credential: Any | None) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {
        "connection_string": connection_string,
        "resource": _resource(role),
        # The API instruments its FastAPI app itself (instrument_api), in Azure and locally alike;
        # the distro's automatic FastAPI instrumentation would add a second server span.
        "instrumentation_options": {"fastapi": {"enabled": False}},
        # Runs before the distro's exporting processor (it adds custom processors first).
        "span_processors": [_masking_processor()],
    }
    if credential is not None:
        options["credential"] = credential
    configure_azure_monitor(**options)


def configure(settings: Any, *, role: str = "app", credential: Any | None = None) -> None:
    """Once per process: the PII hash key, the exporter the settings ask for, and the log format.

    ``credential``: the identity App Insights ingestion authenticates with, when its local
    authentication is off (APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD).
    """
    global _configured
    with _lock:
        if _configured:
            return
        _configured = True
    observability.use_pii_hash_key(settings.pii_hash_key)
    if settings.applicationinsights_connection_string:
        _azure_monitor(settings.applicationinsights_connection_string, role, credential)
    elif settings.telemetry_exporter == "console":
        _console(role)
    configure_logging(settings.log_format)


def configure_for_tests():
    """The SDK's in-memory span exporter and metric reader as the process's providers; returns both.

    OpenTelemetry allows one global provider per process, so tests share these and clear the
    exporter between tests (see the ``telemetry`` fixture).
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider(resource=_resource("test"))
    tracer_provider.add_span_processor(_masking_processor())
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=_resource("test"), metric_readers=[reader]))
    return exporter, reader


def flush() -> None:
    """Export what the providers hold, before a process stops (exit handlers may not run: uvicorn
    ends by re-raising the signal that stopped it)."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        force_flush = getattr(provider, "force_flush", None)  # the API's no-op providers have none
        if force_flush is not None:
            force_flush()


def instrument_api(app: Any) -> None:
    """Server spans for the HTTP API, continuing a caller's ``traceparent``. Left out: the health
    probe, which would be most of the traces and says nothing, and the ASGI receive/send sub-spans
    of every request. No headers are captured (Authorization is a bearer token)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="api/health", exclude_spans=["receive", "send"])
    instrumented = app.build_middleware_stack

    # The instrumentation's middleware costs a fifth of a small request's time even when nothing
    # records (no exporter configured, the local stack's default), so requests go around it until
    # a tracer provider is installed. Checked per request: ``configure`` runs when the services are
    # first built, after the app exists.
    def build_middleware_stack() -> Any:
        return _TracedWhileRecording(traced=instrumented(), plain=type(app).build_middleware_stack(app))

    app.build_middleware_stack = build_middleware_stack


class _TracedWhileRecording:
    """An ASGI app: the instrumented middleware stack while a tracer provider records, the plain one
    otherwise."""

    def __init__(self, *, traced: Any, plain: Any) -> None:
        # ``app`` names the instrumented stack because FastAPI's own telemetry walks the ``app``
        # chain for the instrumentation's middleware and, finding it, adds no second server span.
        self.app, self._plain = traced, plain

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await (self.app if tracing() else self._plain)(scope, receive, send)


def tracing() -> bool:
    """Whether this process has a tracer provider that records (configured here, or by a test)."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
