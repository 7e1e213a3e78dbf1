"""An in-memory provider for tests of the send path: no HTTP, scripted outcomes.

Everything that talks to a provider over the wire is tested against the simulator;
this stub is for logic above the adapters (routing, decisions) where a real server
adds nothing. It is a kind like any other, registered by the tests that use it
(``register_stub``) and configured as ``kind = "stub"``; having no simulator, it is
in no demo and no simulator-wide test.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import ClassVar

from dispatcher.errors import Action
from dispatcher.providers.base import (
    Balance,
    ErrorRule,
    MessageRef,
    OutgoingSms,
    Provider,
    SendOutcome,
    StatusReport,
)
from dispatcher.providers.registry import Kind, register
from dispatcher.status import Status

# A script step: given the message, return None to accept it or an error code.
Script = Callable[[OutgoingSms], str | None]

STUB = Kind("stub", "tests.stub_provider:StubProvider", None)


def register_stub() -> None:
    register(STUB)


class StubProvider(Provider):
    KIND = "stub"
    TITLE = "in-memory stub"
    DOC = ""
    MAX_BATCH = 100
    MAX_STATUS_BATCH = 100
    STATUS_BY_CLIENT_ID = True
    STATUS_MAP: ClassVar[dict[str, Status]] = {"ok": Status.ACCEPTED, "delivered": Status.DELIVERED}
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "retry": ErrorRule(Action.RETRY, "transient", "stub"),
        "failover": ErrorRule(Action.FAILOVER, "provider-level", "stub"),
        "reject": ErrorRule(Action.REJECT, "message-level", "stub", "message"),
    }

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent: list[OutgoingSms] = []
        self.script: Script = lambda msg: None
        self.amount = 1000.0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, messages: Sequence[OutgoingSms]) -> list[SendOutcome]:
        outcomes = []
        for msg in messages:
            code = self.script(msg)
            if code is not None and self.classify(code) != Action.REJECT:
                raise self.error(code, None)  # request-level: the whole call fails
            with self._lock:
                self.sent.append(msg)
                pid = f"stub-{next(self._ids)}"
            if code is None:
                outcomes.append(SendOutcome(msg.id, pid, Status.ACCEPTED, "ok"))
            else:
                outcomes.append(SendOutcome(msg.id, None, Status.UNKNOWN, code, error=self.error(code, None)))
        return outcomes

    def status(self, refs: Sequence[MessageRef]) -> list[StatusReport]:
        return [StatusReport(r.provider_message_id, Status.DELIVERED, "delivered", id=r.id) for r in refs]

    def status_by_client_id(self, ref: MessageRef) -> list[StatusReport]:
        with self._lock:
            found = [m for m in self.sent if m.id == ref.id]
        return [StatusReport(None, Status.ACCEPTED, "ok", id=ref.id) for _ in found]

    def balance(self) -> Balance:
        return Balance(self.amount, "RUB")
