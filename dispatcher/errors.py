"""The exception tree.

Provider errors are split by what the pipeline should do about them, one class per
decision (stripe-python style): ``RetryableError`` (try the same provider again after
a backoff), ``FailoverError`` (this provider cannot serve us now: go to the next) and
``RejectedError`` (the message itself is bad: no provider will take it). Each carries
the wire context, with secrets already redacted.

``ConfigError`` and ``ValidationError`` sit outside the provider hierarchy on purpose,
so that retry code catching ``ProviderError`` can never swallow them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Action(StrEnum):
    RETRY = "retry"
    FAILOVER = "failover"
    REJECT = "reject"


class SmsDispatchError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SmsDispatchError):
    """The configuration is wrong; ``key`` names the offending setting."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"config: {key}: {reason}")


class ValidationError(SmsDispatchError, ValueError):
    """Bad input from a producer; ``field`` names it. Nothing was stored or sent."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class IdempotencyConflict(ValidationError):
    """The key was used before with a different payload (HTTP 409)."""


class LimitExceeded(ValidationError):
    """A limit refused the request (HTTP 429 with ``Retry-After``): ``code`` says which
    (``quota``: the client's daily quota; ``recipient_rate``: too many to one number).
    Nothing was stored or sent."""

    def __init__(self, field: str, reason: str, *, code: str, retry_after: float) -> None:
        super().__init__(field, reason)
        self.code = code
        self.retry_after = retry_after


class ProviderError(SmsDispatchError):
    """A provider call failed. Carries the wire context, redacted."""

    action: ClassVar[Action]

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        kind: str,
        http_status: int | None = None,
        code: str | None = None,
        raw: str | None = None,
        ambiguous: bool = False,
        about: str = "provider",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.kind = kind
        self.http_status = http_status
        self.code = code
        self.raw = raw
        # True when the request may have reached the provider and been acted upon
        # (a read timeout on a send): the message may have gone out.
        self.ambiguous = ambiguous
        # Whose fault (providers.base.ABOUT): "request" and "account" need an operator.
        self.about = about

    def __str__(self) -> str:
        parts = [f"{self.provider} ({self.kind}): {self.message}"]
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.raw:
            raw = self.raw if len(self.raw) <= 300 else self.raw[:300] + "..."
            parts.append(f"raw={raw!r}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self!s})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive pickling by default; Celery pickles
        # exceptions into results and events.
        return (
            _rebuild_provider_error,
            (
                type(self),
                self.message,
                self.provider,
                self.kind,
                self.http_status,
                self.code,
                self.raw,
                self.ambiguous,
                self.about,
            ),
        )


def _rebuild_provider_error(
    cls: type[ProviderError],
    message: str,
    provider: str,
    kind: str,
    http_status: int | None,
    code: str | None,
    raw: str | None,
    ambiguous: bool,
    about: str = "provider",
) -> ProviderError:
    return cls(
        message,
        provider=provider,
        kind=kind,
        http_status=http_status,
        code=code,
        raw=raw,
        ambiguous=ambiguous,
        about=about,
    )


class RetryableError(ProviderError):
    """Transient: timeouts, 5xx, the provider's own internal errors, "try later"."""

    action = Action.RETRY


class FailoverError(ProviderError):
    """The provider cannot serve us now: auth, blocked account, funds, sender, tariff."""

    action = Action.FAILOVER


class RejectedError(ProviderError):
    """The message itself is bad: invalid or blacklisted number, forbidden text."""

    action = Action.REJECT


ERROR_CLASS: dict[Action, type[ProviderError]] = {
    Action.RETRY: RetryableError,
    Action.FAILOVER: FailoverError,
    Action.REJECT: RejectedError,
}
