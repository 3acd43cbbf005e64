"""Local emulator of Azure Communication Services (Email + SMS) for development and tests.

A dev tool: it is not deployed with the app. Start it with ``python -m acs_emulator`` (see
``python -m acs_emulator --help``) and point the real SDK clients at it::

    EmailClient("http://127.0.0.1:7072", AzureKeyCredential(DEFAULT_ACCESS_KEY))
    SmsClient("http://127.0.0.1:7072", AzureKeyCredential(DEFAULT_ACCESS_KEY))

It checks HMAC signatures like ACS, validates requests, answers with ACS's wire shapes, and after
``report_delay_ms`` posts Event Grid-schema delivery reports to ``webhook_url`` with
``Authorization: Bearer <webhook_token>`` and ``aeg-event-type: Notification``.

Simulator recipients
--------------------
Email (local part matched case-insensitively; a ``+tag`` suffix is ignored, so
``Bounce+42@example.com`` bounces):

=================  ==================================
``bounce@...``     report status ``Bounced``
``suppressed@...`` report status ``Suppressed``
``failed@...``     report status ``Failed``
``quarantined@..`` report status ``Quarantined``
``filteredspam@.`` report status ``FilteredSpam``
``noreport@...``   no report at all
anything else      report status ``Delivered``
=================  ==================================

SMS (``to`` numbers; the request must ask for reports with ``enableDeliveryReport``):

* ending in ``0001`` -> report ``deliveryStatus: Failed``
* ending in ``0002`` -> never a report
* any other E.164 number -> ``Delivered``
* not E.164 (``^\\+[1-9]\\d{6,14}$``) -> item ``httpStatusCode: 400``, ``successful: false``,
  ``errorMessage: "Invalid To phone number format."`` inside the 202

Idempotency
-----------
* Email: a repeated ``Operation-Id`` header sends nothing new: 202 with the existing operation's
  id and current status; no second message, no second set of reports.
* SMS: a repeated ``repeatabilityRequestId`` returns the first result for it (same ``messageId``,
  ``repeatabilityResult: "accepted"``) and records nothing new. An id without a valid RFC 1123
  ``repeatabilityFirstSent`` (or the reverse) gets ``repeatabilityResult: "rejected"``, 400.

Error answers (ACS error body ``{"error": {"code", "message", "target"?}}`` and ``x-ms-error-code``)
------------------------------------------------------------------------------------------------
* 401 ``Denied``: missing/invalid HMAC signature, body hash mismatch, ``x-ms-date`` off by > 15 min.
* 400 ``MissingApiVersionParameter`` / ``UnsupportedApiVersion``. Email accepts 2023-03-31,
  2024-07-01-preview, 2025-09-01; SMS accepts the published versions (the SDK uses 2021-03-07).
* 400 ``BadRequest``: body not a JSON object or a required field missing (``target`` names it).
* 400 ``InvalidEmailAddress``: an address is not syntactically an email address.
* 400 ``TooManyRecipients``: more than 50 addresses in to + cc + bcc.
* 400 ``DomainNotLinked``: the sender's domain is not in ``allowed_sender_domains`` (when set).
  (The real service's status code for this is not confirmed; 400 was chosen.)
* 400 ``InvalidAttachment``: an attachment lacks name/contentType/contentInBase64, its contentType
  is not of the form type/subtype, or its content is not base64. ``/emulator/messages`` records each
  attachment's ``name``, ``contentType``, decoded ``size`` and ``sha256``, never the content.
* 413 ``PayloadTooLarge``: the email request is over 10 MiB. ACS documents the 10 MB limit but not
  the answer; 413 was chosen so it is told apart from validation errors.
* 404 ``NotFound``: unknown email operation id.
* 429 ``TooManyRequests`` (with ``Retry-After``) and 500 ``InternalServerError``: injected faults.

Control API (no authentication)
-------------------------------
* ``GET /emulator/health``
* ``GET /emulator/messages[?channel=email|sms]``, ``GET /emulator/messages/{id}``,
  ``DELETE /emulator/messages`` (clears messages, operations, repeatability ids, pending reports
  and the request log)
* ``GET|PUT|DELETE /emulator/faults``: ``{"latencyMs", "throttleRate", "retryAfterSeconds",
  "serverErrorRate", "duplicateReportRate", "reportDelayJitterMs", "foreignReportRate"}``; PUT
  takes a partial body, DELETE resets (all 0, ``retryAfterSeconds`` 1). The first four apply to the
  send endpoints and the email operation GET; a faulted request records nothing. The report faults
  apply to the reports of messages accepted while they are set (Event Grid delivers at least once,
  in any order):

  - ``duplicateReportRate`` (0..1): each report event is posted a second time, with the same event
    id, in a POST of its own, later than the first (by up to another delay + jitter);
  - ``reportDelayJitterMs`` (whole number >= 0): each report waits ``report_delay_ms +
    uniform(0, jitter)``, so reports arrive out of order across messages and recipients (an email
    operation turns ``Succeeded`` once all its recipients' reports are posted);
  - ``foreignReportRate`` (0..1): a copy of the report is also posted with another ACS resource's
    ``topic`` (``acs_emulator.reports.FOREIGN_RESOURCE_ID``) and a new event id, which the
    receiver must reject.

* ``GET /emulator/stats``: counters since the start or the last ``DELETE /emulator/messages``.
  ``channels.email`` and ``channels.sms`` each hold ``accepted`` (messages: an email operation, an
  SMS recipient), ``reports`` (first deliveries posted, by status: the unique reports),
  ``duplicatesPosted``, ``foreignPosted``, ``pending`` (report events of any kind not yet posted)
  and ``gaveUp``. ``webhook`` holds ``posts`` (answered 2xx), ``failedAttempts`` and ``responses``:
  the integer fields of the webhook's JSON answers, summed (for the notification service:
  ``received``, ``applied``, ``duplicates``, ``parked``, ``rejected``, ``malformed``, ``ignored``).
* ``GET /emulator/requests``: the ACS calls received (method, path, status, error code), retries
  included.
"""

from .app import create_app
from .config import DEFAULT_ACCESS_KEY, EmulatorConfig

__all__ = ["DEFAULT_ACCESS_KEY", "EmulatorConfig", "create_app"]
