"""How many point reads and conditional writes a second Azurite's Table service serves here, with
each style of client, and who burns the CPU: Azurite (one Node process) or the Python client.

    .venv/bin/python bench/azurite_ceiling.py [--seconds 3] [--entities 1024] [--only raw-async,sdk-sync]

Setup (not timed): Azurite started in memory exactly as the tests and ``bench/report_ingest.py``
start it (``tests/azurite.py``), one table of ``--entities`` entities, each its own partition and
about the size of a sent notification's entity (a 2 KB JSON document and a few columns).

Timed, for ``--seconds`` each, one client style at a time (worker i of N takes entities i, i + N,
i + 2N, ..., so no two workers race for one entity):

* ``sdk-sync``: ``azure-data-tables`` (requests transport) in a loop on one thread;
* ``sdk-threads-shared``: 8 threads on one client (what ``TableStore.map`` does);
* ``sdk-threads-own``: N threads, each with its own client and ``requests`` session;
* ``sdk-aio``: ``azure.data.tables.aio`` over aiohttp, N requests in flight (needs aiohttp);
* ``sdk-or15``: reads only, 15 partitions a query (``PartitionKey eq .. or ..``), counted per entity;
  Azurite evaluates such a filter against every entity of the table, so it slows as the table grows;
* ``raw-async``: hand-written HTTP/1.1 on N keep-alive asyncio connections, each request signed
  with the account key (SharedKey) ahead of the timed part: what Azurite serves when the client
  costs next to nothing.

Each style reads (GET one entity) and then writes (PUT with ``If-Match`` on the ETag just read,
what ``save_many`` does). Beside requests per second it prints the CPU each process used, per
request and in per cent of one core: Node at ~100 % means Azurite is the ceiling, Python at ~100 %
the client; 1 s / (CPU per request) is what each process could serve with a core to itself.
``psutil`` comes with the app's telemetry exporter; ``sdk-aio`` needs ``aiohttp`` (bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Callable

import psutil
import requests
from azure.core import MatchConditions
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import azurite  # noqa: E402

TABLE = "ceiling"
#: The RowKey of every entity: "" as the ledger's notifications had before ids were time-ordered
#: (older ids still do), or (``--distinct-row-keys``) the PartitionKey again, to show what
#: Azurite's lookup costs when RowKeys tell entities apart.
ROW_KEY: Callable[[str], str] = lambda key: ""
API_VERSION = "2019-02-02"


def _doc(i: int) -> str:
    return json.dumps({
        "id": str(uuid.UUID(int=i)), "channel": "email", "status": "sent", "padding": "x" * 1800,
        "recipients": [{"address": f"user{i}@example.com", "status": "sent"}],
    })


def seed(client: TableClient, count: int) -> list[str]:
    keys = [str(uuid.UUID(int=i + 1, version=4)) for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.upsert_entity({
            "PartitionKey": keys[i], "RowKey": ROW_KEY(keys[i]), "version": 1, "status": "sent", "doc0": _doc(i),
        }), range(count)))
    return keys


def own_client(endpoint: str) -> TableClient:
    session = requests.Session()
    session.trust_env = False
    return TableServiceClient.from_connection_string(
        endpoint, transport=RequestsTransport(session=session, session_owner=False)
    ).get_table_client(TABLE)


class Cpu:
    """CPU seconds of this process and of Azurite between start and stop, as % of one core."""

    def __init__(self, node: psutil.Process) -> None:
        self._me, self._node = psutil.Process(), node

    def __enter__(self) -> "Cpu":
        self._t0 = time.perf_counter()
        self._c0 = [sum(p.cpu_times()[:2]) for p in (self._me, self._node)]
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t0
        used = [sum(p.cpu_times()[:2]) - c for p, c in zip((self._me, self._node), self._c0)]
        self.python, self.node = (100 * u / self.wall for u in used)


def report(name: str, done: int, cpu: Cpu) -> dict:
    rate = done / cpu.wall
    # CPU per request is what a busy, shared machine distorts least: one core's worth of it is the
    # most each process can do (Node runs JavaScript on one thread, Python holds the GIL).
    py_us, node_us = (10_000 * c / rate for c in (cpu.python, cpu.node))
    print(f"{name:<24} {rate:>6,.0f} requests/s  CPU per request: python {py_us:5.0f} us, azurite {node_us:5.0f} us"
          f"  (busy: python {cpu.python:3.0f} %, azurite {cpu.node:3.0f} %)", flush=True)
    return {"style": name, "requests_per_s": round(rate), "python_us": round(py_us), "azurite_us": round(node_us)}


def read_write(client: TableClient, key: str) -> int:
    entity = client.get_entity(key, ROW_KEY(key))
    entity["version"] += 1
    client.update_entity(entity, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                         match_condition=MatchConditions.IfNotModified)
    return 2


def or_query(client: TableClient, keys: list[str]) -> int:
    """The entities of up to 15 partitions in one query (15 is Table Storage's limit of discrete
    comparisons in a filter); counted as one request per entity it returns, to compare with reads."""
    names = {f"k{i}": k for i, k in enumerate(keys)}
    found = list(client.query_entities(" or ".join(f"PartitionKey eq @{p}" for p in names), parameters=names))
    assert len(found) == len(keys), len(found)
    return len(found)


def threads(name: str, clients: list[TableClient], keys: list[str], seconds: float, node: psutil.Process,
            query: bool = False) -> dict:
    stop = time.perf_counter() + seconds
    counts = [0] * len(clients)

    def worker(i: int) -> None:
        n, client = 0, clients[i]
        while time.perf_counter() < stop:
            if query:
                start = (i + n * len(clients)) * 15 % len(keys)
                counts[i] += or_query(client, keys[start : start + 15])
            else:
                counts[i] += read_write(client, keys[(i + n * len(clients)) % len(keys)])
            n += 1

    with Cpu(node) as cpu:
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(len(clients))]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return report(name, sum(counts), cpu)


async def sdk_aio(endpoint: str, keys: list[str], seconds: float, inflight: int, node: psutil.Process) -> dict:
    from azure.data.tables.aio import TableServiceClient as AsyncService

    async with AsyncService.from_connection_string(endpoint) as service:
        client = service.get_table_client(TABLE)
        stop = time.perf_counter() + seconds
        done = 0

        async def worker(i: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < stop:
                key = keys[(i + n * inflight) % len(keys)]
                entity = await client.get_entity(key, ROW_KEY(key))
                entity["version"] += 1
                await client.update_entity(entity, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                                           match_condition=MatchConditions.IfNotModified)
                done += 2
                n += 1

        await client.get_entity(keys[0], ROW_KEY(keys[0]))  # open the connection pool outside the timing
        with Cpu(node) as cpu:
            await asyncio.gather(*(worker(i) for i in range(inflight)))
    return report(f"sdk-aio x{inflight}", done, cpu)


def _signed(method: str, port: int, path: str, body: bytes = b"", etag: str | None = None) -> bytes:
    """One HTTP/1.1 request with a SharedKey signature (the scheme ``azure-data-tables`` uses)."""
    date = formatdate(usegmt=True)
    content_type = "application/json" if body else ""
    resource = f"/{azurite.ACCOUNT}/{azurite.ACCOUNT}/{path}"
    to_sign = f"{method}\n\n{content_type}\n{date}\n{resource}"
    key = base64.b64decode(azurite.ACCOUNT_KEY)
    signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
    headers = [
        f"{method} /{azurite.ACCOUNT}/{path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"x-ms-date: {date}",
        f"x-ms-version: {API_VERSION}", "Accept: application/json;odata=minimalmetadata",
        "DataServiceVersion: 3.0", f"Authorization: SharedKey {azurite.ACCOUNT}:{signature}",
        f"Content-Length: {len(body)}",
    ]
    if body:
        headers.append(f"Content-Type: {content_type}")
    if etag:
        headers.append(f"If-Match: {etag}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, dict, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


async def raw_async(port: int, keys: list[str], seconds: float, inflight: int, node: psutil.Process) -> dict:
    paths = [f"{TABLE}(PartitionKey='{k}',RowKey='{ROW_KEY(k)}')" for k in keys]
    reads = [_signed("GET", port, p) for p in paths]
    body = json.dumps({"PartitionKey": "", "RowKey": "{row}", "version": 2, "status": "sent", "doc0": _doc(7)}).encode()
    stop = time.perf_counter() + seconds
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        try:
            while time.perf_counter() < stop:
                k = (i + n * inflight) % len(keys)
                status, headers, _ = await _exchange(reader, writer, reads[k])
                assert status == 200, status
                entity = body.replace(b'"PartitionKey": ""', f'"PartitionKey": "{keys[k]}"'.encode(), 1).replace(
                    b'"RowKey": "{row}"', f'"RowKey": "{ROW_KEY(keys[k])}"'.encode(), 1)
                # Signing is a few microseconds; done here it is part of the client's honest cost.
                status, _, answer = await _exchange(
                    reader, writer, _signed("PUT", port, paths[k], entity, headers["etag"])
                )
                assert status == 204, (status, answer[:200])
                done += 2
                n += 1
        finally:
            writer.close()

    with Cpu(node) as cpu:
        await asyncio.gather(*(worker(i) for i in range(inflight)))
    return report(f"raw-async x{inflight}", done, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--entities", type=int, default=1024,
                        help="a multiple of every concurrency, so no two workers write the same entity")
    parser.add_argument("--distinct-row-keys", action="store_true",
                        help="RowKey = PartitionKey instead of the empty RowKey of the ledger's older notifications")
    parser.add_argument("--only", default="", help="comma-separated style prefixes to run (default: all)")
    args = parser.parse_args()
    wanted = [s for s in args.only.split(",") if s]
    if args.distinct_row_keys:
        global ROW_KEY
        ROW_KEY = lambda key: key  # noqa: E731

    def runs(style: str) -> bool:
        return not wanted or any(style.startswith(w) for w in wanted)

    work = Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    with azurite.running("table", work) as port:
        node = next(p for p in psutil.Process().children(recursive=True) if "node" in p.name())
        endpoint = azurite.connection_string(port)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, Python "
              f"{platform.python_version()}, Azurite {_azurite_version()} on Node {_node_version(node)}")
        service = TableServiceClient.from_connection_string(endpoint)
        service.create_table_if_not_exists(TABLE)
        keys = seed(service.get_table_client(TABLE), args.entities)
        print(f"{len(keys)} entities of {len(_doc(1))} bytes of document; each line: read + conditional write pairs")
        results: list[dict] = []
        plan: list[tuple[str, Callable[[], dict]]] = [
            ("sdk-sync", lambda: threads("sdk-sync", [own_client(endpoint)], keys, args.seconds, node)),
            ("sdk-threads-shared", lambda: threads(
                "sdk-threads-shared x8", [own_client(endpoint)] * 8, keys, args.seconds, node)),
        ]
        for n in (8, 32):
            plan.append((f"sdk-threads-own", lambda n=n: threads(
                f"sdk-threads-own x{n}", [own_client(endpoint) for _ in range(n)], keys, args.seconds, node)))
        for n in (1, 8):
            plan.append(("sdk-or15", lambda n=n: threads(
                f"sdk-or15 x{n} (entities)", [own_client(endpoint) for _ in range(n)], keys, args.seconds, node, True)))
        for n in (1, 8, 32, 64):
            plan.append(("raw-async", lambda n=n: asyncio.run(raw_async(port, keys, args.seconds, n, node))))
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            print("sdk-aio: skipped (aiohttp is not installed)")
        else:
            for n in (8, 32, 64):
                plan.append(("sdk-aio", lambda n=n: asyncio.run(sdk_aio(endpoint, keys, args.seconds, n, node))))
        for style, measure in plan:
            if runs(style):
                results.append(measure())
    print("JSON " + json.dumps(results))


def _azurite_version() -> str:
    return json.loads((ROOT / "node_modules" / "azurite" / "package.json").read_text())["version"]


def _node_version(node: psutil.Process) -> str:
    import subprocess

    return subprocess.run([node.exe(), "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
