"""How many SMS segments a message costs.

Carriers bill per segment. A message that fits the GSM 03.38 alphabet travels as 7-bit units:
160 in a single segment, and 153 per segment once it is split, because each part then carries a
concatenation header. Characters of the GSM extension table (``^ { } \\ [ ~ ] | €`` and form feed)
take two units, and an extended pair is never split across segments. A message with any other
character (an emoji, most accents, any non-Latin script) is sent as UCS-2 instead: 70 UTF-16
units in a single segment, 67 per segment when split, and a character outside the BMP (an emoji)
takes two units that are not split either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

_LIMITS = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


@dataclass(frozen=True)
class SmsSegments:
    encoding: Literal["GSM-7", "UCS-2"]
    #: Code units the text takes in its encoding (septets, or UTF-16 units).
    units: int
    segments: int


def _units(text: str, encoding: str) -> list[int]:
    if encoding == "GSM-7":
        return [2 if ch in GSM7_EXTENDED else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def count_segments(text: str) -> SmsSegments:
    encoding: Literal["GSM-7", "UCS-2"] = (
        "GSM-7" if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text) else "UCS-2"
    )
    widths = _units(text, encoding)
    total = sum(widths)
    single, per_part = _LIMITS[encoding]
    if total <= single:
        return SmsSegments(encoding, total, 1 if total else 0)
    # Fill parts greedily; a two-unit character that does not fit starts the next part.
    segments, used = 1, 0
    for width in widths:
        if used + width > per_part:
            segments += 1
            used = 0
        used += width
    return SmsSegments(encoding, total, segments)
