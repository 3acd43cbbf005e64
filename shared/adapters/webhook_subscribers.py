"""Status events posted to subscriber URLs (``STATUS_EVENT_SUBSCRIBERS``): the local stack's
stand-in for an Event Grid topic, so an app developer can watch their own endpoint receive events.

Each URL is one destination. A batch is one ``POST`` of a JSON array of CloudEvents 1.0 in
structured mode, ``Content-Type: application/cloudevents-batch+json; charset=utf-8`` (the
CloudEvents HTTP binding's batched mode, which Event Grid also uses for batched deliveries).
Like Event Grid, only 200-204 count as delivered; anything else, a timeout or a refused
connection is a failure the relay retries with backoff.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from ..domain.errors import StatusPublishFailed, StatusPublishForbidden, StatusPublishRejected
from ..service.status_events import CLOUDEVENTS_BATCH_CONTENT_TYPE
from .acs_errors import retry_after_seconds

#: Event Grid's success codes for webhook deliveries.
_DELIVERED = frozenset({200, 201, 202, 203, 204})
#: The subscriber refuses the content itself: sending it again as it is will not help.
_REFUSED = frozenset({400, 413, 415, 422})


def endpoint_name(url: str) -> str:
    """The URL without its query string or credentials, for logs (a webhook URL often carries a
    key in its query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class WebhookSubscriber:
    """The ``StatusEventPublisher`` port for one subscriber URL."""

    def __init__(self, url: str, client: httpx.Client) -> None:
        self.url = url
        self.name = endpoint_name(url)
        self._client = client

    def publish(self, events: list[dict[str, Any]]) -> None:
        try:
            response = self._client.post(
                self.url, json=events, headers={"Content-Type": CLOUDEVENTS_BATCH_CONTENT_TYPE}
            )
        except httpx.HTTPError as exc:
            raise StatusPublishFailed(f"{self.name} could not be reached ({type(exc).__name__})") from exc
        status = response.status_code
        if status in _DELIVERED:
            return
        message = f"{self.name} answered HTTP {status}"
        if status in (401, 403):
            raise StatusPublishForbidden(message, status_code=status)
        if status in _REFUSED:
            raise StatusPublishRejected(message, status_code=status)
        raise StatusPublishFailed(message, status_code=status, retry_after=retry_after_seconds(response.headers))
