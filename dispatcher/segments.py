"""How many SMS parts a text takes: GSM 03.38 7-bit where it fits, else UCS-2.

GSM-7: 160 characters in one part, 153 per part when concatenated (the UDH takes 7);
extension characters (``^{}\\[~]|€`` and form feed) take two septets. UCS-2: 70 in one
part, 67 per part. A surrogate pair (emoji) is two UCS-2 code units.
"""

from __future__ import annotations

import math

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

MAX_PARTS = 10  # a dispatcher-wide ceiling: SMStele refuses "too many segments" (-42)


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def encoding(text: str) -> str:
    return "gsm7" if is_gsm7(text) else "ucs2"


def units(text: str) -> int:
    """Length in the encoding's units: septets for GSM-7, UTF-16 code units for UCS-2."""
    if is_gsm7(text):
        return sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    return len(text.encode("utf-16-le")) // 2


def count_parts(text: str) -> int:
    """The number of SMS parts ``text`` is sent as (0 for an empty text)."""
    n = units(text)
    if n == 0:
        return 0
    single, multi = (160, 153) if is_gsm7(text) else (70, 67)
    return 1 if n <= single else math.ceil(n / multi)
