"""Contract tests for the ``AttachmentStore`` port (``shared.service.ports.AttachmentStore``).

Every test takes ``store`` and runs once per implementation: the in-memory ``FakeAttachmentStore``
the unit tests rely on, the ``FileAttachmentStore`` of the local stack, and the
``BlobAttachmentStore`` against Azurite's Blob service (``node_modules/.bin/azurite-blob``, from
``npm ci``; skipped when it is not installed). Each blob test gets a container of its own.

Tests at the bottom are about one adapter only.
"""

from __future__ import annotations

import uuid

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.adapters.blob_attachments import BlobAttachmentStore
from shared.adapters.file_attachments import FileAttachmentStore
from shared.domain.errors import AttachmentNotFound, AttachmentStoreUnavailable, ConfigurationError
from tests import azurite
from tests.fakes import FakeAttachmentStore


# ---------------------------------------------------------------------------- Azurite (blob)


@pytest.fixture(scope="module")
def azurite_blobs(tmp_path_factory):
    """A connection string to Azurite's Blob service, in memory on a free port, for this module."""
    with azurite.running("blob", tmp_path_factory.mktemp("azurite-blob")) as port:
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={azurite.ACCOUNT};AccountKey={azurite.ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{azurite.ACCOUNT};"
        )


def fresh_container(request: pytest.FixtureRequest) -> ContainerClient:
    """A new, empty container of this test's own, deleted when the test ends."""
    connection_string = request.getfixturevalue("azurite_blobs")
    service = BlobServiceClient.from_connection_string(connection_string, retry_total=0)
    container = service.create_container(f"attachments-{uuid.uuid4().hex[:12]}")
    request.addfinalizer(container.delete_container)
    return container


# ---------------------------------------------------------------------------- implementations

STORES = {
    "fake": lambda request, tmp_path: FakeAttachmentStore(),
    "file": lambda request, tmp_path: FileAttachmentStore(tmp_path / "attachments"),
    "blob": lambda request, tmp_path: BlobAttachmentStore(fresh_container(request)),
}


@pytest.fixture(params=list(STORES))
def store(request, tmp_path):
    return STORES[request.param](request, tmp_path)


def nid() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------- the contract


def test_what_was_put_is_got_back_byte_for_byte_by_its_reference(store):
    content = bytes(range(256)) * 1000  # every byte value, 256 KB
    ref = store.put(notification := nid(), 0, content)

    assert store.get(ref) == content
    assert notification in ref


def test_each_index_of_a_notification_has_its_own_reference(store):
    notification = nid()
    first, second = store.put(notification, 0, b"first"), store.put(notification, 1, b"second")

    assert first != second
    assert (store.get(first), store.get(second)) == (b"first", b"second")


def test_putting_the_same_index_again_replaces_the_content_under_the_same_reference(store):
    notification = nid()
    ref = store.put(notification, 0, b"draft")

    assert store.put(notification, 0, b"final") == ref
    assert store.get(ref) == b"final"


def test_an_unknown_reference_raises_attachment_not_found(store):
    with pytest.raises(AttachmentNotFound):
        store.get(f"{nid()}/0")


def test_delete_removes_every_attachment_of_the_notification_and_nothing_of_others(store):
    gone, kept = nid(), nid()
    refs = [store.put(gone, i, f"part {i}".encode()) for i in range(3)]
    other = store.put(kept, 0, b"keep me")

    store.delete(gone)

    for ref in refs:
        with pytest.raises(AttachmentNotFound):
            store.get(ref)
    assert store.get(other) == b"keep me"


def test_deleting_a_notification_without_attachments_is_no_error(store):
    store.delete(nid())


def test_a_notification_id_that_is_a_prefix_of_another_does_not_take_the_others_attachments(store):
    longer = nid()
    shorter = longer[:8]
    ref = store.put(longer, 0, b"mine")

    store.delete(shorter)

    assert store.get(ref) == b"mine"


# ---------------------------------------------------------------------------- one adapter only


@pytest.mark.parametrize("ref", ["../outside/0", "/etc/passwd", "x/../../0", "abc/0/../../../etc"])
def test_the_file_store_never_reads_outside_its_folder(tmp_path, ref):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "0").write_bytes(b"secret")
    store = FileAttachmentStore(tmp_path / "attachments")

    with pytest.raises(AttachmentNotFound):
        store.get(ref)


def test_the_file_store_keeps_each_attachment_as_a_file_in_a_folder_per_notification(tmp_path):
    store = FileAttachmentStore(tmp_path / "attachments")
    notification = nid()

    store.put(notification, 0, b"%PDF")

    assert [p.name for p in (tmp_path / "attachments" / notification).iterdir()] == ["0"]
    store.delete(notification)
    assert not (tmp_path / "attachments" / notification).exists()


def test_a_file_store_that_cannot_write_raises_attachment_store_unavailable(tmp_path):
    blocker = tmp_path / "attachments"
    blocker.write_text("a file where the folder should be")
    store = FileAttachmentStore(blocker)

    with pytest.raises(AttachmentStoreUnavailable):
        store.put(nid(), 0, b"x")


def test_an_unreachable_blob_service_raises_attachment_store_unavailable():
    port = azurite._free_port()  # nothing listens there any more: connection refused
    container = ContainerClient.from_container_url(
        f"http://127.0.0.1:{port}/{azurite.ACCOUNT}/attachments", retry_total=0, connection_timeout=2
    )
    store = BlobAttachmentStore(container)

    with pytest.raises(AttachmentStoreUnavailable) as raised:
        store.put(nid(), 0, b"x")
    assert raised.value.ambiguous is False
    with pytest.raises(AttachmentStoreUnavailable):
        store.get(f"{nid()}/0")


def test_a_missing_blob_container_is_a_configuration_error_not_a_missing_attachment(request):
    connection_string = request.getfixturevalue("azurite_blobs")
    container = ContainerClient.from_connection_string(connection_string, f"missing-{uuid.uuid4().hex[:8]}", retry_total=0)
    store = BlobAttachmentStore(container)

    with pytest.raises(ConfigurationError) as on_put:
        store.put(nid(), 0, b"x")
    with pytest.raises(ConfigurationError):
        store.get(f"{nid()}/0")
    assert "ATTACHMENTS_CONTAINER_URL" in str(on_put.value)


def test_a_wrong_account_key_is_a_configuration_error(request):
    connection_string = request.getfixturevalue("azurite_blobs")
    wrong = connection_string.replace(azurite.ACCOUNT_KEY, "d3Jvbmcta2V5" * 4)
    container = fresh_container(request)
    store = BlobAttachmentStore(ContainerClient.from_connection_string(wrong, container.container_name, retry_total=0))

    with pytest.raises(ConfigurationError):
        store.put(nid(), 0, b"x")
