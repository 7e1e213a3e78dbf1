"""Keep provider secrets out of logs, exception texts, the ledger and Flower.

Two layers, in this order:

1. Every configured secret (provider passwords, the API token, Flower's basic auth)
   is registered here when the configuration loads, and ``redact`` replaces it in
   every form it takes on the wire and in logs: as is, JSON-escaped, percent-encoded
   (UTF-8, windows-1251 and KOI8-R, the charsets the adapters send), XML/HTML-escaped,
   Python-repr-escaped, and base64 inside HTTP Basic auth. Every occurrence of every
   form is found first and overlapping ones become one mask, so that no form leaves
   part of another, whichever is longer.
2. Only then the wire positions that carry a secret (query and form fields, JSON and
   XML elements, Authorization headers, URL user info) are masked by pattern, so that
   a secret we were never told about (a typo in a config, a test account) is hidden too.

The order matters: a pattern stops at the first ``&`` or quote, so run first it masks
only the head of a password such as ``пароль&p=1"`` and leaves the tail where the
known-secret pass can no longer find the whole.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"

# Shorter values would mask innocent text ("1" in every number): the patterns below
# still cover them in their wire positions.
MIN_SECRET = 4

# The names under which the five providers take a password (my-sms `p`/`password`,
# 1000sms `password`, sms-ka `APIPassword`, SMStele `psw`, prostor `password`), plus
# the API token and Flower's basic auth of our own.
_FIELD_NAMES = r"(?:p|psw|pass|passwd|password|apipassword|api_password|token|secret|basic_auth)"
_QUERY = re.compile(rf"(?i)(?<![A-Za-z0-9_])({_FIELD_NAMES})=([^&\s\"'<>]*)")
# A JSON member or a Python dict item: "password": "..." or 'password': '...'.
_MAPPING = re.compile(rf"(?i)([\"']){_FIELD_NAMES}\1\s*:\s*([\"'])((?:(?!\2)[^\\]|\\.)*)\2")
_XML = re.compile(rf"(?i)(<{_FIELD_NAMES}>)([^<]*)(</)")
# A URL's password, with or without a user: redis://:pw@host has none.
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@/\s]+)(@)")
# An Authorization header as sent, logged or repr'd: "Authorization: Basic dXNlcjpw",
# "'Authorization': 'Bearer t0k'", "authorization=Token x".
_AUTH_HEADER = re.compile(
    r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|token|digest)\s+)?)"
    r"([^\s\"',;}]+)"
)

# The charsets a secret is percent-encoded in: UTF-8 everywhere, and windows-1251 or
# KOI8-R where SMStele's `charset` option makes urlencode() use them for the body.
_CHARSETS = ("utf-8", "cp1251", "koi8-r")
# `safe` sets of quote(): none (urlencode, quote_plus), quote()'s default "/", and the
# set requests' requote_uri() leaves alone in a URL it was handed whole.
_SAFE_SETS = ("", "/", "!#$%&'()*+,/:;=?@[]~")
_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")

_lock = threading.Lock()
_secrets: set[str] = set()
# Every form of every secret, and one pattern matching any of them (a quick test for
# the common text that holds none). One tuple, replaced whole on a change and never
# edited in place, so that ``redact`` reads a matching pair without the lock.
_known: tuple[tuple[str, ...], re.Pattern[str] | None] = ((), None)


def register_secret(value: str | None, *, login: str | None = None) -> None:
    """Remember a secret so that ``redact`` hides it, in all its encodings, wherever it
    appears. With ``login``, also the base64 of ``login:value``, as HTTP Basic auth
    carries a user and password."""
    if not value or len(value) < MIN_SECRET:
        return
    new = {value}
    if login is not None:
        new |= _basic_auth_forms(login, value)
    with _lock:
        if new <= _secrets:
            return
        _secrets.update(new)
        forms: set[str] = set()
        for secret in _secrets:
            forms |= secret_forms(secret)
        # Longest first, so that the quick pattern prefers a whole form to its head.
        ordered = tuple(sorted(forms, key=lambda f: (-len(f), f)))
        global _known
        _known = (ordered, re.compile("|".join(re.escape(f) for f in ordered)))


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def secret_forms(secret: str) -> set[str]:
    """Every form in which ``secret`` can appear in a request, a reply or a log line."""
    # A JSON body (requests' json=, ensure_ascii) carries Cyrillic as \\uXXXX, a JSON
    # log line with ensure_ascii=False as is; both double backslashes and quotes.
    bases = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms: set[str] = set()
    for base in bases:
        forms.add(base)
        forms |= _percent_forms(base)
        forms |= _markup_forms(base)
        forms |= _repr_forms(base)
    # A body logged as bytes (b'...'), as UTF-8 or in the charset it went out in.
    for charset in _CHARSETS:
        try:
            data = secret.encode(charset)
        except UnicodeEncodeError:
            continue
        for q in ("'", '"'):
            forms.add(_bytes_body(data, q))
    return {f for f in forms if len(f) >= MIN_SECRET}


def _percent_forms(text: str) -> set[str]:
    forms: set[str] = set()
    for charset in _CHARSETS:
        try:
            text.encode(charset)
        except UnicodeEncodeError:
            continue
        for safe in _SAFE_SETS:
            for encoded in (
                quote(text, safe=safe, encoding=charset),
                quote_plus(text, safe=safe, encoding=charset),
            ):
                forms.add(encoded)
                # RFC 3986 escapes are case-insensitive; some clients print them lowercase.
                forms.add(_PERCENT_HEX.sub(lambda m: m.group(0).lower(), encoded))
    return forms


def _markup_forms(text: str) -> set[str]:
    """XML/HTML escapes: ElementTree escapes & < > in text and quotes in attributes;
    html.escape writes &#x27;, other writers &apos; or &#39;."""
    core = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    forms: set[str] = set()
    for dq in ('"', "&quot;", "&#34;"):
        for sq in ("'", "&apos;", "&#x27;", "&#39;"):
            forms.add(core.replace('"', dq).replace("'", sq))
    return forms


def _repr_forms(text: str) -> set[str]:
    """The text inside repr() or ascii(), quoted either way (a dict or a list of
    request fields in a log line): backslashes doubled, the quote escaped."""
    forms: set[str] = set()
    for q in ("'", '"'):
        for show in (repr, ascii):
            forms.add("".join("\\" + q if ch == q else show(ch)[1:-1] for ch in text))
    return forms


def _bytes_body(data: bytes, q: str) -> str:
    """What repr() of ``data`` shows between b' and ' (or b" and ")."""
    out = []
    for byte in data:
        ch = chr(byte)
        if ch == "\\" or ch == q:
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append({9: "\\t", 10: "\\n", 13: "\\r"}.get(byte, f"\\x{byte:02x}"))
    return "".join(out)


def _basic_auth_forms(login: str, password: str) -> set[str]:
    """The credentials of an Authorization: Basic header: requests encodes them as
    latin-1 where it can, other clients as UTF-8."""
    forms: set[str] = set()
    for charset in ("utf-8", "latin-1"):
        try:
            pair = f"{login}:{password}".encode(charset)
        except UnicodeEncodeError:
            continue
        forms.add(base64.b64encode(pair).decode("ascii"))
    return forms


def redact(text: str | None) -> str:
    """Return ``text`` with every known secret and every secret-bearing field masked."""
    if not text:
        return text or ""
    # Known secrets first, whole, in all their forms (see the module docstring).
    out = _mask_known(text)
    # Then the wire positions, for secrets we were never told about.
    out = _QUERY.sub(lambda m: f"{m.group(1)}={MASK}" if m.group(2) else m.group(0), out)
    out = _MAPPING.sub(lambda m: m.group(0)[: m.start(3) - m.start(0)] + MASK + m.group(2), out)
    out = _XML.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", out)
    out = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", out)
    out = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{MASK}", out)
    return out


def _mask_known(text: str) -> str:
    """Mask every character covered by an occurrence of any form of any secret.

    Occurrences may overlap (the tail of one password's form is the head of another's,
    or a form of one secret holds another secret): the spans are merged and each
    merged span becomes one mask, so no part of either is left, whatever the order.
    """
    forms, any_form = _known
    if any_form is None or any_form.search(text) is None:
        return text
    spans: list[tuple[int, int]] = []
    for form in forms:
        start = text.find(form)
        while start != -1:
            spans.append((start, start + len(form)))
            start = text.find(form, start + 1)
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:  # overlapping or adjacent: one mask
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[str] = []
    done = 0
    for start, end in merged:
        out += [text[done:start], MASK]
        done = end
    out.append(text[done:])
    return "".join(out)


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message once and redacts it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string must not hide the record, nor let logging's error
            # report print the raw arguments: keep both, redacted, unformatted.
            message = f"{record.msg} (unformattable arguments: {record.args!r})"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are formatted later from exc_info; pre-render and redact them.
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach the redacting filter to every handler of ``logger`` (root by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
