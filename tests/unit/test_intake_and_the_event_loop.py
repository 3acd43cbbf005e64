"""Where the intake routes write the ledger and the queue: off the event loop when the stores are
across a network (Table Storage, Service Bus), so one slow write never stalls the worker's other
requests; on the loop when they are files on this machine (the local stack), where a write is
cheaper than the hand-off to a worker thread."""

import asyncio
import threading

import httpx
import pytest

from shared.entrypoints.api import create_api

SENDER = {"Authorization": "Bearer test-sender"}
EMAIL = {"channel": "email", "to": ["ann@example.com"], "subject": "Hi", "text": "Hello"}


class SlowLedger:
    """Wraps a ledger; ``add`` and ``add_many`` wait until released, as a store that has stopped
    answering."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def _hang(self) -> None:
        self.entered.set()
        assert self.release.wait(10), "the test never released the ledger"

    def add(self, notification):
        self._hang()
        return self._inner.add(notification)

    def add_many(self, notifications):
        self._hang()
        return self._inner.add_many(notifications)

    def __getattr__(self, name):
        return getattr(self._inner, name)


async def _health_while_a_write_hangs(services, route: str, body) -> int:
    slow = SlowLedger(services.ledger)
    services.ledger = slow
    transport = httpx.ASGITransport(app=create_api(lambda: services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=10) as client:
        submit = asyncio.create_task(client.post(route, json=body, headers=SENDER))
        assert await asyncio.get_running_loop().run_in_executor(None, slow.entered.wait, 5)
        try:
            health = await asyncio.wait_for(client.get("/api/health"), timeout=2)
        finally:
            slow.release.set()
        assert (await submit).status_code in (200, 202)
        return health.status_code


@pytest.mark.parametrize(
    "route, body", [("/api/notifications", EMAIL), ("/api/notifications/batch", {"notifications": [EMAIL]})]
)
def test_a_hanging_remote_store_does_not_stall_other_requests(faked_services, route, body):
    faked_services.stores_in_process = False

    assert asyncio.run(_health_while_a_write_hangs(faked_services, route, body)) == 200


def test_the_local_stack_writes_its_files_on_the_event_loop(faked_services):
    faked_services.stores_in_process = True
    on_loop: list[bool] = []
    real_add_many = faked_services.ledger.add_many

    def add_many(notifications):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real_add_many(notifications)

    faked_services.ledger.add_many = add_many

    async def submit() -> int:
        transport = httpx.ASGITransport(app=create_api(lambda: faked_services))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.post("/api/notifications", json=EMAIL, headers=SENDER)).status_code

    assert asyncio.run(submit()) == 202
    assert on_loop == [True]
