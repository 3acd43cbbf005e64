"""Status events published to an Event Grid custom topic (CloudEvents 1.0 input schema) with
``azure-eventgrid``'s ``EventGridPublisherClient`` and the app's managed identity (the identity
needs ``EventGrid Data Sender`` on the topic; the topic has local auth disabled).

The relay's CloudEvent dicts become ``azure.core.messaging.CloudEvent``s and go out in one
request per batch (``application/cloudevents-batch+json``). The SDK's own retries are turned off
per call (``retry_total=0``): they would sleep inside the relay for minutes, and the relay retries
with its own backoff instead. (For the basic tier, ``EventGridPublisherClient`` takes pipeline
options only per call, not at construction.) ``eventgrid_errors`` is the one place where
``azure.core`` exceptions from this client become the project's error tree.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    SerializationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridPublisherClient

from ..domain.errors import StatusPublishFailed, StatusPublishForbidden, StatusPublishRejected
from .acs_errors import retry_after_seconds

# azure-eventgrid 4.22 also hands the per-call options to its CloudEvent model, which logs a
# warning for each of them on every publish; the options do reach the pipeline.
logging.getLogger("azure.eventgrid._legacy._generated._serialization").setLevel(logging.ERROR)

_CHECK = "check STATUS_EVENTS_TOPIC_ENDPOINT and the identity's EventGrid Data Sender role on the topic"


@contextmanager
def eventgrid_errors(destination: str) -> Iterator[None]:
    """Wrap one publish: every SDK failure leaves as a ``StatusPublishFailed``."""
    try:
        yield
    except ClientAuthenticationError as exc:
        raise StatusPublishForbidden(f"{destination}: not authorized ({_CHECK})", status_code=exc.status_code) from exc
    except ResourceNotFoundError as exc:
        raise StatusPublishForbidden(f"{destination}: no such topic ({_CHECK})", status_code=404) from exc
    except HttpResponseError as exc:
        status = exc.status_code or (exc.response.status_code if exc.response is not None else 500)
        message = f"{destination}: HTTP {status} ({exc.reason or 'error'})"
        if status in (401, 403, 404):
            raise StatusPublishForbidden(f"{message}; {_CHECK}", status_code=status) from exc
        if status in (400, 413):
            raise StatusPublishRejected(message, status_code=status) from exc
        headers = exc.response.headers if exc.response is not None else None
        raise StatusPublishFailed(message, status_code=status, retry_after=retry_after_seconds(headers)) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StatusPublishFailed(f"{destination}: no usable response ({type(exc).__name__})") from exc
    except SerializationError as exc:
        raise StatusPublishRejected(f"{destination}: the events could not be serialized ({exc})") from exc
    except AzureError as exc:
        raise StatusPublishFailed(f"{destination}: {type(exc).__name__}") from exc


class EventGridTopic:
    """The ``StatusEventPublisher`` port for an Event Grid custom topic."""

    def __init__(self, client: EventGridPublisherClient, endpoint: str, *, timeout_seconds: float = 10.0) -> None:
        self._client = client
        self.name = f"Event Grid topic {urlsplit(endpoint).hostname}"
        self._timeout = timeout_seconds

    def publish(self, events: list[dict[str, Any]]) -> None:
        with eventgrid_errors(self.name):
            batch = [CloudEvent.from_dict(event) for event in events]
            self._client.send(batch, retry_total=0, connection_timeout=self._timeout, read_timeout=self._timeout)
