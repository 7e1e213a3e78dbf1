"""The outcome policy: what happens to a message after a provider call, as one table.

``classify`` reads a call's result into one ``Outcome`` (the only function that looks
at error classes and the provider's capabilities, like stripe-python's error mapping);
``POLICY`` gives each outcome its action, one row per outcome; ``decide`` looks the row
up. Nothing else in the send path chooses between retrying, failing over, rejecting
and asking.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from dispatcher.decisions import Action, Outcome
from dispatcher.errors import Action as ErrorKind
from dispatcher.errors import ProviderError


class Health(StrEnum):
    """What an outcome says about the provider, for its circuit breaker."""

    GOOD = "good"  # it answered sensibly (a refusal of the message included)
    BAD = "bad"  # it failed us: counts towards opening the breaker
    NONE = "none"  # says nothing new (a question about an earlier call)


@dataclass(frozen=True)
class Rule:
    action: Action
    # What to do instead once the provider's `max_retries` are used up (None: never).
    exhausted: Action | None
    attempt: str  # the attempt's outcome word in the ledger
    health: Health
    why: str


POLICY: dict[Outcome, Rule] = {
    Outcome.ACCEPTED: Rule(Action.ACCEPT, None, "accepted", Health.GOOD, "the provider took it"),
    Outcome.FOUND: Rule(Action.ACCEPT, None, "reconciled", Health.NONE,
                        "asked by our id: the provider has it, not resent"),
    Outcome.MESSAGE_REFUSED: Rule(Action.REJECT, None, "reject", Health.GOOD,
                                  "the provider refused the message itself"),
    Outcome.PROVIDER_REFUSED: Rule(Action.FAIL_OVER, None, "failover", Health.BAD,
                                   "the provider cannot serve us now"),
    # Says nothing about the provider's health: a run of, say, numbers one provider's
    # format check refuses (sms-ka.net -6) must not open its breaker for everyone.
    Outcome.REQUEST_REFUSED: Rule(Action.FAIL_OVER, None, "failover", Health.NONE,
                                  "the provider refused our request for this message: another may take it"),
    Outcome.TRANSIENT: Rule(Action.RETRY, Action.FAIL_OVER, "retry", Health.BAD, "transient"),
    Outcome.PROBE_FAILED: Rule(Action.FAIL_OVER, None, "not_sent", Health.BAD,
                               "half-open probe: the balance call failed, nothing was sent"),
    Outcome.BREAKER_OPENED: Rule(Action.FAIL_OVER, None, "not_sent", Health.NONE,
                                 "the breaker opened while the call waited its turn: nothing was sent"),
    Outcome.IN_DOUBT_ASKABLE: Rule(Action.ASK, None, "unconfirmed", Health.BAD,
                                   "no reply after the request went out: ask by our id"),
    Outcome.IN_DOUBT_AT_MOST_ONCE: Rule(Action.MARK_UNKNOWN, None, "ambiguous", Health.BAD,
                                        "no reply after the request went out; not resent (at-most-once)"),
    Outcome.IN_DOUBT_AT_LEAST_ONCE: Rule(Action.RETRY, Action.FAIL_OVER, "ambiguous", Health.BAD,
                                         "no reply after the request went out; sent again (at-least-once,"
                                         " may duplicate)"),
    Outcome.NOT_FOUND: Rule(Action.RESEND, None, "lost", Health.NONE,
                            "asked by our id: the provider never got it, sending again"),
    Outcome.ASK_FAILED: Rule(Action.WAIT, None, "unconfirmed", Health.NONE,
                             "could not ask the provider by our id: asking again later"),
}  # fmt: skip


def classify(err: ProviderError, *, can_ask: bool, guarantee: str) -> Outcome:
    """The outcome of a send call that failed with ``err``. A call in doubt (the
    request went out, no reply came) is read by what the provider lets us do about
    it: ask by our id, or follow its ``delivery_guarantee``."""
    if err.action == ErrorKind.REJECT:
        return Outcome.MESSAGE_REFUSED
    if err.action == ErrorKind.FAILOVER:
        return Outcome.REQUEST_REFUSED if err.about == "request" else Outcome.PROVIDER_REFUSED
    if err.ambiguous:
        if can_ask:
            return Outcome.IN_DOUBT_ASKABLE
        return (
            Outcome.IN_DOUBT_AT_LEAST_ONCE if guarantee == "at-least-once" else Outcome.IN_DOUBT_AT_MOST_ONCE
        )
    return Outcome.TRANSIENT


def lost_outcome(*, guarantee: str) -> Outcome:
    """A call whose outcome we can no longer learn (a dead worker, a provider we
    could not ask in time): its guarantee settles it."""
    return Outcome.IN_DOUBT_AT_LEAST_ONCE if guarantee == "at-least-once" else Outcome.IN_DOUBT_AT_MOST_ONCE


@dataclass(frozen=True)
class Verdict:
    action: Action
    rule: Rule
    delay: float = 0.0


def decide(outcome: Outcome, *, retries: int, max_retries: int, backoff_base: float,
           backoff_cap: float) -> Verdict:  # fmt: skip
    """The table's row for ``outcome``, with its fallback once retries are used up
    and the backoff of a retry."""
    rule = POLICY[outcome]
    action = rule.action
    if action == Action.RETRY and retries >= max_retries and rule.exhausted is not None:
        action = rule.exhausted
    delay = backoff(retries, backoff_base, backoff_cap) if action in (Action.RETRY, Action.WAIT) else 0.0
    return Verdict(action, rule, delay)


def backoff(retries: int, base: float, cap: float) -> float:
    """Capped exponential backoff with jitter (half fixed, half random)."""
    ceiling = min(cap, base * (2.0**retries))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))
