"""The status event publishers against a real local HTTP server: the webhook subscriber adapter,
and the Event Grid topic adapter through the real ``azure-eventgrid`` client, the server speaking
Event Grid's publish API (``POST /api/events?api-version=2018-01-01``, CloudEvents batch)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceNotFoundError,
    SerializationError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.eventgrid import EventGridPublisherClient

from shared.adapters.eventgrid_topic import EventGridTopic, eventgrid_errors
from shared.adapters.webhook_subscribers import WebhookSubscriber, endpoint_name
from shared.domain.errors import StatusPublishFailed, StatusPublishForbidden, StatusPublishRejected
from tests.e2e.stack import free_port

EVENTS = [
    {
        "specversion": "1.0", "id": f"evt-{i}", "source": "/notify/test", "type": "Notify.notification.accepted",
        "subject": "notifications/n-1", "time": "2026-11-01T12:00:00.000000Z", "datacontenttype": "application/json",
        "sequence": f"{i:010d}", "data": {"id": "n-1", "status": "accepted", "sequence": i},
    }
    for i in (1, 2)
]


class Recorder:
    """A local HTTP server that records each request and answers from a script of
    ``(status, headers)``, then 200 once the script is used up."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                status, headers = recorder.script.pop(0) if recorder.script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> Recorder:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Recorder]:
    with Recorder() as recorder:
        yield recorder


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


# ---------------------------------------------------------------------------- webhook subscribers


def test_a_subscriber_receives_the_batch_as_one_cloudevents_batch_post(server, http):
    WebhookSubscriber(f"{server.url}/hooks/notify?code=secret", http).publish(EVENTS)

    [request] = server.requests
    assert request["path"] == "/hooks/notify?code=secret"
    assert request["headers"]["Content-Type"] == "application/cloudevents-batch+json; charset=utf-8"
    assert request["body"] == EVENTS


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_success_code_event_grid_accepts_counts_as_delivered(server, http, status):
    server.script = [(status, {})]
    WebhookSubscriber(server.url, http).publish(EVENTS)


def test_a_subscriber_that_fails_raises_a_retryable_error_with_its_retry_after(server, http):
    server.script = [(503, {"Retry-After": "7"})]
    with pytest.raises(StatusPublishFailed) as caught:
        WebhookSubscriber(server.url, http).publish(EVENTS)
    assert (type(caught.value), caught.value.status_code, caught.value.retry_after) == (StatusPublishFailed, 503, 7.0)


@pytest.mark.parametrize(("status", "error"), [(400, StatusPublishRejected), (413, StatusPublishRejected),
                                                 (401, StatusPublishForbidden), (403, StatusPublishForbidden),
                                                 (404, StatusPublishFailed), (302, StatusPublishFailed)])
def test_each_refusal_is_classified(server, http, status, error):
    server.script = [(status, {})]
    with pytest.raises(error) as caught:
        WebhookSubscriber(server.url, http).publish(EVENTS)
    assert type(caught.value) is error


def test_a_subscriber_that_is_not_listening_is_a_retryable_failure(http):
    with pytest.raises(StatusPublishFailed) as caught:
        WebhookSubscriber(f"http://127.0.0.1:{free_port()}/hook", http).publish(EVENTS)
    assert type(caught.value) is StatusPublishFailed


def test_a_subscriber_is_named_in_logs_without_its_query_or_credentials():
    assert endpoint_name("https://user:pw@hooks.example.com:8443/notify?code=abc") == "https://hooks.example.com:8443/notify"


# ---------------------------------------------------------------------------- Event Grid topic


def topic(server: Recorder) -> EventGridTopic:
    endpoint = f"{server.url}/api/events"
    # In Azure bootstrap passes DefaultAzureCredential; a bearer token needs https, which a local
    # test server has not, so the server takes Event Grid's key header instead.
    client = EventGridPublisherClient(endpoint, AzureKeyCredential("local-test-key"))
    return EventGridTopic(client, endpoint, timeout_seconds=5)


def test_the_topic_receives_a_cloudevents_batch_on_the_event_grid_publish_api(server):
    topic(server).publish(EVENTS)

    [request] = server.requests
    assert request["path"] == "/api/events?api-version=2018-01-01"
    assert request["headers"]["Content-Type"] == "application/cloudevents-batch+json; charset=utf-8"
    assert request["headers"]["aeg-sas-key"] == "local-test-key"
    assert [(e["id"], e["type"], e["subject"], e["sequence"], e["data"]) for e in request["body"]] == [
        (e["id"], e["type"], e["subject"], e["sequence"], e["data"]) for e in EVENTS
    ]


def test_a_failing_topic_is_reported_at_once_without_the_sdk_retrying_inside_the_relay(server):
    server.script = [(503, {"Retry-After": "3"}), (503, {})]
    with pytest.raises(StatusPublishFailed) as caught:
        topic(server).publish(EVENTS)

    assert len(server.requests) == 1
    assert (caught.value.status_code, caught.value.retry_after) == (503, 3.0)


@pytest.mark.parametrize(("status", "error"), [(400, StatusPublishRejected), (413, StatusPublishRejected),
                                                 (401, StatusPublishForbidden), (403, StatusPublishForbidden),
                                                 (404, StatusPublishForbidden), (429, StatusPublishFailed),
                                                 (500, StatusPublishFailed)])
def test_each_topic_refusal_is_classified(server, status, error):
    server.script = [(status, {})]
    with pytest.raises(error) as caught:
        topic(server).publish(EVENTS)
    assert type(caught.value) is error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ClientAuthenticationError("no token"), StatusPublishForbidden),
        (ResourceNotFoundError("no topic"), StatusPublishForbidden),
        (HttpResponseError("boom"), StatusPublishFailed),
        (ServiceRequestError("refused"), StatusPublishFailed),
        (ServiceResponseError("reset"), StatusPublishFailed),
        (DecodeError("garbled"), StatusPublishFailed),
        (SerializationError("bad"), StatusPublishRejected),
        (AzureError("other"), StatusPublishFailed),
    ],
)
def test_every_sdk_failure_the_topic_can_raise_has_a_mapping(raised, expected):
    with pytest.raises(StatusPublishFailed) as caught:
        with eventgrid_errors("topic"):
            raise raised
    assert type(caught.value) is expected
