"""Dependencies point inward: the domain and the service layer know no technology."""

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / "shared"
FORBIDDEN = ("azure", "fastapi", "starlette", "sqlite3", "httpx", "uvicorn")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level
            names.add(prefix + (node.module or ""))
    return names


def test_the_domain_imports_no_telemetry_and_the_service_layer_only_the_vendor_neutral_api():
    """The service layer records spans and metrics through the OpenTelemetry API (a no-op until a
    process installs an SDK); which SDK and exporter is the business of ``shared/telemetry.py``."""
    domain = {name for path in (SHARED / "domain").rglob("*.py") for name in imported_modules(path)}
    service = {name for path in (SHARED / "service").rglob("*.py") for name in imported_modules(path)}
    assert not {name for name in domain if name.startswith("opentelemetry") or "telemetry" in name}
    assert {name for name in service if name.startswith("opentelemetry")} <= {"opentelemetry", "opentelemetry.context", "opentelemetry.trace"}
    assert not {name for name in service if name.lstrip(".") == "telemetry"}


@pytest.mark.parametrize("layer", ["domain", "service"])
def test_the_inner_layers_import_no_technology(layer):
    offenders = {
        f"{path.relative_to(SHARED)}: {name}"
        for path in (SHARED / layer).rglob("*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN or "adapters" in name or "entrypoints" in name
    }
    assert not offenders


def test_only_bootstrap_reads_settings_and_builds_sdk_clients():
    builders = {
        str(path.relative_to(SHARED))
        for path in SHARED.rglob("*.py")
        if any(word in path.read_text() for word in ("load_settings(", "EmailClient(", "SmsClient(", "DefaultAzureCredential("))
    }
    assert builders <= {"bootstrap.py", "config.py"}
