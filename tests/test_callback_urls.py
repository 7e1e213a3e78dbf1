"""Callback URLs a client key may set, the guarded connection, and the signature."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import requests

from dispatcher import callbacks
from dispatcher.errors import ValidationError
from dispatcher.simulator.receiver import Receiver

REFUSED = [
    ("http://127.0.0.1/cb", "loopback"),
    ("http://[::1]:8080/cb", "loopback"),
    ("http://10.0.0.7/cb", "private"),
    ("http://172.16.5.4/cb", "private"),
    ("http://172.31.255.254/cb", "private"),
    ("http://192.168.1.10/cb", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://100.100.100.200/", "metadata"),
    ("http://100.64.0.1/cb", "not a public"),
    ("http://0.0.0.0:80/cb", "unspecified"),
    ("http://[::ffff:127.0.0.1]/cb", "127.0.0.1"),
    ("http://[fd00::1]/cb", "private"),
    ("http://[fec0::1]/cb", "site-local"),
    ("http://[fe80::1]/cb", "link-local"),
    ("http://224.0.0.1/cb", "multicast"),
    ("http://localhost:9/cb", "resolves to"),
    ("http://2130706433/cb", "loopback"),  # 127.0.0.1 as one number
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_non_public_addresses_are_refused_unless_allowed(url: str, why: str) -> None:
    problem = callbacks.check_url(url, allow_private=False)
    assert problem is not None and why in problem, problem
    assert callbacks.check_url(url, allow_private=True) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme"),
        ("ftp://example.com/", "scheme"),
        ("http://user:pw@example.com/cb", "user info"),
        ("http://token@example.com/cb", "user info"),
        ("http:///nohost", "no host"),
        ("http://example.com/" + "a" * 2000, "longer than"),
        ("http://exa mple.com/", "whitespace"),
        ("http://does-not-exist.invalid/cb", "does not resolve"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_malformed_urls_are_refused_even_when_private_is_allowed(url: str, why: str) -> None:
    for allow in (False, True):
        problem = callbacks.check_url(url, allow_private=allow)
        assert problem is not None and why in problem, problem


def test_a_public_address_passes() -> None:
    assert callbacks.check_url("https://93.184.215.14/hooks/sms?token=x", allow_private=False) is None


def test_task_names() -> None:
    assert (
        callbacks.check_task_name("myapp.tasks:on_status-v2", "callback_task") == "myapp.tasks:on_status-v2"
    )
    for bad in ("", "a b", "x" * 201, "ok\n", "имя", "a/b"):
        with pytest.raises(ValidationError) as info:
            callbacks.check_task_name(bad, "callback_task")
        assert info.value.field == "callback_task"


def test_signature_vector_computed_independently() -> None:
    secret, timestamp, body = "whsec_test-secret", 1700000000, b'{"id":"abc","status":"delivered"}'
    expected = hmac.new(secret.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert callbacks.sign(secret, timestamp, body) == "sha256=" + expected
    # A fixed vector, so that a change of the scheme shows as a failing test.
    assert callbacks.sign("k", 0, b"") == "sha256=" + hmac.new(b"k", b"0.", hashlib.sha256).hexdigest()


def test_verify_accepts_fresh_and_refuses_stale_tampered_or_foreign() -> None:
    secret, body = "whsec_test-secret", b'{"id":"abc","status":"delivered"}'
    now = int(time.time())
    signature = callbacks.sign(secret, now, body)
    assert callbacks.verify(secret, str(now), signature, body)
    assert not callbacks.verify(secret, str(now), signature, body.replace(b"delivered", b"failed"))
    assert not callbacks.verify("whsec_other", str(now), signature, body)
    stale = now - 301
    assert not callbacks.verify(secret, str(stale), callbacks.sign(secret, stale, body), body)
    assert callbacks.verify(secret, str(stale), callbacks.sign(secret, stale, body), body, tolerance=600)
    assert not callbacks.verify(secret, None, signature, body)
    assert not callbacks.verify(secret, "soon", signature, body)
    assert not callbacks.verify(secret, str(now), None, body)


def test_the_connection_itself_refuses_a_loopback_peer() -> None:
    """What DNS rebinding would do: the name passed the check, the socket lands on
    127.0.0.1. The guarded session refuses after connect, before a byte is sent."""
    with Receiver() as receiver:
        guarded = callbacks._http_session(allow_private=False)
        with pytest.raises(requests.ConnectionError) as info:
            guarded.post(receiver.url, data=b"{}", timeout=2)
        refused = callbacks._refusal(info.value)
        assert refused is not None and "loopback" in str(refused)
        assert receiver.received == []
        open_session = callbacks._http_session(allow_private=True)
        assert open_session.post(receiver.url, data=b"{}", timeout=2).status_code == 200
        assert len(receiver.wait_for(1)) == 1
