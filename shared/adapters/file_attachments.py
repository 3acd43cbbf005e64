"""AttachmentStore in a folder on the local disk (the local stack: ``<data dir>/attachments``).

One folder per notification, one file per attachment: ``<notification id>/<index>``, which is
also the reference. Writes go to a temporary file first and are renamed into place, so a reader
never sees half an attachment.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..domain.errors import AttachmentNotFound, AttachmentStoreUnavailable

#: A notification id (a UUID) and an index: nothing that could climb out of the folder.
_NOTIFICATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_REF = re.compile(rf"({_NOTIFICATION_ID.pattern})/(\d{{1,4}})")


class FileAttachmentStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _notification_folder(self, notification_id: str) -> Path:
        if not _NOTIFICATION_ID.fullmatch(notification_id):
            raise ValueError("not a notification id")
        return self.folder / notification_id

    def put(self, notification_id: str, index: int, content: bytes) -> str:
        folder = self._notification_folder(notification_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{index}.")
            try:
                with os.fdopen(fd, "wb") as sink:
                    sink.write(content)
                os.replace(temporary, folder / str(index))
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise AttachmentStoreUnavailable(f"cannot write to the attachment folder: {exc.strerror}") from None
        return f"{notification_id}/{index}"

    def get(self, ref: str) -> bytes:
        if not _REF.fullmatch(ref):
            raise AttachmentNotFound(ref)
        try:
            return (self.folder / ref).read_bytes()
        except FileNotFoundError:
            raise AttachmentNotFound(ref) from None
        except OSError as exc:
            raise AttachmentStoreUnavailable(f"cannot read the attachment folder: {exc.strerror}") from None

    def delete(self, notification_id: str) -> None:
        folder = self._notification_folder(notification_id)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise AttachmentStoreUnavailable(f"cannot delete from the attachment folder: {exc.strerror}") from None
