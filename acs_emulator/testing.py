"""Test helpers: run the emulator, and a webhook that records what it receives, each with uvicorn
in a background thread on a free port.

::

    with running_webhook_recorder() as (webhook_url, events):
        with running_emulator(EmulatorConfig(webhook_url=webhook_url, report_delay_ms=50)) as base_url:
            ...  # EmailClient(base_url, AzureKeyCredential(DEFAULT_ACCESS_KEY)) ...
            events.wait_for(1)
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .app import create_app
from .config import EmulatorConfig


def _bound_socket(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, ready_path: str | None = None, startup_timeout_s: float = 10.0
) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a daemon thread; yields ``http://host:port``.

    ``port=0`` picks a free port (the socket is bound before uvicorn starts, so there is no race).
    """
    sock = _bound_socket(host, port)
    actual_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2, access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{actual_port}", daemon=True
    )
    thread.start()
    base_url = f"http://{host}:{actual_port}"
    deadline = time.monotonic() + startup_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {base_url}")
            time.sleep(0.01)
        if ready_path is not None:
            while True:
                try:
                    if httpx.get(base_url + ready_path, timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{base_url}{ready_path} did not answer 200")
                time.sleep(0.02)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


@contextlib.contextmanager
def running_emulator(config: EmulatorConfig | None = None, *, port: int = 0) -> Iterator[str]:
    """Run the ACS emulator; yields its base URL (the SDK endpoint), e.g. ``http://127.0.0.1:54321``.

    ``config.host`` is used; ``config.port`` is ignored in favour of ``port`` (0 = a free port), so
    tests never collide with an emulator a developer runs on 7072. Inspect and steer it through
    the HTTP control API (``/emulator/messages``, ``/emulator/faults``, ``/emulator/requests``).
    """
    config = config or EmulatorConfig()
    app = create_app(config)
    with serve_in_thread(app, host=config.host, port=port, ready_path="/emulator/health") as base_url:
        yield base_url


@dataclass
class RecordedRequest:
    headers: dict[str, str]
    body: Any
    status_code: int
    #: ``time.monotonic()`` when the POST arrived.
    received_at: float = field(default_factory=time.monotonic)


class RecordedEvents(list):
    """The events the recorder received (flattened from the posted arrays, in arrival order).

    ``requests`` keeps every POST (headers lower-cased, parsed body, the status answered).
    ``status_code`` is what the recorder answers; set it to e.g. 503 to make the emulator retry
    (events answered with a non-2xx status are not added to the list). ``answer``, when set, makes
    a 2xx answer carry ``answer(body)`` as JSON (else the body is empty).
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[RecordedRequest] = []
        self.status_code = 200
        self.answer: Callable[[Any], Any] | None = None
        self._cond = threading.Condition()

    def _record(self, headers: dict[str, str], body: Any) -> int:
        with self._cond:
            status = self.status_code
            self.requests.append(RecordedRequest(headers, body, status))
            if 200 <= status < 300:
                if isinstance(body, list):
                    self.extend(body)
                else:
                    self.append(body)
            self._cond.notify_all()
            return status

    def wait_for(
        self,
        count: int = 1,
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` events (matching ``where``) arrived; return the matching ones.
        Raises ``AssertionError`` on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                matching = [e for e in self if where is None or where(e)]
                if len(matching) >= count:
                    return matching
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} event(s), got {len(matching)} within {timeout_s} s")
                self._cond.wait(left)

    def matching(self, where: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self if where(e)]

    def clear(self) -> None:
        with self._cond:
            super().clear()
            self.requests.clear()
            self.answer = None


@contextlib.contextmanager
def running_webhook_recorder(
    *, path: str = "/api/events", host: str = "127.0.0.1"
) -> Iterator[tuple[str, RecordedEvents]]:
    """Run a tiny webhook that records POSTed Event Grid arrays; yields ``(url, events)``.

    It answers Event Grid's ``SubscriptionValidation`` handshake like a real endpoint would.
    """
    events = RecordedEvents()
    app = FastAPI()

    @app.post(path)
    async def receive(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("aeg-event-type") == "SubscriptionValidation" and isinstance(body, list) and body:
            return JSONResponse({"validationResponse": body[0].get("data", {}).get("validationCode")})
        status = events._record(headers, body)
        answer = events.answer
        if answer is not None and 200 <= status < 300:
            return JSONResponse(answer(body), status_code=status)
        return Response(status_code=status)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    with serve_in_thread(app, host=host, ready_path="/health") as base_url:
        yield base_url + path, events
