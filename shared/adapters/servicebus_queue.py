"""The queue port on Azure Service Bus: one queue, its dead-letter sub-queue, peek-lock receiving.

Why it looks the way it does:

* **Identity, not keys.** The ``ServiceBusClient`` is handed in. ``shared/bootstrap.py`` builds it
  from the fully qualified namespace and ``DefaultAzureCredential`` (the app's managed identity,
  holding *Azure Service Bus Data Sender* and *Data Receiver*), so no connection string exists in
  Azure and nothing here reads settings.
* **Message ids are the deduplication key.** Every message carries the caller's ``message_id``;
  the queue is created with duplicate detection, so a second send of the same id inside the
  window (a retried intake, a redelivered dispatch scheduling the same next attempt) is accepted
  and dropped by the broker. A replayed dead letter therefore needs a *new* id.
* **Backoff is a scheduled clone.** The Functions host abandons a message when the function
  raises, and Service Bus redelivers an abandoned message at once, with no delay, until
  ``maxDeliveryCount`` dead-letters it. So a retry is never an exception: the dispatcher sends a
  clone of the message with a new id and ``scheduled_enqueue_time_utc`` set to the backoff time,
  then returns normally and the host completes the original.

The SDK's handlers are not thread-safe (its README says so), while the local worker settles from a
pool of threads. Each handler therefore has one lock: one sender, one receiver for the queue and
one for its dead-letter sub-queue per instance, each created on first use and reused. The SDK
settles a message only through the receiver object that received it, so received SDK messages are
kept by lock token until they are settled or their lock runs out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusReceiver,
    ServiceBusSender,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    ServiceBusError,
    SessionLockLostError,
)

from ..domain.errors import LockLost
from ..service.ports import DeadLetteredMessage, OutgoingMessage, ReceivedMessage

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
#: Application property on a resubmitted dead letter: the message id of the one it replays.
REPLAY_OF = "replayOf"
#: Dead-letter reason for a message whose body is not a JSON object (no handler could read it).
MALFORMED_MESSAGE = "MalformedMessage"

# Service Bus has no "what is visible right now": every receive is a round trip that waits for
# the broker, so a zero wait is raised to this floor.
MIN_RECEIVE_WAIT_SECONDS = 1.0
# A long receive is split into calls of at most this long, releasing the receiver between them,
# so a settlement from another thread waits at most this long behind a receive.
RECEIVE_SLICE_SECONDS = 1.0
_PEEK_PAGE = 100
# Finding one dead letter means locking those in front of it; past this many, give up.
_DEAD_LETTER_SCAN_LIMIT = 2_000
_DEAD_LETTER_SCAN_BATCH = 100

# The broker writes these into a dead letter's application properties; they are reported as
# ``reason`` and ``description`` instead, and not carried into a replayed copy.
_BROKER_DEAD_LETTER_PROPERTIES = frozenset({"DeadLetterReason", "DeadLetterErrorDescription"})

_LOCK_LOST_ERRORS = (MessageLockLostError, SessionLockLostError, MessageAlreadySettled, MessageNotFoundError)


class _MalformedBody(ValueError):
    pass


@contextmanager
def _lock_errors(action: str, message_id: str | None) -> Iterator[None]:
    """Turn the SDK's "you no longer hold this message" failures into ``LockLost``.

    The SDK raises ``MessageLockLostError`` for an expired lock (checked before it calls the
    broker, and reported by the broker for a lock another receiver now holds), and
    ``MessageAlreadySettled`` or a bare ``ValueError`` (the receiver was shut down) when the
    message can no longer be settled through the receiver that holds it. All mean the same to a
    caller: the message will be delivered again, and this copy must be dropped. Everything else
    (connection, authorisation) propagates unchanged.
    """
    try:
        yield
    except _LOCK_LOST_ERRORS as exc:
        raise LockLost(f"Could not {action} message {message_id}: {exc}") from exc
    except ValueError as exc:
        raise LockLost(f"Could not {action} message {message_id}: {exc}") from exc


def _is_shut_down(exc: ValueError) -> bool:
    # The SDK raises a plain ValueError ("The handler has already been shutdown...") from a
    # closed sender or receiver; it has no exception type of its own.
    return not isinstance(exc, ServiceBusError) and "shutdown" in str(exc).lower()


# ---------------------------------------------------------------------------- conversions


def body_bytes(message: ServiceBusReceivedMessage) -> bytes:
    """A received message's body as bytes, whichever AMQP body type its sender used."""
    return _body_bytes(message)


def application_properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """A received message's application properties, keys and string values decoded."""
    return _properties(message)


def _body_bytes(message: ServiceBusReceivedMessage) -> bytes:
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (dict, list)):  # an AMQP value body from another producer
        return json.dumps(body).encode("utf-8")
    # A data body arrives as an iterable of sections; ours is always one section.
    return b"".join(section if isinstance(section, bytes) else bytes(section) for section in body or ())


def _json_body(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    raw = _body_bytes(message)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _MalformedBody(f"body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise _MalformedBody(f"body is JSON but not an object ({type(body).__name__})")
    return body


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    # The SDK returns received property keys and string values as bytes.
    return {
        _text(key): _text(value)
        for key, value in (message.application_properties or {}).items()
        if _text(key) not in _BROKER_DEAD_LETTER_PROPERTIES
    }


def _received(message: ServiceBusReceivedMessage, body: dict[str, Any]) -> ReceivedMessage:
    return ReceivedMessage(
        body=body,
        message_id=message.message_id,
        application_properties=_properties(message),
        # On the wire a delivery count is the number of *earlier* deliveries (AMQP), so the first
        # receive reads 0; the .NET SDK and the Functions host add one, and so does the port.
        delivery_count=(message.delivery_count or 0) + 1,
        enqueued_at=message.enqueued_time_utc,
        sequence_number=message.sequence_number,
        lock_token=str(message.lock_token),
        locked_until=message.locked_until_utc,
        correlation_id=message.correlation_id,
    )


def _dead_lettered(message: ServiceBusReceivedMessage) -> DeadLetteredMessage:
    try:
        body = _json_body(message)
    except _MalformedBody:
        # Listing must not fail on the very messages that were dead-lettered for their body.
        body = {"raw": _body_bytes(message).decode("utf-8", errors="replace")}
    return DeadLetteredMessage(
        body=body,
        message_id=message.message_id,
        application_properties=_properties(message),
        # A peeked message carries the broker's count as it is (no +1, unlike a received one).
        delivery_count=message.delivery_count or 0,
        enqueued_at=message.enqueued_time_utc,
        sequence_number=message.sequence_number,
        reason=message.dead_letter_reason or "",
        description=message.dead_letter_error_description or "",
        # Service Bus records no time of dead-lettering on the message. Its enqueued time is the
        # closest it offers; for a message the broker moved, that may be the original enqueue
        # time, i.e. no later than the real moment it was dead-lettered.
        dead_lettered_at=message.enqueued_time_utc,
    )


def _outgoing(message: OutgoingMessage) -> ServiceBusMessage:
    scheduled = message.scheduled_at
    if scheduled is not None:
        if scheduled.tzinfo is None:
            raise ValueError("scheduled_at must be timezone-aware.")
        scheduled = scheduled.astimezone(timezone.utc)
    return ServiceBusMessage(
        json.dumps(message.body, separators=(",", ":")).encode("utf-8"),
        message_id=message.message_id,
        application_properties=dict(message.application_properties) or None,
        scheduled_enqueue_time_utc=scheduled,
        content_type=JSON_CONTENT_TYPE,
        correlation_id=message.correlation_id,
    )


def _replay_copy(dead: ServiceBusReceivedMessage, new_message_id: str) -> ServiceBusMessage:
    return ServiceBusMessage(
        _body_bytes(dead),  # byte for byte: a replay must not reinterpret what it resubmits
        message_id=new_message_id,
        application_properties={**_properties(dead), REPLAY_OF: dead.message_id},
        content_type=dead.content_type or JSON_CONTENT_TYPE,
        correlation_id=dead.correlation_id,
    )


# ---------------------------------------------------------------------------- adapter


class ServiceBusQueue:
    """One Service Bus queue; implements ``MessagePublisher`` and ``MessageConsumer``.

    Contract, as far as it differs from the port's docstring:

    * ``receive`` waits at least ``MIN_RECEIVE_WAIT_SECONDS`` (a receive is a round trip) and may
      return fewer than ``max_messages`` even when more are waiting. A message whose body is not
      a JSON object is dead-lettered with ``MalformedMessage`` instead of being returned.
    * ``MaxDeliveryCountExceeded``, the lock duration and the duplicate-detection window are the
      queue's own settings (infrastructure), not options of this class.
    * ``dead_letters`` browses the dead-letter sub-queue in its sequence order, without locking.
    * ``replay_dead_letter`` and ``remove_dead_letter`` are for operator tools; ``active_count``
      and ``dead_letter_count`` browse every message, so they are for operators and tests only.

    Closing it closes its sender and receivers, never the client (bootstrap owns that).
    """

    def __init__(self, client: ServiceBusClient, queue_name: str) -> None:
        self._client = client
        self.queue_name = queue_name
        self._sender: ServiceBusSender | None = None
        self._sender_lock = threading.Lock()
        self._receiver: ServiceBusReceiver | None = None
        self._receiver_lock = threading.Lock()
        # lock token -> (the receiver that received it, the SDK message), until settled.
        self._held: dict[str, tuple[ServiceBusReceiver, ServiceBusReceivedMessage]] = {}
        self._dead_letter_receiver: ServiceBusReceiver | None = None
        self._dead_letter_lock = threading.Lock()

    # ------------------------------------------------------------------ handlers

    def _open_sender(self) -> ServiceBusSender:
        # Callers hold _sender_lock. The sender opens its link on the first send.
        if self._sender is None:
            self._sender = self._client.get_queue_sender(queue_name=self.queue_name)
        return self._sender

    def _open_receiver(self) -> ServiceBusReceiver:
        # Callers hold _receiver_lock. Opened at once (``__enter__`` opens the link with the SDK's
        # retries) so the first receive's short wait is not spent on connecting.
        if self._receiver is None:
            receiver = self._client.get_queue_receiver(
                queue_name=self.queue_name, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
            )
            self._receiver = receiver.__enter__()
        return self._receiver

    def _open_dead_letter_receiver(self) -> ServiceBusReceiver:
        # Callers hold _dead_letter_lock.
        if self._dead_letter_receiver is None:
            receiver = self._client.get_queue_receiver(
                queue_name=self.queue_name,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            )
            self._dead_letter_receiver = receiver.__enter__()
        return self._dead_letter_receiver

    def close(self) -> None:
        """Close the sender and receivers (unsettled messages come back when their locks expire)."""
        with self._sender_lock:
            sender, self._sender = self._sender, None
            _close_quietly(sender)
        with self._receiver_lock:
            receiver, self._receiver = self._receiver, None
            self._held.clear()
            _close_quietly(receiver)
        with self._dead_letter_lock:
            receiver, self._dead_letter_receiver = self._dead_letter_receiver, None
            _close_quietly(receiver)

    def __enter__(self) -> ServiceBusQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ publisher

    def send_many(self, messages: list[OutgoingMessage]) -> None:
        # Scheduled and immediate messages take different calls in the SDK; one at a time keeps
        # each message's id, properties and schedule exactly as send() sets them.
        for message in messages:
            self.send(message)

    def send(self, message: OutgoingMessage) -> None:
        self._send(lambda: _outgoing(message))

    def _send(self, build: Callable[[], ServiceBusMessage]) -> None:
        # ``build`` makes a fresh SDK message per attempt: sending one stamps it (tracing).
        first = build()  # outside the lock: a message that cannot be built needs no sender
        with self._sender_lock:
            try:
                self._open_sender().send_messages(first)
            except ValueError as exc:
                if not _is_shut_down(exc):
                    raise
                # Closed under us (``close`` from another thread, or the client was closed).
                # The SDK reconnects after connection errors itself; this covers only a sender
                # that cannot be used again. Once: a second failure is a real one.
                log.info("Service Bus sender for queue %s was closed; opening a new one", self.queue_name)
                sender, self._sender = self._sender, None
                _close_quietly(sender)
                self._open_sender().send_messages(build())

    # ------------------------------------------------------------------ consumer

    def receive(self, max_messages: int = 1, max_wait: float = 0.0) -> list[ReceivedMessage]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1.")
        deadline = time.monotonic() + max(max_wait, MIN_RECEIVE_WAIT_SECONDS)
        while (remaining := deadline - time.monotonic()) > 0:
            with self._receiver_lock:
                receiver = self._open_receiver()
                self._forget_expired_locks()
                batch = receiver.receive_messages(
                    max_message_count=max_messages, max_wait_time=min(remaining, RECEIVE_SLICE_SECONDS)
                )
                received = self._hold(receiver, batch)
            if received:
                return received
        return []

    def _hold(self, receiver: ServiceBusReceiver, batch: Iterable[ServiceBusReceivedMessage]) -> list[ReceivedMessage]:
        received = []
        for sdk_message in batch:
            try:
                message = _received(sdk_message, _json_body(sdk_message))
            except _MalformedBody as exc:
                self._dead_letter_malformed(receiver, sdk_message, str(exc))
                continue
            self._held[message.lock_token] = (receiver, sdk_message)
            received.append(message)
        return received

    def _dead_letter_malformed(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage, why: str) -> None:
        # No handler can read it, so delivering it again could only fail again.
        log.warning(
            "Dead-lettering message %s (sequence %s) on queue %s: %s",
            message.message_id, message.sequence_number, self.queue_name, why,
        )
        try:
            with _lock_errors("dead-letter", message.message_id):
                receiver.dead_letter_message(message, reason=MALFORMED_MESSAGE, error_description=why)
        except Exception:  # best effort: the rest of the batch is still to be handed out
            log.warning("Could not dead-letter message %s; it will be delivered again", message.message_id, exc_info=True)

    def _forget_expired_locks(self) -> None:
        # Callers hold _receiver_lock. Messages nobody settled would otherwise pile up here; their
        # locks are gone, so settling them raises LockLost either way.
        now = datetime.now(timezone.utc)
        for token, (_, sdk_message) in list(self._held.items()):
            locked_until = sdk_message.locked_until_utc
            if locked_until is not None and locked_until <= now:
                del self._held[token]

    def complete(self, message: ReceivedMessage) -> None:
        self._settle(message, "complete", lambda receiver, m: receiver.complete_message(m))

    def abandon(self, message: ReceivedMessage) -> None:
        self._settle(message, "abandon", lambda receiver, m: receiver.abandon_message(m))

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        self._settle(
            message,
            "dead-letter",
            lambda receiver, m: receiver.dead_letter_message(m, reason=reason, error_description=description),
        )

    def renew_lock(self, message: ReceivedMessage) -> ReceivedMessage:
        locked_until = self._settle(
            message, "renew the lock on", lambda receiver, m: receiver.renew_message_lock(m), settles=False
        )
        return replace(message, locked_until=locked_until)

    def _settle(
        self,
        message: ReceivedMessage,
        action: str,
        settle: Callable[[ServiceBusReceiver, ServiceBusReceivedMessage], Any],
        *,
        settles: bool = True,
    ) -> Any:
        with self._receiver_lock:
            held = self._held.get(message.lock_token)
            if held is None:
                raise LockLost(
                    f"Could not {action} message {message.message_id}: lock token {message.lock_token} is not held"
                    " (settled already, expired, or received by another instance)."
                )
            receiver, sdk_message = held
            try:
                with _lock_errors(action, message.message_id):
                    outcome = settle(receiver, sdk_message)
            except LockLost:
                del self._held[message.lock_token]
                raise
            # Any other failure (connection, authorisation) propagates and keeps the message
            # held, so the caller may try again while the lock lasts.
            if settles:
                del self._held[message.lock_token]
            return outcome

    # ------------------------------------------------------------------ dead letters

    def dead_letters(self, limit: int = 100) -> list[DeadLetteredMessage]:
        with self._dead_letter_lock:
            peeked = _peek(self._open_dead_letter_receiver(), limit)
        return [_dead_lettered(m) for m in peeked]

    def replay_dead_letter(self, sequence_number: int, new_message_id: str) -> bool:
        """Resubmit one dead letter to the queue as ``new_message_id``, then remove it.

        The copy keeps the body and application properties and adds ``replayOf`` (the dead
        letter's message id). The dead letter is completed only after the copy is durably
        enqueued, so a failed send leaves it where it was. False when there is no such dead
        letter, another receiver holds it, or it lies beyond the first few thousand.

        Raises ``LockLost`` in the one awkward case: the copy was sent but the dead letter's lock
        was lost before it could be removed. Replaying it again with the same ``new_message_id``
        inside the duplicate-detection window is then dropped by the broker, so it is safe.
        """
        with self._dead_letter_lock:
            receiver = self._open_dead_letter_receiver()
            dead = self._lock_dead_letter(receiver, sequence_number)
            if dead is None:
                return False
            try:
                self._send(lambda: _replay_copy(dead, new_message_id))
            except BaseException:
                _abandon_quietly(receiver, [dead])
                raise
            with _lock_errors("remove the replayed dead letter", dead.message_id):
                receiver.complete_message(dead)
        log.info(
            "Replayed dead letter %s (sequence %d) on queue %s as message %s",
            dead.message_id, sequence_number, self.queue_name, new_message_id,
        )
        return True

    def remove_dead_letter(self, sequence_number: int) -> bool:
        """Delete one dead letter; False when there is no such dead letter (or another receiver holds it)."""
        with self._dead_letter_lock:
            receiver = self._open_dead_letter_receiver()
            dead = self._lock_dead_letter(receiver, sequence_number)
            if dead is None:
                return False
            with _lock_errors("remove dead letter", dead.message_id):
                receiver.complete_message(dead)
        return True

    def _lock_dead_letter(self, receiver: ServiceBusReceiver, sequence_number: int) -> ServiceBusReceivedMessage | None:
        """Peek-lock the dead letter with this sequence number, or None.

        Service Bus cannot receive one given message (``receive_deferred_messages`` only finds
        deferred ones), so this receives in sequence order, holding what comes before the wanted
        message and abandoning it afterwards. A peek first keeps the common miss free of locks.
        """
        peeked = _peek(receiver, 1, start=sequence_number)
        if not peeked or peeked[0].sequence_number != sequence_number:
            return None
        wanted: ServiceBusReceivedMessage | None = None
        passed: list[ServiceBusReceivedMessage] = []
        try:
            while wanted is None and len(passed) < _DEAD_LETTER_SCAN_LIMIT:
                batch = receiver.receive_messages(
                    max_message_count=_DEAD_LETTER_SCAN_BATCH, max_wait_time=MIN_RECEIVE_WAIT_SECONDS
                )
                if not batch:
                    break
                for message in batch:
                    if wanted is None and message.sequence_number == sequence_number:
                        wanted = message
                    else:
                        passed.append(message)
                if wanted is None and any(m.sequence_number > sequence_number for m in batch):
                    break  # gone past it: another receiver holds it, or it was just removed
        finally:
            _abandon_quietly(receiver, passed)
        if wanted is None:
            log.warning(
                "Dead letter with sequence %d on queue %s could not be locked (held elsewhere, removed,"
                " or more than %d dead letters in front of it)",
                sequence_number, self.queue_name, _DEAD_LETTER_SCAN_LIMIT,
            )
        return wanted

    # ------------------------------------------------------------------ operators and tests

    def active_count(self) -> int:
        """Messages in the queue, locked and scheduled ones included (browses them all)."""
        with self._receiver_lock:
            return len(_peek(self._open_receiver(), None))

    def dead_letter_count(self) -> int:
        with self._dead_letter_lock:
            return len(_peek(self._open_dead_letter_receiver(), None))


def _peek(receiver: ServiceBusReceiver, limit: int | None, *, start: int = 1) -> list[ServiceBusReceivedMessage]:
    """Browse from ``start`` in sequence order, up to ``limit`` messages (None: all).

    The start is always passed: without it the SDK continues after the last message this
    receiver peeked *or received*, which would make listings skip messages.
    """
    found: list[ServiceBusReceivedMessage] = []
    next_sequence = start
    while limit is None or len(found) < limit:
        count = _PEEK_PAGE if limit is None else min(_PEEK_PAGE, limit - len(found))
        page = receiver.peek_messages(max_message_count=count, sequence_number=next_sequence)
        if not page:
            break
        found.extend(page)
        next_sequence = page[-1].sequence_number + 1
    return found


def _abandon_quietly(receiver: ServiceBusReceiver, messages: list[ServiceBusReceivedMessage]) -> None:
    for message in messages:
        try:
            receiver.abandon_message(message)
        except Exception:  # its lock runs out instead
            log.debug("Could not abandon message %s; its lock will expire", message.message_id, exc_info=True)


def _close_quietly(handler: ServiceBusSender | ServiceBusReceiver | None) -> None:
    if handler is None:
        return
    try:
        handler.close()
    except Exception:
        log.warning("Closing a Service Bus handler failed", exc_info=True)
