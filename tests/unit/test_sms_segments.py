import pytest

from shared.domain.sms import count_segments


@pytest.mark.parametrize(
    "text, encoding, units, segments",
    [
        ("", "GSM-7", 0, 0),
        ("Your code is 123456", "GSM-7", 19, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension characters take two septets
        ("€" * 81, "GSM-7", 162, 2),  # 76 pairs fill 152 septets; the 77th pair starts part two
        ("€" * 153, "GSM-7", 306, 3),  # 2 x 153 septets only if a pair could be split; it cannot
        ("Ça coûte 5 €", "UCS-2", 12, 1),  # û is not in the GSM alphabet
        ("é" * 160, "GSM-7", 160, 1),  # é is
        ("ü" * 70 + "ł", "UCS-2", 71, 2),
        ("ł" * 70, "UCS-2", 70, 1),
        ("ł" * 134, "UCS-2", 134, 2),
        ("ł" * 135, "UCS-2", 135, 3),
        ("🙂" * 35, "UCS-2", 70, 1),  # outside the BMP: two UTF-16 units each
        ("🙂" * 34 + "a", "UCS-2", 69, 1),
        ("a" + "🙂" * 34, "UCS-2", 69, 1),
        ("a" * 66 + "🙂" * 2, "UCS-2", 70, 1),
        ("a" * 66 + "🙂" * 3, "UCS-2", 72, 2),
    ],
)
def test_segments_follow_the_gsm7_and_ucs2_rules(text, encoding, units, segments):
    result = count_segments(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)
