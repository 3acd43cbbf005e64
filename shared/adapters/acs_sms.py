"""SmsSender on Azure Communication Services SMS.

The public ``SmsClient.send`` draws a fresh random repeatability id for every call, so a retry
would look like a new message to ACS. This adapter builds the same request with *our* ids (derived
from the notification and recipient) and the first-sent time of the first attempt, and hands it to
the client's generated operations. That layer is private API: the package version is pinned in
requirements.txt and the emulator tests exercise this exact path.
"""

from __future__ import annotations

from email.utils import format_datetime

from azure.communication.sms import SmsClient
from azure.communication.sms._generated.models import SendMessageRequest, SmsRecipient, SmsSendOptions

from ..domain.errors import RecipientRefused, RequestRejected, SendTimeout
from ..service.ports import OutgoingSms, SmsRecipientResult
from .acs_errors import acs_errors, error_for_status


class AcsSmsSender:
    def __init__(self, client: SmsClient) -> None:
        self._client = client

    def send(self, sms: OutgoingSms) -> list[SmsRecipientResult]:
        request = SendMessageRequest(
            from_property=sms.sender,
            sms_recipients=[
                SmsRecipient(
                    to=r.to,
                    repeatability_request_id=r.repeatability_request_id,
                    repeatability_first_sent=format_datetime(r.repeatability_first_sent, usegmt=True),
                )
                for r in sms.recipients
            ],
            message=sms.message,
            sms_send_options=SmsSendOptions(enable_delivery_report=True, tag=sms.tag),
        )
        with acs_errors("sms send"):
            response = self._client._sms_service_client.sms.send(request)
        if response is None or response.value is None:
            # ACS accepted the request but said nothing per recipient; a resend is safe (same repeatability ids).
            raise SendTimeout("sms send: HTTP 202 without per-recipient results", status_code=202)
        results = []
        for item in response.value:
            if item.successful and item.message_id:
                results.append(SmsRecipientResult(to=item.to, message_id=item.message_id))
                continue
            # A 202 can carry per-recipient failures: 5xx items may succeed later, 4xx never will.
            error = error_for_status(
                item.http_status_code or 500,
                f"repeatability:{item.repeatability_result}" if item.repeatability_result == "rejected" else None,
                f"sms recipient: {item.error_message or 'not accepted'}",
            )
            if type(error) is RequestRejected:  # a 4xx for this one recipient: ACS refused it, not the request
                error = RecipientRefused(error.message, status_code=error.status_code, code=error.code)
            results.append(SmsRecipientResult(to=item.to, message_id=None, error=error))
        return results
