"""AttachmentStore on Azure Blob Storage, one container (``ATTACHMENTS_CONTAINER_URL``).

Blob names are ``<notification id>/<index>``, which is also the reference the ledger keeps. The
container is created by infrastructure, and the Function App's identity needs the Storage Blob Data
Contributor role on it. ``azure.core`` exceptions become the error tree here, at the boundary.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from ..domain.errors import AttachmentNotFound, AttachmentStoreUnavailable, ConfigurationError


@contextmanager
def _storage_errors(action: str, ref: str | None = None) -> Iterator[None]:
    try:
        yield
    except ResourceNotFoundError as exc:
        if ref is not None and getattr(exc, "error_code", None) in (None, "BlobNotFound"):
            raise AttachmentNotFound(ref) from None
        raise ConfigurationError(
            f"attachment {action}: the container in ATTACHMENTS_CONTAINER_URL does not exist ({exc.error_code})",
            status_code=exc.status_code,
            code=exc.error_code,
        ) from None
    except ClientAuthenticationError as exc:
        raise ConfigurationError(
            f"attachment {action}: access denied; the app's identity needs Storage Blob Data Contributor on the container",
            status_code=getattr(exc, "status_code", None),
            code=getattr(exc, "error_code", None),
        ) from None
    except HttpResponseError as exc:
        if exc.status_code == 403:
            raise ConfigurationError(
                f"attachment {action}: forbidden; the app's identity needs Storage Blob Data Contributor on the container",
                status_code=403,
                code=exc.error_code,
            ) from None
        raise AttachmentStoreUnavailable(
            f"attachment {action} failed: {exc.reason or exc.status_code}", status_code=exc.status_code, code=exc.error_code
        ) from None
    except AzureError as exc:  # connection refused, timeouts, broken responses
        raise AttachmentStoreUnavailable(f"attachment {action} failed: {type(exc).__name__}") from None


class BlobAttachmentStore:
    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    def put(self, notification_id: str, index: int, content: bytes) -> str:
        name = f"{notification_id}/{index}"
        with _storage_errors("upload"):
            self._container.upload_blob(name, content, overwrite=True)
        return name

    def get(self, ref: str) -> bytes:
        with _storage_errors("download", ref):
            return self._container.download_blob(ref).readall()

    def delete(self, notification_id: str) -> None:
        with _storage_errors("delete"):
            for blob in self._container.list_blobs(name_starts_with=f"{notification_id}/"):
                try:
                    self._container.delete_blob(blob.name)
                except ResourceNotFoundError:
                    pass  # deleted by someone else in the meantime: what we wanted
