"""Azurite's Table service for the tests that run the Table Storage adapters against it.

``table_endpoint`` starts ``node_modules/.bin/azurite-table`` (installed by ``npm ci`` from the
repository's ``package-lock.json``) in memory on a free local port, waits until it answers, yields
a connection string for Azurite's well-known development account, and stops it. When
``AZURITE_TABLE_CONNECTION_STRING`` is set, that Azurite (or storage account) is used instead and
nothing is started. ``tests/conftest.py`` exposes it as the session fixture ``azurite_tables``.

``fresh_table_service`` gives one test a client and a table prefix no other test uses, and drops
that prefix's tables after the test, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient

ROOT = Path(__file__).resolve().parents[1]
CONNECTION_STRING_VARIABLE = "AZURITE_TABLE_CONNECTION_STRING"

#: Azurite's fixed development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_START_TIMEOUT = 30.0


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int, path: str = "Tables") -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/{ACCOUNT}/{path}", timeout=1)
    except urllib.error.HTTPError:
        return True  # an unsigned request is refused (403), which is an answer
    except OSError:
        return False
    return True


@contextmanager
def running(service: str, workdir: Path) -> Iterator[int]:
    """Start ``node_modules/.bin/azurite-<service>`` (table or blob) in memory on a free port, wait
    until it answers, and yield the port; skips when Azurite is not installed."""
    binary = ROOT / "node_modules" / ".bin" / f"azurite-{service}"
    if not binary.exists():
        pytest.skip(f"Azurite is not installed (node_modules/.bin/azurite-{service}): run `npm ci`")
    port = _free_port()
    output = workdir / f"azurite-{service}.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                str(binary), "--inMemoryPersistence", f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port),
                # The SDKs may speak a newer API version than this Azurite release knows.
                "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent",
            ],
            cwd=workdir, stdout=sink, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(port, "Tables" if service == "table" else "?comp=list"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Azurite did not start on port {port}:\n{output.read_text(errors='replace')}")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def table_endpoint(workdir: Path) -> Iterator[str]:
    """A connection string to Azurite's Table service, running for the duration of the block."""
    given = os.environ.get(CONNECTION_STRING_VARIABLE)
    if given:
        yield given
        return
    with running("table", workdir) as port:
        yield connection_string(port)


def drop_tables(service: TableServiceClient, prefix: str) -> None:
    """Delete every table whose name starts with ``prefix``."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    names = service.query_tables("TableName ge @low and TableName lt @high", parameters={"low": prefix, "high": upper})
    for table in list(names):
        service.delete_table(table.name)


def fresh_table_service(request: pytest.FixtureRequest, **client_options) -> tuple[TableServiceClient, str]:
    """A client for the session's Azurite and a table prefix of this test's own; the prefix's
    tables are dropped when the test ends. ``client_options`` go to the client (for example
    ``raw_request_hook``)."""
    endpoint = request.getfixturevalue("azurite_tables")
    # Azurite is local: a proxy from the environment must not see its traffic (and skipping the
    # environment lookups requests makes on every call saves a good part of each call's cost).
    session = requests.Session()
    session.trust_env = False
    transport = RequestsTransport(session=session, session_owner=False)
    service = TableServiceClient.from_connection_string(endpoint, transport=transport, **client_options)
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def finish() -> None:
        try:
            drop_tables(service, prefix)
        finally:
            session.close()

    request.addfinalizer(finish)
    return service, prefix
