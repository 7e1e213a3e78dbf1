"""Checks the simulated providers share (each answers with its own codes)."""

from __future__ import annotations

import re

from dispatcher.simulator.base import INVALID_PREFIX

BLOCKED_SENDERS = frozenset({"MegaFon"})  # prostor.md:285-287 lists it as blocked


def phone_ok(phone: str) -> bool:
    return bool(re.fullmatch(r"[1-9][0-9]{9,14}", phone)) and not phone.startswith(INVALID_PREFIX)


def sender_ok(sender: str) -> bool:
    if sender in BLOCKED_SENDERS:
        return False
    # ASCII digits only: str.isdigit() also takes "²³" and Arabic-Indic digits.
    if re.fullmatch(r"[0-9]+", sender):
        return len(sender) <= 15  # my-sms.md:43
    return bool(re.fullmatch(r"[A-Za-z0-9 ._-]{1,11}", sender))


def operator_of(phone: str) -> tuple[str, str, str]:
    """(operator, region, mnc) as SMStele prints them (smstele.md:217-219)."""
    if phone.startswith("7916") or phone.startswith("7915"):
        return "mMTS", "77", "01"
    if phone.startswith("7926") or phone.startswith("7925"):
        return "mMEGAFON", "77", "02"
    return "mBEELINE", "77", "99"
