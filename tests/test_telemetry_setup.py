"""Which exporter a process gets from its settings (each case in a fresh interpreter: OpenTelemetry
allows one global provider per process)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, SETTINGS

PROBE = """
import json, logging
from opentelemetry import metrics, trace
from shared import bootstrap
from shared.service import observability
bootstrap.services("probe")
provider = trace.get_tracer_provider()
processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ())
exporters = [type(getattr(p, "span_exporter", None) or getattr(p, "_exporter", None)).__name__ for p in processors]
print(json.dumps({
    "tracer": type(provider).__name__,
    "meter": type(metrics.get_meter_provider()).__name__,
    "processors": [type(p).__name__ for p in processors],
    "exporters": exporters,
    "log_filters": [[type(f).__name__ for f in h.filters] for h in logging.getLogger().handlers],
    "tracing": observability.tracing(),
}))
"""


def probe(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "NOTIFY_", "APPLICATIONINSIGHTS_", "TELEMETRY_"))}
    env |= SETTINGS | settings
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_with_an_app_insights_connection_string_everything_goes_to_azure_monitor_through_the_masking():
    found = probe(APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1:9/")

    assert (found["tracer"], found["meter"]) == ("TracerProvider", "MeterProvider")
    assert found["tracing"]
    assert "AzureMonitorTraceExporter" in found["exporters"]
    # Recipients are masked before the exporting (batch) processor sees a span.
    assert found["processors"].index("MaskRecipients") < found["processors"].index("BatchSpanProcessor")
    assert found["log_filters"] and all("LogContext" in filters for filters in found["log_filters"])


def test_locally_the_console_exporter_is_used_only_when_asked_for():
    console = probe(TELEMETRY_EXPORTER="console")
    assert console["tracer"] == "TracerProvider" and "ConsoleSpanExporter" in console["exporters"]
    assert console["tracing"]

    quiet = probe(TELEMETRY_EXPORTER="none")
    assert quiet["tracer"] == "ProxyTracerProvider" and quiet["processors"] == []
    # Nothing would record them: per-report spans are skipped, not opened as no-ops.
    assert not quiet["tracing"]
    assert all("LogContext" in filters for filters in quiet["log_filters"])
