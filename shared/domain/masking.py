"""Recipients as they may be shown outside the ledger: masked, never in full.

Status events leave the service (to Event Grid and whoever subscribes), so the recipient in them
is masked: enough for a person to tell ``j***@example.com`` from ``m***@example.com`` or
``+1******4567`` from ``+1******1234``, not enough to contact anyone. One place, so every caller
masks the same way.
"""

from __future__ import annotations

import functools
import re

_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_PHONE = re.compile(r"\+?\d[\d ()-]{6,}\d")


def mask_recipient(address: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``; ``+14255554567`` -> ``+1******4567``."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if at:
        return f"{local[:1]}***@{domain}"
    digits = address.lstrip("+")
    plus = "+" if address.startswith("+") else ""
    if len(digits) <= 5:
        return plus + "*" * len(digits)
    return f"{plus}{digits[:1]}{'*' * (len(digits) - 5)}{digits[-4:]}"


# ACS words its reasons from a small set ("550 5.1.1 ... does not exist"): a batch of reports masks
# the same few texts over and over.
@functools.lru_cache(maxsize=1024)
def mask_text(text: str) -> str:
    """Free text (an ACS bounce reason quotes the address it bounced) with every email address
    and phone number in it masked."""
    text = _EMAIL.sub(lambda m: mask_recipient(m.group(0)), text)
    return _PHONE.sub(lambda m: mask_recipient(re.sub(r"[ ()-]", "", m.group(0))), text)
