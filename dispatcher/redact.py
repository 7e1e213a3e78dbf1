"""Keep provider secrets out of logs, exception texts, the ledger and Flower.

Two layers: every configured password is registered here when the configuration
loads and is replaced wherever it appears; and the wire forms that carry a secret
(query and form fields, JSON and XML elements) are masked by pattern, so that a
secret we were never told about (a typo in a config, a test account) is hidden too.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"

# The names under which the five providers take a password (my-sms `p`/`password`,
# 1000sms `password`, sms-ka `APIPassword`, SMStele `psw`, prostor `password`), plus
# the API token and Flower's basic auth of our own.
_FIELD_NAMES = r"(?:p|psw|pass|passwd|password|apipassword|api_password|token|secret|basic_auth)"
_QUERY = re.compile(rf"(?i)(?<![A-Za-z0-9_])({_FIELD_NAMES})=([^&\s\"'<>]*)")
_JSON = re.compile(rf"(?i)(\"{_FIELD_NAMES}\"\s*:\s*)\"((?:[^\"\\]|\\.)*)\"")
_XML = re.compile(rf"(?i)(<{_FIELD_NAMES}>)([^<]*)(</)")
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@/\s]+)(@)")

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that ``redact`` hides it wherever it appears."""
    # Very short values would mask innocent text ("1" in every number): the
    # patterns above still cover them in their wire positions.
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def redact(text: str | None) -> str:
    """Return ``text`` with every known secret and every secret-bearing field masked."""
    if not text:
        return text or ""
    out = _QUERY.sub(lambda m: f"{m.group(1)}={MASK}" if m.group(2) else m.group(0), text)
    out = _JSON.sub(lambda m: f'{m.group(1)}"{MASK}"', out)
    out = _XML.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", out)
    out = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", out)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
        # A password also travels percent-encoded in URLs and form bodies.
        for encoded in {quote(secret, safe=""), quote_plus(secret)}:
            if encoded != secret and encoded in out:
                out = out.replace(encoded, MASK)
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message once and redacts it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            return True
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
