"""How a recipient may appear in logs, traces and metrics: masked or as a keyed hash, never as is.

* ``mask`` keeps enough to tell two recipients apart at a glance (``j***@example.com``,
  ``+1******4567``) and nothing that identifies one.
* ``recipient_hash`` is an HMAC-SHA256 under a per-environment key (``PII_HASH_KEY``): operators
  compute it for one address (``python -m shared hash-recipient ADDRESS``) and search telemetry for
  it, while nobody without the key can test guesses against it, as they could with a plain hash of
  a phone number (there are only about 10^10 of those per country).
* ``recipient_domain`` is an email address's domain. It is kept in clear on purpose: bounces by
  domain is how an operator spots a mailbox provider rejecting us, and a domain such as
  ``gmail.com`` names no person. (A one-person vanity domain would; we accept that.)
* ``redact_text`` masks anything that looks like an email address or a phone number in free text
  (error messages, exceptions): the last line of defence for text we do not control.

Message bodies have no mask: they are never put into telemetry at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from .masking import mask_recipient

#: Used when PII_HASH_KEY is not set, which only the local stack and tests allow (Azure refuses it).
DEV_PII_HASH_KEY = "local-development-pii-hash-key"

_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# International numbers with their "+" in any common spelling (+1 425-555-0123, +44 (20) 7946 0958),
# and North American national formats ((425) 555-0123, 425-555-0123, 425.555.0123). Bare digit runs
# are left alone: they are as likely a count or a timestamp, and nothing of ours writes numbers so.
_PHONE = re.compile(r"\+\d(?:[\s().-]*\d){6,14}|\(\d{3}\)\s*\d{3}[\s.-]\d{4}\b|\b\d{3}[.-]\d{3}[.-]\d{4}\b")


def normalise(address: str) -> str:
    """One spelling per recipient, so the hash of ``Jane@Example.com`` is the hash of
    ``jane@example.com`` and that of ``+1 (425) 555-0123`` is that of ``+14255550123``."""
    address = address.strip()
    if "@" in address:
        return address.lower()
    digits = re.sub(r"\D", "", address)
    return f"+{digits}" if digits else address


def recipient_hash(address: str, key: str) -> str:
    """The keyed hash operators search telemetry for (32 hex digits: 128 bits)."""
    digest = hmac.new(key.encode("utf-8"), normalise(address).encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:32]


def recipient_domain(address: str) -> str | None:
    """The domain of an email address, lower-cased; None for a phone number."""
    _, at, domain = address.strip().rpartition("@")
    return domain.lower() if at and domain else None


def mask(address: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``; ``+1 (425) 555-0123`` -> ``+1******0123``: the
    status events' mask (``masking.mask_recipient``) of the recipient's one spelling."""
    return mask_recipient(normalise(address))


def redact_text(text: str) -> str:
    """``text`` with every email address and phone number in it masked.

    Stricter about numbers than ``masking.mask_text`` (which masks the short, known texts of a
    status event): log lines are full of timestamps, ids and counts, which any digit run of eight
    or more would mangle, so only numbers written as phone numbers are masked here.
    """
    if not text:
        return text
    if "@" in text:
        # Only then: on a line without one, the pattern still tries every run of the characters an
        # address may hold (a batch's accepted line is a hundred ids of them: 0.25 ms).
        text = _EMAIL.sub(lambda m: mask(m.group(0)), text)
    return _PHONE.sub(lambda m: mask(m.group(0)), text)
