"""Secrets stay out of logs, exception texts and reprs, even where requests puts the
password in a URL."""

from __future__ import annotations

import base64
import codecs
import html
import io
import json
import logging
import pickle
import re
import socket
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus, urlencode

import pytest
import requests

from dispatcher import config
from dispatcher.errors import ProviderError
from dispatcher.providers import make_provider, registry
from dispatcher.providers.base import MessageRef, Provider
from dispatcher.redact import MASK, RedactingFilter, install_log_redaction, redact, register_secret
from tests.conftest import sms


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET /rest/sms/send/json?u=me&p=hunter22&d=7916", "hunter22"),
        ("login=test:http&psw=~test123&phones=7916", "~test123"),
        ("APIKey=k&APIPassword=Zx9-Qw&MSISDN=7", "Zx9-Qw"),
        ('{"login": "a", "password": "p\\"ss-word"}', 'p\\"ss-word'),
        ("<auth><username>u</username><password>xml-secret</password></auth>", "xml-secret"),
        ("redis://user:redis-pass@host:6379/0", "redis-pass"),
    ],
)
def test_wire_forms_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and MASK in out


def test_registered_secret_is_masked_anywhere_even_encoded() -> None:
    register_secret("p@ss wörd/42")
    assert "p@ss" not in redact("free text p@ss wörd/42 and p%40ss+w%C3%B6rd%2F42")


@pytest.fixture
def redacted_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog behind the redacting filter, taken off again afterwards: pytest keeps the
    handler across tests, and the filter (which renders and drops exc_info) would strip
    the tracebacks every later test's records carry."""
    redacting = RedactingFilter()
    caplog.handler.addFilter(redacting)
    yield caplog
    caplog.handler.removeFilter(redacting)


def test_log_filter_masks_arguments_and_tracebacks(redacted_caplog: pytest.LogCaptureFixture) -> None:
    caplog = redacted_caplog
    logger = logging.getLogger("test.redaction")
    try:
        raise RuntimeError("failed url ?psw=trace-secret")
    except RuntimeError:
        logger.exception("calling %s", "http://h/x?p=arg-secret")
    text = caplog.text
    assert "arg-secret" not in text and "trace-secret" not in text
    assert "calling" in text


def test_requests_error_with_password_in_url_is_redacted(provider_for: Callable[..., Provider]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = provider_for(
        "mysms", http_method="get", password="Url-Borne-Secret", base_url=f"http://127.0.0.1:{port}/rest/sms/"
    )
    # requests itself puts the whole URL, password and all, in its exception:
    with pytest.raises(requests.ConnectionError) as raw:
        requests.get(f"http://127.0.0.1:{port}/rest/sms/credit/json?u=a&p=Url-Borne-Secret", timeout=1)
    assert "Url-Borne-Secret" in str(raw.value)
    # ours does not, in any of its forms, and does not chain the original.
    with pytest.raises(ProviderError) as info:
        provider.send([sms()])
    err = info.value
    for text in (str(err), repr(err), str(pickle.loads(pickle.dumps(err)))):
        assert "Url-Borne-Secret" not in text
    assert err.__cause__ is None and err.__suppress_context__


def test_debug_log_of_a_get_call_is_redacted(
    provider_for: Callable[..., Provider], redacted_caplog: pytest.LogCaptureFixture
) -> None:
    caplog = redacted_caplog
    caplog.set_level(logging.DEBUG, logger="smsdispatch.providers")
    provider = provider_for("mysms", http_method="get")
    provider.send([sms()])
    assert "p=" in caplog.text and provider.config.password not in caplog.text


# -- known secrets in every encoding (issue 12, item 6) ---------------------------------

# Passwords holding what breaks a pattern-first redaction: `&`, `=`, `&p=` (a second
# field name inside the value), both quotes, a backslash, `%`, `+`, a space, Cyrillic.
PASSWORDS = [
    'пароль&p=1"\\',
    "Ab&p=Cd=Ef'Gh",
    "sp ace+plus%25\"q'",
    "Секрет&ид=42\\x",
    "a\"b\\c&d=e'f пар",
]
LOGIN = "acme-login"
CHARSETS = ("utf-8", "cp1251", "koi8-r")


def _xml_text(secret: str) -> str:
    element = ET.Element("v")
    element.text = secret
    return ET.tostring(element, encoding="unicode")[len("<v>") : -len("</v>")]


def _xml_attribute(secret: str) -> str:
    return ET.tostring(ET.Element("v", a=secret), encoding="unicode")[len('<v a="') : -len('" />')]


def _basic(secret: str) -> str:
    return base64.b64encode(f"{LOGIN}:{secret}".encode()).decode("ascii")


# Each form a secret takes on the wire or in a log line, the secret alone (no field name).
ENCODINGS: dict[str, Callable[[str], str]] = {
    "as is": lambda s: s,
    "JSON": lambda s: json.dumps(s)[1:-1],
    "JSON, ensure_ascii=False": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "quote, safe=''": lambda s: quote(s, safe=""),
    "quote, default safe": lambda s: quote(s),
    "quote_plus": lambda s: quote_plus(s),
    "quote_plus cp1251 (SMStele windows-1251)": lambda s: quote_plus(s, encoding="cp1251"),
    "quote koi8-r (SMStele koi8-r)": lambda s: quote(s, safe="", encoding="koi8-r"),
    "quote, lowercase hex": lambda s: re.sub(
        r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(s, safe="")
    ),
    "XML text": _xml_text,
    "XML attribute": _xml_attribute,
    "html.escape": lambda s: html.escape(s),
    "repr": lambda s: repr(s),
    "ascii": lambda s: ascii(s),
    "bytes repr UTF-8": lambda s: repr(s.encode()),
    "bytes repr cp1251": lambda s: repr(s.encode("cp1251")),
    "repr of JSON": lambda s: repr(json.dumps(s)),
    "JSON of JSON": lambda s: json.dumps(json.dumps(s)),
    "percent-encoded JSON": lambda s: quote_plus(json.dumps(s)[1:-1]),
    "Basic auth": _basic,
}


def _backslash_readings(text: str) -> set[str]:
    """``text`` with JSON's \\uXXXX and Python's escapes undone, read in each charset."""
    unicode_undone = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    out = {unicode_undone}
    try:
        with warnings.catch_warnings():  # "invalid escape sequence": kept as is, as wanted
            warnings.simplefilter("ignore", DeprecationWarning)
            data = codecs.escape_decode(unicode_undone.encode("utf-8"))[0]
    except ValueError:  # a lone trailing backslash
        return out
    assert isinstance(data, bytes)
    return out | {data.decode(charset, errors="replace") for charset in CHARSETS}


def readings(text: str) -> set[str]:
    """Every way a reader could decode ``text``, up to two layers deep: percent-decoding
    in each charset, XML/HTML entities, JSON and Python backslash escapes."""
    seen = {text}
    layer = {text}
    for _ in range(2):
        nxt: set[str] = set()
        for t in layer:
            nxt.add(html.unescape(t))
            nxt |= {unquote_plus(t, encoding=charset, errors="replace") for charset in CHARSETS}
            nxt |= _backslash_readings(t)
        layer = nxt - seen
        seen |= nxt
    return seen


def leaks(text: str, secret: str) -> list[str]:
    """The parts of ``secret`` (4 characters or more) that any reading of ``text`` shows.
    Every longer part holds a 4-character one, so those are enough."""
    parts = {secret[i : i + 4] for i in range(len(secret) - 3)}
    return sorted({p for reading in readings(text) for p in parts if p in reading})


@pytest.mark.parametrize("secret", PASSWORDS)
def test_known_secret_is_masked_whole_in_every_encoding(secret: str) -> None:
    register_secret(secret, login=LOGIN)
    found = {}
    for name, encode in ENCODINGS.items():
        encoded = encode(secret)
        # The check itself: unredacted, every encoding but base64 reads back to the secret.
        assert name == "Basic auth" or leaks(f"before <{encoded}> after", secret), name
        out = redact(f"before <{encoded}> after")
        # The text around stays as it was; the secret went whole, no piece of it or of
        # its encoded form is left.
        if not (out.startswith("before <") and out.endswith("> after") and MASK in out):
            found[name] = out
            continue
        shown = leaks(out, secret)
        shown += [encoded[i : i + 4] for i in range(len(encoded) - 3) if encoded[i : i + 4] in out]
        if shown:
            found[name] = f"{out!r} shows {shown}"
    assert not found, found


@pytest.mark.parametrize("secret", PASSWORDS)
def test_known_secret_in_a_field_goes_before_the_patterns(secret: str) -> None:
    # A query or form field: the pattern alone would stop at the `&` inside the password.
    register_secret(secret, login=LOGIN)
    for text in (
        f"u=me&p={secret}&d=79161234567",
        f"login=me&psw={quote_plus(secret, encoding='cp1251')}&phones=79161234567",
        f"{{'login': 'me', 'password': {secret!r}, 'phones': '79161234567'}}",
        json.dumps({"auth": {"password": secret}, "phones": "79161234567"}),
    ):
        out = redact(text)
        assert not leaks(out, secret), (text, out)
        assert "79161234567" in out, out


def test_overlapping_secrets_leave_no_part() -> None:
    # The tail of one secret is the head of another: masking one whole first would
    # leave the rest of the other.
    register_secret("Overlap-AAAA")
    register_secret("AAAA-tail-xyz")
    out = redact("x Overlap-AAAA-tail-xyz y")
    assert out == f"x {MASK} y"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Basic dW5yZWc6c2VjcmV0LXB3", "dW5yZWc6c2VjcmV0LXB3"),
        ("headers={'Authorization': 'Bearer unreg-bearer-tok'}", "unreg-bearer-tok"),
        ("{'Proxy-Authorization': 'Basic cHJveHk6cHctMTIz'}", "cHJveHk6cHctMTIz"),
        ("data={'login': 'x', 'password': 'unreg-py-secret'}", "unreg-py-secret"),
        ("data={'login': 'x', 'psw': \"it's-unreg\"}", "it's-unreg"),
    ],
)
def test_unregistered_secrets_in_headers_and_reprs_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and MASK in out, out


def test_flower_basic_auth_and_api_token_are_masked_in_their_wire_forms() -> None:
    user, password, token = "ops", 'Flower&p=1"пароль', "tok&p=\\en-Токен"
    config.parse({"flower": {"basic_auth": f"{user}:{password}"}, "api": {"token": token}})
    header = base64.b64encode(f"{user}:{password}".encode()).decode()
    out = redact(f"creds {header}; token {json.dumps(token)}; url ?x={quote_plus(token)}&y=1")
    assert header not in out and not leaks(out, password) and not leaks(out, token), out
    assert out.startswith("creds ") and out.endswith("&y=1"), out


def test_log_records_with_arguments_are_redacted_through_install_log_redaction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = PASSWORDS[0]
    register_secret(secret, login=LOGIN)
    stream = io.StringIO()
    logger = logging.getLogger("test.redaction.install")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        install_log_redaction(logger)
        body = urlencode({"login": LOGIN, "psw": secret, "mes": "Привет"}, encoding="cp1251").encode()
        logger.warning(
            "POST %s fields %r", "http://h/cgibin/sendsms", {"psw": secret, "phones": "79161234567"}
        )
        logger.warning("send: %r", body)  # as http.client's debug output shows a body
        logger.warning(
            "json %s", json.dumps({"auth": {"password": secret}, "text": "Привет"}, ensure_ascii=False)
        )
        logger.warning("broken format %s %s", secret)  # one argument short
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert not leaks(text, secret), text
    assert not leaks(capsys.readouterr().err, secret)  # logging's own error report
    assert "79161234567" in text and "Привет" in text and "broken format" in text


def _variants(kind: str) -> list[dict[str, Any]]:
    """Option sets that change what an adapter puts on the wire."""
    return {
        "mysms": [{"format": f, "http_method": m} for f in ("json", "xml") for m in ("post", "get")],
        "sms1000": [{"format": "json"}, {"format": "xml"}],
        "smstele": [{"charset": c} for c in ("utf-8", "windows-1251", "koi8-r")],
    }.get(kind, [{}])


def test_what_each_adapter_puts_on_the_wire_is_redacted() -> None:
    from dispatcher.simulator.defaults import default_settings_table

    found = []
    for secret in PASSWORDS:
        for kind in registry.kinds():
            for options in _variants(kind):
                table = default_settings_table()
                provider_table = table["providers"][kind]
                provider_table.update(password=secret, **options)
                table["providers"] = {kind: provider_table}
                provider = make_provider(config.parse(table).provider(kind))
                wire = [provider.build_send([sms(text="Привет, мир")])]
                wire.append(provider.build_status([MessageRef("a" * 32, "12345", "79161234567")]))
                if provider.HAS_BALANCE:
                    wire.append(provider.build_balance())
                for request in wire:
                    prepared = requests.Request(
                        request.method,
                        provider.url(request.path),
                        params=request.params,
                        data=request.data,
                        json=request.json,
                        headers=request.headers,
                    ).prepare()
                    body = prepared.body or b""
                    raw = body if isinstance(body, bytes) else body.encode()
                    texts = {
                        "url": prepared.url or "",
                        "body": raw.decode("utf-8", errors="replace"),
                        "body repr": repr(raw),  # as http.client's debug output shows it
                        "headers": str(dict(prepared.headers)),
                    }
                    for name, text in texts.items():
                        shown = leaks(redact(text), secret)
                        if shown:
                            found.append((kind, options, secret, name, shown))
                    assert secret in repr(texts) or leaks(repr(texts), secret)  # it was there
                provider.close()
    assert not found, found
