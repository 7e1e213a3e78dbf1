"""The send pipeline: claim a message, pick a provider, call it, decide.

What to do after a failed call is decided by one function per error kind
(``on_retryable``, ``on_failover``, ``on_rejected``), looked up by the error's
action; nothing else in this module branches on error types.

Delivery guarantees. A call that got no reply after the request went out (a read
timeout, a reset) may have been acted on. Where the provider can be asked by our
own id (SMStele), we ask before anything else is sent. Elsewhere the provider's
``delivery_guarantee`` decides: ``at-most-once`` marks the message ``unknown`` and
never resends it; ``at-least-once`` sends again and marks the attempt ambiguous.
A worker that dies mid-call leaves an ``in_flight`` attempt that ``recover`` reads
the same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, col
from sqlmodel import select as orm_select

from dispatcher import ledger
from dispatcher.config import ProviderConfig, Settings
from dispatcher.coordination import PROBE, Coordinator
from dispatcher.db import session_scope, write_through_outage
from dispatcher.errors import Action, ProviderError, RetryableError
from dispatcher.models import Attempt, Message, utcnow
from dispatcher.providers import make_provider
from dispatcher.providers.base import MessageRef, OutgoingSms, Provider, SendOutcome, StatusReport
from dispatcher.status import Status

log = logging.getLogger("smsdispatch.pipeline")

Publish = Callable[[str, str, float], None]  # (message id, priority, countdown seconds)

MAX_COUNTDOWN = 10.0  # longer waits go through the ledger and the sweeper, not broker ETAs


# -- decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class CallContext:
    """What a decision needs to know about the call that failed."""

    retries: int  # retries already made on this provider in this round
    max_retries: int
    can_reconcile: bool  # the provider can be asked by our id
    guarantee: str  # at-most-once | at-least-once
    backoff_base: float
    backoff_cap: float


@dataclass(frozen=True)
class Decision:
    action: str  # retry | failover | reject | reconcile | unknown
    delay: float = 0.0
    reason: str = ""


def backoff(retries: int, base: float, cap: float) -> float:
    """Capped exponential backoff with jitter (half fixed, half random)."""
    ceiling = min(cap, base * (2.0**retries))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def on_retryable(err: ProviderError, ctx: CallContext) -> Decision:
    if err.ambiguous:
        if ctx.can_reconcile:
            return Decision("reconcile", reason="no reply after the request went out: ask by our id")
        if ctx.guarantee == "at-most-once":
            return Decision(
                "unknown", reason="no reply after the request went out; not resent (at-most-once)"
            )
    if ctx.retries < ctx.max_retries:
        return Decision("retry", backoff(ctx.retries, ctx.backoff_base, ctx.backoff_cap), "transient")
    return Decision("failover", reason=f"still failing after {ctx.retries} retries")


def on_failover(err: ProviderError, ctx: CallContext) -> Decision:
    return Decision("failover", reason="the provider cannot serve us now")


def on_rejected(err: ProviderError, ctx: CallContext) -> Decision:
    return Decision("reject", reason="the provider refused the message itself")


DECIDE: dict[Action, Callable[[ProviderError, CallContext], Decision]] = {
    Action.RETRY: on_retryable,
    Action.FAILOVER: on_failover,
    Action.REJECT: on_rejected,
}


def decide(err: ProviderError, ctx: CallContext) -> Decision:
    return DECIDE[err.action](err, ctx)


# -- the pipeline ---------------------------------------------------------------------


def lease_of(config: ProviderConfig) -> float:
    """How long a claim may look alive: one call's worst case plus a margin."""
    return config.connect_timeout + config.timeout + 5.0


class SendPipeline:
    def __init__(self, settings: Settings, publish: Publish, coordinator: Coordinator) -> None:
        self.settings = settings
        self.publish = publish
        self.coordinator = coordinator
        self._providers: dict[str, Provider] = {}

    def provider(self, name: str) -> Provider:
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = make_provider(self.settings.provider(name))
        return found

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()
        self._providers.clear()

    @property
    def max_lease(self) -> float:
        return max((lease_of(p) for p in self.settings.providers), default=20.0)

    # -- entry points ------------------------------------------------------------------

    def process(self, message_id: str) -> str:
        """Run one send task for a message. Returns a short word for logs and tests."""
        now = utcnow()
        with session_scope() as s:
            msg = ledger.get(s, message_id)
            if msg is None:
                return "missing"
            status = Status(msg.status)
            if status == Status.QUEUED and msg.due_at > now + timedelta(seconds=0.5):
                # Early (an ETA that fired ahead, or a second copy of a delayed task).
                wait = (msg.due_at - now).total_seconds()
                if wait <= MAX_COUNTDOWN:
                    self.publish(message_id, msg.priority, wait)
                return "early"
            route = self._batch_route(msg) if status == Status.QUEUED else None
            claimed = None
            if route is None:
                claimed = ledger.transition(
                    s,
                    message_id,
                    Status.SENDING,
                    source="send",
                    expect={Status.QUEUED},
                    fields={"claimed_at": now},
                )
        if route is not None:
            # Wait a moment for others due for the same provider, outside any
            # transaction, then claim, send and write back all of them together; the
            # mates' own tasks find them taken and do nothing.
            time.sleep(self.settings.pipeline.linger)
            self.process_many([message_id, *self._mates(msg, route)])
            with session_scope() as s:
                after = ledger.get(s, message_id)
            return after.status if after is not None else "missing"
        if claimed is None:
            return self._not_claimed(msg, status)
        return self._run(message_id)

    def _batch_route(self, msg: Message) -> Provider | None:
        """The provider a message would wait for company for: its first choice, when
        that takes batches and the message is a never-tried normal one. None: it goes
        alone (one-time codes never wait)."""
        if self.settings.pipeline.linger <= 0 or msg.priority == "high" or msg.attempts or msg.tried:
            return None
        name = self._first_choice(msg.id, msg.provider_pinned)
        if name is None or name not in {p.name for p in self.settings.enabled_providers}:
            return None
        provider = self.provider(name)
        if provider.batch_size <= 1 or provider.STATUS_BY_CLIENT_ID:
            return None  # see process_many: SMStele stays one message per call
        if provider.config.rate_limit > 0:
            return None  # a batch would reach it as a burst: it gets messages at its pace
        return provider

    def _first_choice(self, message_id: str, pinned: str | None) -> str | None:
        return pinned or next(iter(self._route_order(message_id)), None)

    def _mates(self, msg: Message, route: Provider) -> list[str]:
        """Other messages due for the same provider as ``msg``, up to a full batch."""
        with session_scope() as s:
            candidates = ledger.due_mates(s, msg, utcnow(), 2 * route.batch_size)
        # Unpinned messages share equal-priority providers by id: keep those whose first
        # choice is this one, so the others keep their share.
        same = [m for m in candidates if self._first_choice(m, msg.provider_pinned) == route.name]
        return same[: route.batch_size - 1]

    def process_many(self, message_ids: Sequence[str]) -> dict[str, int]:
        """Run one task for many messages (a chunk of a bulk call): claim them in one
        statement, send those routed to a provider that takes batches in as few calls
        as it allows, write the results back in bulk. A message whose send failed
        goes on alone through the per-message path, so it affects no other."""
        now = utcnow()
        counts: dict[str, int] = defaultdict(int)
        with session_scope() as s:
            claimed = ledger.transition_many(
                s, [{"id": m} for m in message_ids], Status.SENDING, expect=Status.QUEUED,
                source="send", due_before=now, also={"claimed_at": now},
            )  # fmt: skip
            messages = list(s.exec(orm_select(Message).where(col(Message.id).in_(claimed))))
        counts["skipped"] = len(message_ids) - len(claimed)
        groups: dict[str, list[Message]] = defaultdict(list)
        single: list[Message] = []
        allowed: dict[str, bool] = {}  # one breaker question per provider for the whole chunk
        for msg in messages:
            if now >= msg.expires_at or msg.attempts >= self.settings.pipeline.max_attempts or msg.tried:
                single.append(msg)  # the per-message path knows what to do with these
                continue
            provider = self._pick(msg, allowed)
            # SMStele's lookup by our own id is what makes a lost reply safe to settle;
            # in a shared call every message carries the first one's id, so it stays
            # one message per call here.
            if provider is None or provider.batch_size <= 1 or provider.STATUS_BY_CLIENT_ID:
                single.append(msg)
            else:
                groups[provider.name].append(msg)
        for name, group in groups.items():
            provider = self.provider(name)
            for start in range(0, len(group), provider.batch_size):
                for word in self._call_batch(group[start : start + provider.batch_size], provider):
                    counts[word] += 1
        for msg in single:
            counts[self._run(msg.id)] += 1
        return dict(counts)

    def _call_batch(self, batch: list[Message], provider: Provider) -> list[str]:
        cfg = provider.config
        needed = len(batch)
        while needed:  # the rate limit counts messages, not calls
            wait = self.coordinator.rate_acquire(provider.name, cfg.rate_limit)
            if wait > 0:
                time.sleep(min(wait, 1.0))
            else:
                needed -= 1
        with session_scope() as s:
            attempt_ids = ledger.start_attempts(s, [m.id for m in batch], provider.name, provider.KIND)
        outgoing = [OutgoingSms(id=m.id, to=m.to, text=m.text, sender=m.sender or cfg.sender) for m in batch]
        try:
            outcomes = {o.id: o for o in provider.send(outgoing)}
        except ProviderError as exc:
            # The whole call failed: each message decides alone, as if sent alone.
            self._breaker_failure(provider.name)
            return [self._continue(m, self._after_error(m, provider, attempt_ids[m.id], exc)) for m in batch]
        now = utcnow()
        first_poll = now + timedelta(seconds=self.settings.polling.intervals[0])
        accepted = [m for m in batch if m.id in outcomes and outcomes[m.id].ok]
        if accepted:
            self._breaker_success(provider.name)
        by_status: dict[Status, list[dict[str, object]]] = defaultdict(list)
        for m in accepted:
            o = outcomes[m.id]
            taken: Status = o.status if o.status not in (Status.UNKNOWN, Status.QUEUED) else Status.ACCEPTED
            by_status[taken].append({
                "id": m.id, "provider": provider.name, "provider_message_id": o.provider_message_id,
                "accepted_at": now, "next_poll_at": first_poll,
                "retries": 0, "tried": "", "last_error": None, "_raw": o.raw_status,
            })  # fmt: skip

        def write() -> None:
            with session_scope() as s:
                ledger.finish_attempts(
                    s,
                    [{"id": attempt_ids[m.id], "outcome": "accepted", "raw": outcomes[m.id].raw_status}
                     for m in accepted],
                )  # fmt: skip
                for status, changes in by_status.items():
                    ledger.transition_many(
                        s, changes, status, expect=Status.SENDING, source="send", provider=provider.name
                    )

        # The provider took these: only this worker knows. Ride out a database restart.
        write_through_outage(write)
        words = ["accepted"] * len(accepted)
        accepted_ids = {m.id for m in accepted}
        for m in batch:
            if m.id in accepted_ids:
                continue
            outcome = outcomes.get(m.id)
            err = outcome.error if outcome is not None else None
            if err is None:
                # The reply did not mention it: it may or may not have gone out.
                err = RetryableError(
                    "no result for this message in the reply",
                    provider=provider.name,
                    kind=provider.KIND,
                    ambiguous=True,
                )
            words.append(self._continue(m, self._after_error(m, provider, attempt_ids[m.id], err)))
        return words

    def _continue(self, msg: Message, word: str) -> str:
        """After a failed call in a batch: go on alone to the next provider if the
        decision was to fail over."""
        if word in ("failover", "requeued"):
            return self._run(msg.id)
        return word

    def _not_claimed(self, msg: Message, status: Status) -> str:
        if status == Status.SENDING:
            # Another worker holds it, or one died holding it (a redelivered task).
            age = (utcnow() - msg.claimed_at).total_seconds() if msg.claimed_at else self.max_lease
            if age >= self.max_lease:
                return self.recover(msg.id)
            # Held: the holder finishes it, or the sweeper recovers it once the claim is
            # stale. No task is republished here: a message claimed by another task's
            # batch (see _batch_route) would get a needless task for each of its mates.
            return "busy"
        return "skipped"  # scheduled (the sweeper releases it), already sent, final

    def recover(self, message_id: str) -> str:
        """A message left ``sending`` by a worker that died (or a lost task)."""
        with session_scope() as s:
            msg = ledger.get(s, message_id)
            if msg is None or msg.status != Status.SENDING.value:
                return "skipped"
            age = (utcnow() - msg.claimed_at).total_seconds() if msg.claimed_at else self.max_lease
            if age < self.max_lease:
                return "busy"
            attempt = ledger.open_attempt(s, message_id)
            if attempt is None:
                ledger.transition(
                    s, message_id, Status.QUEUED, source="sweeper", expect={Status.SENDING},
                    detail="the worker stopped before calling a provider", fields=self._requeue_fields(),
                )  # fmt: skip
                self.publish(message_id, msg.priority, 0)
                return "requeued"
        assert attempt.id is not None
        return self._resolve_open_attempt(msg, attempt.id, attempt.provider, source="sweeper")

    # -- one task's work ----------------------------------------------------------------

    def _run(self, message_id: str) -> str:
        while True:
            with session_scope() as s:
                msg = ledger.get(s, message_id)
                assert msg is not None
                open_attempt = ledger.open_attempt(s, message_id)
            if msg.status != Status.SENDING.value:
                return "skipped"
            now = utcnow()
            if now >= msg.expires_at:
                if msg.attempts:
                    return self._finish(msg, Status.FAILED, "every try failed until its TTL ran out")
                return self._finish(msg, Status.EXPIRED, "its TTL ran out before it could be sent")
            if msg.attempts >= self.settings.pipeline.max_attempts:
                return self._finish(msg, Status.FAILED, f"gave up after {msg.attempts} provider calls")
            if open_attempt is not None and open_attempt.id is not None:
                # An earlier call may have gone through: settle that before sending again.
                word = self._resolve_open_attempt(msg, open_attempt.id, open_attempt.provider, source="send")
                if word != "requeued":
                    return word
                continue

            provider = self._pick(msg)
            if provider is None:
                return self._exhausted(msg)
            wait = self.coordinator.rate_acquire(provider.name, provider.config.rate_limit)
            if wait > 0:
                if wait <= 1.0:
                    time.sleep(wait)
                    continue
                return self._release(msg, wait, "rate limit", retry=False, provider=provider.name)
            word = self._call(msg, provider)
            if word not in ("failover", "requeued"):
                return word

    def _pick(self, msg: Message, allowed: dict[str, bool] | None = None) -> Provider | None:
        tried = set(filter(None, msg.tried.split(",")))
        names = [msg.provider_pinned] if msg.provider_pinned else self._route_order(msg.id)
        cooldown = self.settings.pipeline.breaker_cooldown
        for name in names:
            if name in tried or self._balance_low(name):
                continue
            if allowed is not None and name in allowed:
                ok = allowed[name]
            else:
                gate = self.coordinator.breaker_allows(name, probe_ttl=min(cooldown, self.max_lease))
                ok = self._probe(name) if gate == PROBE else bool(gate)
                if allowed is not None:
                    allowed[name] = ok
            if not ok:
                continue
            return self.provider(name)
        return None

    def _probe(self, name: str) -> bool:
        """The half-open breaker's one probe. A call that sends nothing (the balance)
        goes first where the provider has one: a provider still hanging or failing
        then costs a timeout, not a message in doubt (a hung send may go out later,
        a duplicate at at-least-once, `unknown` at at-most-once). If it answers, the
        message itself is the probe, as it is for providers with no such call."""
        provider = self.provider(name)
        if not provider.HAS_BALANCE:
            return True
        try:
            provider.balance()
        except ProviderError as exc:
            log.info("probe of %s failed, still skipped: %s", name, exc)
            self._breaker_failure(name)
            return False
        return True

    def _route_order(self, message_id: str) -> list[str]:
        """Providers by priority; instances of equal priority share the traffic,
        each message starting at a place of its own (by its id, so a retry of the
        same message sees the same order)."""
        groups: dict[int, list[str]] = {}
        for p in self.settings.enabled_providers:
            groups.setdefault(p.priority, []).append(p.name)
        order: list[str] = []
        for priority in sorted(groups):
            names = groups[priority]
            start = int(message_id[:8], 16) % len(names) if len(names) > 1 else 0
            order += names[start:] + names[:start]
        return order

    def _balance_low(self, name: str) -> bool:
        threshold = self.settings.provider(name).balance_threshold
        if threshold is None:
            return False
        value = self.coordinator.get_value(f"balance:{name}")
        return value is not None and float(value) < threshold

    def _call(self, msg: Message, provider: Provider) -> str:
        cfg = provider.config
        with session_scope() as s:
            attempt_id = ledger.start_attempt(s, msg.id, provider.name, provider.KIND)
        sms = OutgoingSms(id=msg.id, to=msg.to, text=msg.text, sender=msg.sender or cfg.sender)
        err: ProviderError | None
        try:
            [outcome] = provider.send([sms])
            err = outcome.error
        except ProviderError as exc:
            outcome, err = None, exc
        if err is None:
            assert outcome is not None
            self._breaker_success(provider.name)
            return self._accept(msg, provider.name, attempt_id, outcome, source="send")
        return self._after_error(msg, provider, attempt_id, err)

    def _after_error(self, msg: Message, provider: Provider, attempt_id: int, err: ProviderError) -> str:
        """Record a failed call and act on the decision for its error kind. Returns
        "failover"/"requeued" when the caller should go on to the next provider."""
        cfg = provider.config
        ctx = CallContext(
            retries=msg.retries,
            max_retries=cfg.max_retries,
            can_reconcile=provider.STATUS_BY_CLIENT_ID,
            guarantee=cfg.delivery_guarantee,
            backoff_base=self.settings.pipeline.backoff_base,
            backoff_cap=self.settings.pipeline.backoff_cap,
        )
        decision = decide(err, ctx)
        log.info("%s via %s: %s (%s): %s", msg.id, provider.name, decision.action, decision.reason, err)
        if decision.action == "reject":
            self._breaker_success(provider.name)  # it answered: it is healthy
        else:
            self._breaker_failure(provider.name)

        def finish(s: Session, outcome_word: str) -> None:
            ledger.finish_attempt(
                s,
                attempt_id,
                outcome_word,
                http_status=err.http_status,
                code=err.code,
                raw=err.raw,
                error=str(err),
            )

        with session_scope() as s:
            if decision.action == "reject":
                finish(s, "reject")
                ledger.transition(
                    s, msg.id, Status.REJECTED, source="send", provider=provider.name, raw=err.code,
                    detail=str(err), fields={"provider": provider.name, "last_error": str(err)},
                )  # fmt: skip
                return "rejected"
            if decision.action == "unknown":
                finish(s, "ambiguous")
                ledger.transition(
                    s, msg.id, Status.UNKNOWN, source="send", provider=provider.name,
                    detail=f"{decision.reason}: {err}",
                    fields={"provider": provider.name, "last_error": str(err)},
                )  # fmt: skip
                return "unknown"
            if decision.action == "reconcile":
                finish(s, "unconfirmed")
            else:
                finish(s, "ambiguous" if err.ambiguous else decision.action)
        if decision.action == "reconcile":
            with session_scope() as s:
                fresh = ledger.get(s, msg.id)
            assert fresh is not None
            return self._resolve_open_attempt(fresh, attempt_id, provider.name, source="send")
        if decision.action == "retry":
            with session_scope() as s:
                ledger.update_fields(s, msg.id, retries=msg.retries + 1, last_error=str(err))
            return self._release(msg, decision.delay, str(err), retry=True, provider=provider.name)
        # failover: note the provider as tried in this round and go on to the next
        with session_scope() as s:
            tried = ",".join(filter(None, [*msg.tried.split(","), provider.name]))
            ledger.update_fields(
                s, msg.id, tried=tried, retries=0, failovers=msg.failovers + 1, last_error=str(err)
            )
        return "failover"

    # The breaker is advice about a provider's health; what the provider did is a fact
    # only this worker knows. So these run between a call and its ledger write and must
    # never raise: with Redis gone for a moment, an escaped error would leave a batch
    # the provider took as an open attempt, settled later as `unknown`.
    def _breaker_success(self, name: str) -> None:
        try:
            self.coordinator.breaker_success(name)
        except Exception as exc:  # any coordinator outage
            log.warning("breaker update for %s lost: %s", name, exc)

    def _breaker_failure(self, name: str) -> None:
        p = self.settings.pipeline
        try:
            opened = self.coordinator.breaker_failure(name, p.breaker_threshold, p.breaker_cooldown)
        except Exception as exc:  # any coordinator outage
            log.warning("breaker update for %s lost: %s", name, exc)
            return
        if opened:
            log.warning("circuit open for %s: skipped for %.0fs", name, p.breaker_cooldown)

    def _accept(
        self, msg: Message, provider: str, attempt_id: int, outcome: SendOutcome, *, source: str
    ) -> str:
        now = utcnow()
        status = outcome.status if outcome.status not in (Status.UNKNOWN, Status.QUEUED) else Status.ACCEPTED

        def write() -> None:
            with session_scope() as s:
                ledger.finish_attempt(
                    s, attempt_id, "accepted" if source == "send" else "reconciled", raw=outcome.raw_status
                )
                ledger.transition(
                    s, msg.id, status, source=source, provider=provider, raw=outcome.raw_status,
                    fields={
                        "provider": provider, "provider_message_id": outcome.provider_message_id,
                        "accepted_at": now,
                        "next_poll_at": now + timedelta(seconds=self.settings.polling.intervals[0]),
                        "retries": 0, "tried": "", "last_error": None,
                    },
                )  # fmt: skip

        # The provider took it: only this worker knows. Ride out a database restart.
        write_through_outage(write)
        return "accepted"

    def _resolve_open_attempt(self, msg: Message, attempt_id: int, provider_name: str, *, source: str) -> str:
        """Settle a call whose outcome we never saw (a timeout, a dead worker)."""
        provider = self.provider(provider_name)
        cfg = provider.config
        if provider.STATUS_BY_CLIENT_ID:
            # Asked at once, a provider still working on the request we gave up on
            # answers "no such id" and we would send again: a duplicate. Wait first.
            with session_scope() as s:
                attempt = s.get(Attempt, attempt_id)
                age = (utcnow() - attempt.started_at).total_seconds() if attempt else cfg.reconcile_after
            if age < cfg.reconcile_after:
                if source == "sweeper":
                    return "busy"  # the next sweep asks
                return self._release(
                    msg, cfg.reconcile_after - age, f"asking {provider_name} whether it got the message",
                    retry=False, provider=provider_name,
                )  # fmt: skip
            try:
                reports = provider.status_by_client_id(MessageRef(msg.id, None, msg.to))
            except ProviderError as exc:
                # Still cannot ask. Wait and ask again; after max_retries the
                # provider's guarantee settles it as for any other provider.
                if msg.retries >= cfg.max_retries:
                    return self._settle_by_guarantee(
                        msg, attempt_id, cfg, source, f"cannot ask {provider_name}: {exc}"
                    )
                with session_scope() as s:
                    ledger.update_fields(s, msg.id, retries=msg.retries + 1, last_error=str(exc))
                    ledger.finish_attempt(s, attempt_id, "unconfirmed", error=str(exc))
                delay = backoff(
                    msg.retries, self.settings.pipeline.backoff_base, self.settings.pipeline.backoff_cap
                )
                return self._release(
                    msg, delay, f"could not reconcile: {exc}", retry=True, provider=provider_name
                )
            found = [r for r in reports if r.phone in (None, msg.to)]
            if found:
                report: StatusReport = found[0]
                outcome = SendOutcome(
                    msg.id, report.provider_message_id or msg.id, report.status, report.raw_status
                )
                return self._accept(msg, provider_name, attempt_id, outcome, source="reconcile")
            with session_scope() as s:
                ledger.finish_attempt(
                    s, attempt_id, "lost", error="the provider never got it (asked by our id)"
                )
                if source == "sweeper":
                    ledger.transition(
                        s, msg.id, Status.QUEUED, source=source, expect={Status.SENDING},
                        detail=f"{provider_name} never got it: sending again", fields=self._requeue_fields(),
                    )  # fmt: skip
            if source == "sweeper":
                self.publish(msg.id, msg.priority, 0)
            return "requeued"
        return self._settle_by_guarantee(msg, attempt_id, cfg, source, "the outcome of the call was lost")

    def _settle_by_guarantee(
        self, msg: Message, attempt_id: int, cfg: ProviderConfig, source: str, why: str
    ) -> str:
        with session_scope() as s:
            ledger.finish_attempt(s, attempt_id, "ambiguous", error=why)
            if cfg.delivery_guarantee == "at-least-once":
                tried = ",".join(filter(None, [*msg.tried.split(","), cfg.name]))
                if source == "sweeper":
                    ledger.transition(
                        s, msg.id, Status.QUEUED, source=source, expect={Status.SENDING},
                        detail=f"{why}; sending again (at-least-once, may duplicate)",
                        fields={**self._requeue_fields(), "tried": tried},
                    )  # fmt: skip
                else:
                    ledger.update_fields(s, msg.id, tried=tried, retries=0)
            else:
                ledger.transition(
                    s, msg.id, Status.UNKNOWN, source=source, provider=cfg.name,
                    detail=f"{why}; {cfg.name} cannot be asked by our id; not resent (at-most-once)",
                    fields={"provider": cfg.name, "last_error": why},
                )  # fmt: skip
                return "unknown"
        if source == "sweeper":
            self.publish(msg.id, msg.priority, 0)
        return "requeued"

    # -- putting a message back -------------------------------------------------------

    def _requeue_fields(self) -> dict[str, object]:
        now = utcnow()
        return {"due_at": now, "published_for": now, "claimed_at": None}

    def _release(
        self, msg: Message, delay: float, why: str, *, retry: bool, provider: str | None = None
    ) -> str:
        """Back to ``queued``, due after ``delay``; short delays are published with a
        countdown, longer ones are left to the sweeper."""
        due = utcnow() + timedelta(seconds=delay)
        short = delay <= MAX_COUNTDOWN
        with session_scope() as s:
            moved = ledger.transition(
                s, msg.id, Status.QUEUED, source="send", expect={Status.SENDING}, provider=provider,
                detail=f"{'retry' if retry else 'wait'} in {delay:.1f}s: {why}",
                fields={"due_at": due, "published_for": due if short else None, "claimed_at": None},
            )  # fmt: skip
        if moved is not None and short:
            self.publish(msg.id, msg.priority, delay)
        return "retry" if retry else "waiting"

    def _exhausted(self, msg: Message) -> str:
        """No provider left in this round: try again later, until the TTL."""
        p = self.settings.pipeline
        delay = p.exhausted_delay
        names = (
            [msg.provider_pinned]
            if msg.provider_pinned
            else [c.name for c in self.settings.enabled_providers]
        )
        opens = [self.coordinator.breaker_state(n).retry_in for n in names]
        if opens and all(o > 0 for o in opens):
            delay = max(1.0, min(delay, min(opens)))  # come back when the first breaker half-opens
        due = utcnow() + timedelta(seconds=delay)
        if due >= msg.expires_at:
            return self._finish(
                msg, Status.FAILED, "every provider failed and its TTL ends before the next round"
            )
        short = delay <= MAX_COUNTDOWN
        with session_scope() as s:
            ledger.transition(
                s, msg.id, Status.QUEUED, source="send", expect={Status.SENDING},
                detail=f"every provider failed or is unavailable; next round in {delay:.0f}s",
                fields={"due_at": due, "published_for": due if short else None, "claimed_at": None,
                        "tried": "", "retries": 0},
            )  # fmt: skip
        if short:
            self.publish(msg.id, msg.priority, delay)
        return "exhausted"

    def _finish(self, msg: Message, status: Status, why: str) -> str:
        with session_scope() as s:
            ledger.transition(
                s, msg.id, status, source="send", detail=why, fields={"last_error": msg.last_error or why}
            )
        return status.value
