"""Group commit for the HTTP intake on the local stack.

Each accepted notification costs three write transactions (its ledger entry, its queue message, its
"queued" mark), and on SQLite the commit, not the row, is most of a small transaction's price. When
the ledger and the queue are files on this machine, the API writes them on the event loop (see
``create_api``), so while one request is being written, others arrive and wait for the loop. Those
are written together: the requests that are ready when the loop comes round share one
``record_notifications`` call, three transactions for all of them, exactly as the batch route
shares its writes. A request that arrives alone is written alone, with no added wait: the group
is flushed on the loop's next turn, not after a timer.

Each request keeps its own span, trace context, idempotency check and outcome; only the writes are
shared. A ledger or queue failure fails every request of that group, as it would have failed each
of them one at a time.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ..domain.commands import SubmitNotification
from ..domain.errors import NotifyError
from ..domain.model import Notification
from ..service import handlers
from ..service.handlers import Submitted

Record = Callable[[list[tuple[SubmitNotification, Notification]]], list[Submitted]]


class GroupCommit:
    """``await group(cmd, candidate)``: the candidate recorded and queued with whatever other
    requests are waiting on the same turn of the event loop. Use from one event loop only."""

    def __init__(self, record: Record, *, max_group: int = 100) -> None:
        self._record = record
        self._max_group = max_group
        self._waiting: list[tuple[SubmitNotification, Notification, asyncio.Future[Submitted]]] = []

    async def __call__(self, cmd: SubmitNotification, candidate: Notification) -> tuple[Notification, bool]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Submitted] = loop.create_future()
        self._waiting.append((cmd, candidate, outcome))
        if len(self._waiting) == 1:
            loop.call_soon(self._flush)
        result = await outcome
        if isinstance(result, NotifyError):
            raise result
        return result

    def _flush(self) -> None:
        group, self._waiting = self._waiting[: self._max_group], self._waiting[self._max_group :]
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._flush)
        try:
            outcomes = self._record([(cmd, candidate) for cmd, candidate, _ in group])
        except Exception as exc:  # the ledger or the queue: every request of the group fails with it
            for _, _, outcome in group:
                if not outcome.done():
                    outcome.set_exception(exc)
            return
        for (_, _, outcome), result in zip(group, outcomes):
            if not outcome.done():  # a request whose client went away is cancelled, its write stands
                outcome.set_result(result)


async def submit(group: GroupCommit, cmd: SubmitNotification, **ports) -> tuple[Notification, bool]:
    """``handlers.submit_notification`` with its writes shared through ``group``: the request's span,
    its candidate (with its trace context) and its accepted log line stay in the request's own
    context; ``ports`` are the attachment store and the clock."""
    with handlers.submitting(cmd) as span:
        candidate = handlers.prepare_notification(cmd, **ports)
        stored, created = await group(cmd, candidate)
        handlers.submitted(span, stored, created)
    return stored, created
