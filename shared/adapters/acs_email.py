"""EmailSender on Azure Communication Services Email, through the official SDK client."""

from __future__ import annotations

import base64
from typing import Any

from urllib.parse import quote

from azure.communication.email import EmailClient
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from ..service.ports import EmailAddress, OutgoingEmail
from .acs_errors import acs_errors


def _addresses(items: list[EmailAddress]) -> list[dict[str, str]]:
    out = []
    for item in items:
        entry = {"address": item.address}
        if item.display_name:
            entry["displayName"] = item.display_name
        out.append(entry)
    return out


def email_message(email: OutgoingEmail) -> dict[str, Any]:
    """The ACS ``EmailMessage`` body for one outgoing email."""
    recipients: dict[str, Any] = {"to": _addresses(email.to)}
    if email.cc:
        recipients["cc"] = _addresses(email.cc)
    if email.bcc:
        recipients["bcc"] = _addresses(email.bcc)
    content: dict[str, Any] = {"subject": email.subject}
    if email.text is not None:
        content["plainText"] = email.text
    if email.html is not None:
        content["html"] = email.html
    message: dict[str, Any] = {"senderAddress": email.sender, "recipients": recipients, "content": content}
    if email.reply_to:
        message["replyTo"] = _addresses(email.reply_to)
    if email.attachments:
        message["attachments"] = [
            {
                "name": a.name,
                "contentType": a.content_type,
                "contentInBase64": base64.b64encode(a.content).decode("ascii"),
            }
            for a in email.attachments
        ]
    return message


class AcsEmailSender:
    def __init__(self, client: EmailClient) -> None:
        self._client = client

    def send(self, email: OutgoingEmail) -> str:
        with acs_errors("email send"):
            # polling=False: take ACS's 202 and return. Polling the operation to completion would
            # block a worker and spend the small Get Status quota; the delivery report tells the
            # outcome anyway.
            poller = self._client.begin_send(email_message(email), operation_id=email.operation_id, polling=False)
            result = poller.result()
        if not isinstance(result, dict):  # a 202 with an empty body: the operation is still ours
            result = {}
        return str(result.get("id") or email.operation_id)

    def find_operation(self, operation_id: str) -> str | None:
        # The 1.1 SDK has no call for GET /emails/operations/{id}; send it through the client's own
        # pipeline so it is signed and authenticated exactly like a send.
        configured = self._client._config.api_version
        api_version = getattr(configured, "value", configured)  # the SDK may hold an ApiVersion enum
        request = HttpRequest("GET", f"/emails/operations/{quote(operation_id)}", params={"api-version": api_version})
        with acs_errors("email status"):
            response = self._client.send_request(request)
            if response.status_code == 404:
                return None
            if response.status_code >= 400:
                raise HttpResponseError(response=response)
            result = response.json()
        return str(result.get("id") or operation_id)
