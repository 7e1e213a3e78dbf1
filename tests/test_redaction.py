"""Secrets stay out of logs, exception texts and reprs, even where requests puts the
password in a URL."""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Callable

import pytest
import requests

from dispatcher.errors import ProviderError
from dispatcher.providers.base import Provider
from dispatcher.redact import MASK, RedactingFilter, redact, register_secret
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


def test_log_filter_masks_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    caplog.handler.addFilter(RedactingFilter())
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
    provider_for: Callable[..., Provider], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="smsdispatch.providers")
    caplog.handler.addFilter(RedactingFilter())
    provider = provider_for("mysms", http_method="get")
    provider.send([sms()])
    assert "p=" in caplog.text and provider.config.password not in caplog.text
