"""The words of the send path, with no I/O: what a provider call came to (``Outcome``),
what we do about it (``Action``), and the ``Decision`` the ledger applies.

``dispatcher.sending.policy`` maps outcomes onto actions (one table);
``dispatcher.ledger.apply`` is the one place that turns decisions into rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from dispatcher.status import Status


class Outcome(StrEnum):
    """What one provider call (or one question about a call) came to."""

    ACCEPTED = "accepted"  # the provider took the message
    FOUND = "found"  # asked by our id after a lost reply: the provider has it
    MESSAGE_REFUSED = "message_refused"  # the message itself is bad: no provider will take it
    PROVIDER_REFUSED = "provider_refused"  # auth, funds, sender, tariff: this provider cannot serve us now
    REQUEST_REFUSED = "request_refused"  # it refused how we asked for this message (a parameter, a format)
    TRANSIENT = "transient"  # nothing went out (refused connection, 5xx, "try later")
    PROBE_FAILED = "probe_failed"  # the half-open probe's balance call failed: nothing was sent
    BREAKER_OPENED = "breaker_opened"  # the breaker opened while the call waited: nothing was sent
    IN_DOUBT_ASKABLE = "in_doubt_askable"  # no reply after the request went out; can be asked by our id
    IN_DOUBT_AT_MOST_ONCE = "in_doubt_at_most_once"  # ... cannot be asked; never resent
    IN_DOUBT_AT_LEAST_ONCE = "in_doubt_at_least_once"  # ... cannot be asked; sent again, may duplicate
    NOT_FOUND = "not_found"  # asked by our id: the provider never got it
    ASK_FAILED = "ask_failed"  # the question itself failed


class Action(StrEnum):
    """What the send path does with a message after an outcome (see ``policy.POLICY``)."""

    ACCEPT = "accept"  # -> accepted (or what the provider said), tracked from now on
    REJECT = "reject"  # -> rejected
    MARK_UNKNOWN = "mark_unknown"  # -> unknown, never resent blindly
    RETRY = "retry"  # -> queued, same provider after a backoff
    FAIL_OVER = "fail_over"  # the next provider, in this task
    RESEND = "resend"  # send again, in this task (the provider never got it)
    ASK = "ask"  # ask the provider by our id, once `reconcile_after` has passed
    WAIT = "wait"  # -> queued for a while (rate limit, a question not yet due)
    EXHAUSTED = "exhausted"  # no provider left in this round: -> queued for the next round
    GIVE_UP = "give_up"  # -> failed or expired (TTL, max attempts)


# The actions after which the same task goes on with the message.
CONTINUE: frozenset[Action] = frozenset({Action.FAIL_OVER, Action.RESEND})


@dataclass(frozen=True)
class StopNote:
    """A provider refused the message because its recipient is blacklisted or opted
    out: the number goes on the stop list (``dispatcher.stoplist``) in the transaction
    that writes the decision, listed by that provider."""

    phone: str
    scope: str  # stoplist.SCOPES
    reason: str  # the provider's code and its text


@dataclass
class Decision:
    """One message's fate after one step, as the ledger applies it."""

    message_id: str
    action: Action
    reason: str = ""
    provider: str | None = None
    # The attempt this decision finishes (None: no provider call to finish), and its word.
    attempt_id: int | None = None
    attempt_outcome: str | None = None
    attempt_started: datetime | None = None
    # The wire context, redacted by the ledger on the way in.
    http_status: int | None = None
    code: str | None = None
    raw: str | None = None
    error: str | None = None
    # ACCEPT: the provider's id and our reading of its status; GIVE_UP: failed or expired.
    status: Status | None = None
    provider_message_id: str | None = None
    # ACCEPT: what the provider reported it counted and charged (None: it did not say).
    parts: int | None = None
    cost: float | None = None
    # RETRY / WAIT / EXHAUSTED: seconds until the message is due again.
    delay: float = 0.0
    # Message counters after this step (the orchestrator keeps them per message).
    retries: int | None = None
    failovers: int | None = None
    tried: str | None = None
    # REJECT: the refusal says the recipient is blacklisted or opted out.
    stop: StopNote | None = None
    # Operator-visible hints for the status event.
    extra: dict[str, object] = field(default_factory=dict)
