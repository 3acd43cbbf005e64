"""The service's one error tree.

Every failure a handler can see is one of these. Adapters translate vendor exceptions
(``azure.core``, ``sqlite3``) at their boundary, so nothing below ``shared.adapters`` leaks out.

    NotifyError
    ├── InvalidRequest            bad input; answered 422 with a list of field errors
    ├── IdempotencyConflict       same Idempotency-Key, different body; answered 409
    ├── NotificationNotFound      answered 404
    ├── ConcurrencyConflict       an optimistic write lost a race; the caller re-reads and retries
    ├── LockLost                  a queue message's peek-lock expired before it was settled
    ├── AttachmentNotFound        the attachment store holds nothing under a reference
    ├── StatusPublishFailed       a status event destination did not take a batch: the events stay
    │   │                         in the outbox and the relay tries again with backoff
    │   ├── StatusPublishRejected     the destination refuses these events (400, 413): retried
    │   │                             one by one, so one bad event cannot hold up the others
    │   └── StatusPublishForbidden    401/403: the identity lacks EventGrid Data Sender, or the
    │                                 endpoint is wrong; retried, and logged with what to check
    └── SendError                 ACS refused or could not be reached, or the send could not be made
        ├── TransientSendError    try again later (with backoff, honouring retry_after)
        │   ├── Throttled             429
        │   ├── ServiceUnavailable    5xx
        │   ├── SendTimeout           timeout or broken connection: ACS may have acted (ambiguous)
        │   └── AttachmentStoreUnavailable  the attachment store could not be reached (ACS was not
        │                                   called; at intake: answered 503)
        ├── PermanentSendError    sending again cannot help: dead-letter at once
        │   ├── RequestRejected       400: ACS found the payload invalid
        │   ├── PayloadTooLarge       413
        │   ├── SenderNotAllowed      unknown sender address or domain not verified
        │   ├── RecipientRefused      ACS refused one recipient (SMS per-recipient 400)
        │   └── AttachmentMissing     an attachment's content is gone from the store, or is not
        │                             what was accepted (its SHA-256 differs)
        └── ConfigurationError    401/403: wrong key or missing role; never retried in a hot loop,
                                  dead-lettered with what to fix, so a replay after the fix works

``SendError.reason`` is the short, stable code written into dead letters and the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass


class NotifyError(Exception):
    """Base of every error the service raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class InvalidRequest(NotifyError):
    def __init__(self, errors: list[FieldError], detail: str = "The request is not valid.") -> None:
        super().__init__(detail)
        self.errors = errors
        self.detail = detail


class IdempotencyConflict(NotifyError):
    def __init__(self, existing_id: str) -> None:
        super().__init__("Idempotency-Key was already used with a different request body.")
        self.existing_id = existing_id


class NotificationNotFound(NotifyError):
    pass


class ConcurrencyConflict(NotifyError):
    pass


class LockLost(NotifyError):
    pass


class AttachmentNotFound(NotifyError):
    pass


class StatusPublishFailed(NotifyError):
    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after


class StatusPublishRejected(StatusPublishFailed):
    pass


class StatusPublishForbidden(StatusPublishFailed):
    pass


class SendError(NotifyError):
    reason = "SendFailed"

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code

    def describe(self) -> str:
        parts = [self.reason]
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.code:
            parts.append(self.code)
        return f"{' / '.join(parts)}: {self.message}"


class TransientSendError(SendError):
    reason = "TransientFailure"
    #: True when the request may have reached ACS, so a retry must look before it sends again.
    ambiguous = False

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Throttled(TransientSendError):
    reason = "Throttled"


class ServiceUnavailable(TransientSendError):
    reason = "ServiceUnavailable"
    ambiguous = True


class SendTimeout(TransientSendError):
    reason = "SendTimeout"
    ambiguous = True


class AttachmentStoreUnavailable(TransientSendError):
    reason = "AttachmentStoreUnavailable"


class PermanentSendError(SendError):
    reason = "PermanentFailure"


class RequestRejected(PermanentSendError):
    reason = "RequestRejected"


class PayloadTooLarge(PermanentSendError):
    reason = "PayloadTooLarge"


class SenderNotAllowed(PermanentSendError):
    reason = "SenderNotAllowed"


class RecipientRefused(PermanentSendError):
    reason = "RecipientRefused"


class AttachmentMissing(PermanentSendError):
    reason = "AttachmentMissing"


class ConfigurationError(SendError):
    reason = "ConfigurationError"
