"""The send path: every send task works on a group of messages (one, for a one-time
code; a batch, for bulk traffic). Per group:

1. one transaction claims the messages (``queued`` -> ``sending``), routes each one
   (``router``), asks each provider's breaker and balance once (one Redis call), takes
   its rate-limit slots once, and writes the attempts before any call goes out;
2. the calls: one batch call where the provider takes batches, else single calls
   made concurrently, spaced by the rate limit;
3. ``policy`` turns each result into an action, and one transaction
   (``ledger.apply``) writes every outcome back. Messages that fail over go round
   again in the same task.

A call in doubt is settled by ``_settle``: asked by our id where the provider allows
it (SMStele), else by the provider's ``delivery_guarantee``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session

from dispatcher import ledger, stoplist
from dispatcher.config import ProviderConfig, Settings
from dispatcher.coordination import CLOSED, PROBE, SKIP, Coordinator, Gate
from dispatcher.db import session_scope, write_through_outage
from dispatcher.decisions import CONTINUE, Action, Decision, Outcome, StopNote
from dispatcher.errors import ProviderError, RetryableError
from dispatcher.ledger import Claimed
from dispatcher.models import Attempt, utcnow
from dispatcher.providers.base import NEEDS_OPERATOR, MessageRef, OutgoingSms, Provider, SendOutcome
from dispatcher.providers.pool import ProviderPool
from dispatcher.sending.policy import Health, Verdict, classify, decide, lost_outcome
from dispatcher.sending.router import Router
from dispatcher.status import Status
from dispatcher.tracking.timing import FirstPolls

log = logging.getLogger("smsdispatch.pipeline")

ATTENTION_TTL = 86400.0  # seconds a request/account refusal stays on the provider's row

Publish = Callable[[str, str, float], None]  # (message id, priority, countdown seconds)

MAX_COUNTDOWN = 10.0  # longer waits go through the ledger and the sweeper, not broker ETAs
EARLY = timedelta(seconds=0.5)  # a task may fire this much before its message is due
MAX_RATE_WAIT = 1.0  # a rate-limit slot further away than this: back to the queue

WORDS = {Action.ACCEPT: "accepted", Action.REJECT: "rejected", Action.MARK_UNKNOWN: "unknown",
         Action.RETRY: "retry", Action.WAIT: "waiting", Action.EXHAUSTED: "exhausted"}  # fmt: skip


def _list_stopped(s: Session, decisions: Sequence[Decision]) -> None:
    """Put the recipients a provider refused as blacklisted or opted out on the stop
    list, in the transaction that rejects their messages: a refusal is never written
    without its listing, nor the other way round."""
    by_scope: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for d in decisions:
        if d.stop is not None and d.provider:
            by_scope[d.stop.scope].append((d.stop.phone, f"provider:{d.provider}", d.stop.reason))
    for scope, entries in by_scope.items():
        new = stoplist.add_many(s, entries, scope=scope)
        log.warning("stop list (%s): %d recipient(s) refused as blacklisted or opted out, %d newly listed:"
                    " %s", scope, len(entries), new,
                    "; ".join(f"{source} {reason}" for _, source, reason in entries))  # fmt: skip


def lease_of(config: ProviderConfig) -> float:
    """How long a claim may look alive: one call's worst case plus a margin."""
    return config.connect_timeout + config.timeout + 5.0


@dataclass
class Call:
    """One message's provider call in a step."""

    msg: Claimed
    provider: Provider
    offset: float = 0.0  # seconds after the step starts when its rate-limit slot opens
    probe: bool = False  # the half-open breaker's one probe
    attempt_id: int = 0
    started: datetime | None = None  # when its attempt was written
    sent_at: datetime | None = None  # when the request actually went out


@dataclass
class Step:
    """What one transaction of the group decided: calls to make, messages in doubt
    to settle, decisions already applied (their words)."""

    calls: list[Call] = field(default_factory=list)
    doubtful: list[tuple[Claimed, Attempt]] = field(default_factory=list)
    words: dict[str, str] = field(default_factory=dict)
    gates: dict[str, Gate] = field(default_factory=dict)
    publish: list[tuple[str, str, float]] = field(default_factory=list)


class SendPipeline:
    def __init__(self, settings: Settings, publish: Publish, coordinator: Coordinator,
                 calls: ProviderPool | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.publish = publish
        self.coordinator = coordinator
        self.router = Router(settings)
        # The process's adapters and call threads, shared with the status polls.
        self.calls = calls if calls is not None else ProviderPool(settings)
        # When an accepted message is first polled: learnt per provider (tracking).
        self.first_polls = FirstPolls(settings, coordinator)
        self._lock = threading.Lock()
        self._breaker_seen: dict[str, tuple[float, bool]] = {}

    def provider(self, name: str) -> Provider:
        return self.calls.get(name)

    def close(self) -> None:
        self.calls.close()

    @property
    def max_lease(self) -> float:
        return max((lease_of(p) for p in self.settings.providers), default=20.0)

    # -- entry points ------------------------------------------------------------------

    def process(self, message_id: str, *, linger: bool = False) -> str:
        """One send task for one message (a one-time code, a lone ``send_sms``).
        ``linger`` (set by the publisher for a normal message whose first choice takes
        batches): wait ``pipeline.linger`` first, then claim it together with others
        due for the same provider; the first task to wake takes them all, and their
        own tasks find them taken. Returns a word for logs and tests."""
        if linger and self.settings.pipeline.linger > 0:
            time.sleep(self.settings.pipeline.linger)
        now = utcnow()
        with session_scope() as s:
            group: list[Claimed] = []
            lone = ledger.peek(s, message_id) if linger else None
            lingered = lone is not None and self._lingers(lone)
            if lone is not None and lingered:
                # Its mates and itself in one statement: the first task to wake takes
                # the lot (ledger.claim_mates says why not itself first).
                first = self.router.first_choice(lone.id, lone.provider_pinned)
                group = ledger.claim_mates(
                    s, lone, now, self.provider(str(first)).batch_size,
                    keep=lambda m: self.router.first_choice(m, lone.provider_pinned) == first,
                )  # fmt: skip
            if not any(c.id == message_id for c in group):
                # Not lingering, or not yet due; or another task holds its row. Having
                # locked rows ourselves, we must not wait for it (two lingering tasks
                # could wait on each other): _not_claimed looks again after commit.
                group += ledger.claim(s, [message_id], now, due_before=now + EARLY, skip_locked=lingered)
            step = self._start(s, group, now) if group else None
        if step is None:
            return self._not_claimed(message_id)
        self._publish(step.publish)
        return self._run(group, step).get(message_id, "skipped")

    def process_many(self, message_ids: Sequence[str]) -> dict[str, int]:
        """One send task for a group of bulk messages: claimed in one statement, sent
        in as few calls as their providers take (or concurrently, one per call),
        written back together. Returns how many ended how."""
        now = utcnow()
        with session_scope() as s:
            group = ledger.claim(s, message_ids, now, due_before=now)
            step = self._start(s, group, now)
        self._publish(step.publish)
        counts = Counter(self._run(group, step).values())
        counts["skipped"] = len(message_ids) - len(group)
        return dict(counts)

    def recover(self, message_id: str) -> str:
        """A message left ``sending`` by a worker that died (the sweeper calls this):
        settle its open attempt, then hand it back to the queue when it is to be sent
        again, so that no sweep waits on a provider call."""
        now = utcnow()
        with session_scope() as s:
            msg = ledger.reclaim_stale(s, message_id, now, now - timedelta(seconds=self.max_lease))
            opened = ledger.open_attempts(s, [message_id]) if msg is not None else {}
            publish = []
            if msg is not None and not opened:
                d = self._hand_back(msg, Decision(msg.id, Action.WAIT, "the worker stopped before calling a"
                                                  " provider"))  # fmt: skip
                publish = self._apply(s, [d], now, source="sweeper", group=[msg])
        if publish:
            self._publish(publish)
            return "requeued"
        if msg is None:
            return "busy"
        d = self._settle(msg, opened[message_id])
        if d.action in CONTINUE:
            d = self._hand_back(msg, d)
        self._write([d], [msg], source="sweeper")
        return "requeued" if d.extra.get("handed_back") else self._word(d)

    # -- the steps ------------------------------------------------------------------------

    def _lingers(self, msg: Claimed) -> bool:
        first = self.router.first_choice(msg.id, msg.provider_pinned)
        return (msg.priority != "high" and msg.attempts == 0 and not msg.tried
                and self.router.lingers(first))  # fmt: skip

    def _start(self, s: Session, group: Sequence[Claimed], now: datetime, *, recheck: bool = False) -> Step:
        """In the claiming transaction: route each message, write the attempts of
        the calls to make, settle what needs no call (expired, no provider left, an
        operator's cancel). ``recheck``: the group goes round again in this task
        after its calls, during which an operator may have asked to cancel."""
        p = self.settings.pipeline
        step = Step()
        settled: list[Decision] = []
        assigned: dict[str, list[Claimed]] = defaultdict(list)
        probes: set[str] = set()
        opened = ledger.open_attempts(s, [m.id for m in group if m.attempts])
        asked = [m.id for m in group if recheck or m.cancel_requested_at is not None]
        cancels = ledger.cancel_requests(s, asked) if asked else {}  # none on the usual path
        for m in group:
            if m.id in opened:
                step.doubtful.append((m, opened[m.id]))  # an earlier call may have gone through
            elif m.id in cancels:
                # Its calls are settled (or none was made): nothing more goes out.
                settled.append(self._cancelled(m, maybe_sent=cancels[m.id]))
            elif m.stop_scope is not None and stoplist.blocks(m.stop_scope, m.priority):
                # Listed after it was stored (an opt-out, a provider's blacklist): 38-FZ
                # wants nothing more sent to the number, queued campaigns included.
                d = self._give_up(m, Status.REJECTED, f"{stoplist.STOPPED}: the number was put on the"
                                                      " stop list before the message went out")  # fmt: skip
                d.extra["last_error"] = stoplist.STOPPED
                settled.append(d)
            elif now >= m.expires_at:
                settled.append(self._give_up(m, Status.FAILED if m.attempts else Status.EXPIRED,
                                             "every try failed until its TTL ran out" if m.attempts
                                             else "its TTL ran out before it could be sent"))  # fmt: skip
            elif m.attempts >= p.max_attempts:
                settled.append(self._give_up(m, Status.FAILED, f"gave up after {m.attempts} provider calls"))
            elif (name := self._route(m, step.gates, probes)) is None:
                settled.append(self._exhausted(m, now))
            else:
                assigned[name].append(m)
        for name, msgs in assigned.items():
            provider = self.provider(name)
            rate = provider.config.rate_limit
            ok, wait = self.coordinator.rate_reserve(name, rate, len(msgs), MAX_RATE_WAIT)
            if not ok:
                settled += [self._decision(m, Action.WAIT, "rate limit", provider=name, delay=wait)
                            for m in msgs]  # fmt: skip
                continue
            for i, m in enumerate(msgs):
                step.calls.append(Call(m, provider, wait + (i / rate if rate > 0 else 0.0), m.id in probes))
        ids = ledger.start_attempts(
            s, [(c.msg.id, c.provider.name, c.provider.KIND) for c in step.calls], now
        )
        for c in step.calls:
            c.attempt_id, c.started = ids[c.msg.id], now
            c.msg.attempts += 1
        step.publish = self._apply(s, settled, now, group=group)
        step.words.update({d.message_id: self._word(d) for d in settled})
        return step

    def _route(self, m: Claimed, gates: dict[str, Gate], probes: set[str]) -> str | None:
        """The first provider in the message's order that it has not failed over
        from in this round, whose breaker lets it through and whose balance is not
        under its threshold. The breaker and balance are read once per group."""
        tried = m.tried_set
        for name in self.router.order(m.id, m.provider_pinned):
            if name in tried:
                continue
            gate = gates.get(name)
            if gate is None:
                probe_ttl = min(self.settings.pipeline.breaker_cooldown, self.max_lease)
                gate = gates[name] = self.coordinator.gate(
                    name, probe_ttl, self.settings.provider(name).balance_threshold
                )
            if gate.decision == PROBE:
                # Half-open: this message is the one probe; the others go elsewhere.
                gates[name] = Gate(SKIP, gate.failures)
                probes.add(m.id)
                return name
            if gate.decision == CLOSED:
                return name
        return None

    def _run(self, group: list[Claimed], step: Step) -> dict[str, str]:
        """Make the step's calls, apply what they came to, and go round again with
        the messages that fail over, until none is left with this task."""
        words = dict(step.words)
        by_id = {m.id: m for m in group}
        while step.calls or step.doubtful:
            decisions = [self._settle(m, a) for m, a in step.doubtful]
            if step.calls:
                decisions += self._call(step)
            self._write(decisions, group)
            asks = [d for d in decisions if d.action == Action.ASK]
            decisions = [d for d in decisions if d.action != Action.ASK]
            # A call in doubt at a provider that can be asked: ask now (or wait).
            settled = [self._settle(by_id[d.message_id], self._attempt_of(d)) for d in asks]
            self._write(settled, group)
            decisions += settled
            words.update({d.message_id: self._word(d) for d in decisions})
            again = [by_id[d.message_id] for d in decisions if d.action in CONTINUE]
            if not again:
                break
            now = utcnow()
            with session_scope() as s:
                step = self._start(s, again, now, recheck=True)
            self._publish(step.publish)
            words.update(step.words)
        return words

    def _call(self, step: Step) -> list[Decision]:
        """The provider calls of one step, concurrently where there are several."""
        units: list[list[Call]] = []
        by_provider: dict[str, list[Call]] = defaultdict(list)
        for c in step.calls:
            by_provider[c.provider.name].append(c)
        for name, calls in by_provider.items():
            size = self.provider(name).batch_size if self.router.batches(name) else 1
            units += [calls[i : i + size] for i in range(0, len(calls), size)]
        began = time.monotonic()
        if len(units) == 1:
            results = [self._call_unit(units[0], began)]
        else:
            futures = [self.calls.submit(self._call_unit, u, began) for u in units]
            pending = set(futures)
            while pending:
                # Calls queued behind others may outlast one call's lease: keep the
                # claims fresh, so the sweeper never takes these for a dead worker's.
                _, pending = wait(pending, timeout=self.max_lease / 3)
                if pending:
                    self._renew([c.msg.id for c in step.calls])
            results = [f.result() for f in futures]
        decisions = [d for unit in results for d in unit]
        self._breakers(step, decisions)
        return decisions

    def _renew(self, ids: Sequence[str]) -> None:
        try:
            with session_scope() as s:
                ledger.renew_claims(s, ids, utcnow())
        except Exception as exc:  # the database is away: the calls go on, the sweeper may ask
            log.warning("could not renew %d claims: %s", len(ids), exc)

    def _opened_meanwhile(self, name: str) -> bool:
        """Whether the breaker of ``name`` opened while a call waited its turn (asked
        at most every half second per provider and process)."""
        now = time.monotonic()
        with self._lock:
            seen = self._breaker_seen.get(name)
        if seen is None or now - seen[0] > 0.5:
            try:
                state = self.coordinator.breaker_state(name).state
            except Exception:  # advice only
                return False
            seen = (now, state == "open")
            with self._lock:
                self._breaker_seen[name] = seen
        return seen[1]

    def _call_unit(self, unit: list[Call], began: float) -> list[Decision]:
        """One provider call (one message, or a batch), at its rate-limit slot."""
        provider = unit[0].provider
        delay = began + unit[-1].offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - began > 1.0 and self._opened_meanwhile(provider.name):
            # It waited behind other calls while the provider failed them: send nothing.
            return [self._after_call(c, Outcome.BREAKER_OPENED, None, None) for c in unit]
        if any(c.probe for c in unit) and provider.HAS_BALANCE:
            # The half-open probe asks the balance first, which sends nothing: a provider
            # still hanging costs a timeout, not a message in doubt.
            try:
                provider.balance()
            except ProviderError as exc:
                log.info("probe of %s failed, still skipped: %s", provider.name, exc)
                return [self._after_call(c, Outcome.PROBE_FAILED, None, exc) for c in unit]
        sender = provider.config.sender
        sms = [
            OutgoingSms(
                id=c.msg.id,
                to=c.msg.to,
                text=c.msg.text,
                sender=c.msg.sender or sender,
                expires_at=c.msg.expires_at,
            )
            for c in unit
        ]
        sent_at = utcnow()
        for c in unit:
            c.sent_at = sent_at
        try:
            outcomes = {o.id: o for o in provider.send(sms)}
        except ProviderError as exc:
            # The whole call failed: each message decides alone, as if sent alone.
            self._flag_for_operator(provider, [exc])
            return [self._after_call(c, self._classify(provider, exc), None, exc) for c in unit]
        except Exception as exc:
            # Not a provider's answer but our own failure (a bug reading an odd reply):
            # the request may have gone out. Read as a lost reply, so that the other
            # calls of the group are still written back.
            log.exception("send to %s failed unexpectedly", provider.name)
            lost = RetryableError(f"unexpected {type(exc).__name__}: {exc}", provider=provider.name,
                                  kind=provider.KIND, ambiguous=True)  # fmt: skip
            return [self._after_call(c, self._classify(provider, lost), None, lost) for c in unit]
        self._flag_for_operator(provider, [o.error for o in outcomes.values() if o.error is not None])
        decisions = []
        for c in unit:
            found = outcomes.get(c.msg.id)
            if found is not None and found.ok:
                decisions.append(self._after_call(c, Outcome.ACCEPTED, found, None))
                continue
            err = found.error if found is not None else None
            if err is None:  # the reply did not mention it: it may or may not have gone out
                err = RetryableError("no result for this message in the reply", provider=provider.name,
                                     kind=provider.KIND, ambiguous=True)  # fmt: skip
            decisions.append(self._after_call(c, self._classify(provider, err), found, err))
        return decisions

    def _flag_for_operator(self, provider: Provider, errors: Sequence[ProviderError]) -> None:
        """A refusal that says our request or our account is wrong fails the message
        over, and nobody would notice: log it as an error and show it on the
        provider's row (`smsdispatch providers`) for a day. Once per call."""
        err = next((e for e in errors if e.about in NEEDS_OPERATOR), None)
        if err is None:
            return
        log.error("%s refused our %s, an operator must look: %s", provider.name, err.about, err)
        try:
            note = f"{utcnow().isoformat(timespec='seconds')} {err.about}: {err}"
            self.coordinator.set_value(f"attention:{provider.name}", note[:1000], ttl=ATTENTION_TTL)
        except Exception:  # the log line stands; a coordinator outage must not fail a send
            log.warning("could not record the operator note for %s", provider.name, exc_info=True)

    def _classify(self, provider: Provider, err: ProviderError) -> Outcome:
        return classify(
            err, can_ask=provider.STATUS_BY_CLIENT_ID, guarantee=provider.config.delivery_guarantee
        )

    def _after_call(self, c: Call, outcome: Outcome, sent: SendOutcome | None,
                    err: ProviderError | None) -> Decision:  # fmt: skip
        verdict = self._verdict(outcome, c.msg, c.provider.config)
        d = self._decision(c.msg, verdict.action, verdict.rule.why, provider=c.provider.name,
                           delay=verdict.delay, verdict=verdict)  # fmt: skip
        d.attempt_id, d.attempt_started, d.attempt_outcome = (
            c.attempt_id,
            c.started,
            self._attempt_word(verdict),
        )
        d.extra["health"] = verdict.rule.health
        if sent is not None and err is None:
            d.provider_message_id, d.status, d.raw = sent.provider_message_id, sent.status, sent.raw_status
            d.parts, d.cost = sent.segments, sent.cost
        if err is not None:
            d.http_status, d.code, d.raw, d.error = err.http_status, err.code, err.raw, str(err)
            log.info("%s via %s: %s (%s): %s", c.msg.id, c.provider.name, d.action, d.reason, err)
            scope = c.provider.stop_scope(err) if d.action == Action.REJECT else None
            if scope is not None:
                d.stop = StopNote(c.msg.to, scope, f"{err.code}: {err.message}")
        return d

    def _verdict(self, outcome: Outcome, m: Claimed, cfg: ProviderConfig) -> Verdict:
        p = self.settings.pipeline
        return decide(outcome, retries=m.retries, max_retries=cfg.max_retries, backoff_base=p.backoff_base,
                      backoff_cap=p.backoff_cap)  # fmt: skip

    @staticmethod
    def _attempt_word(verdict: Verdict) -> str:
        if verdict.action != verdict.rule.action and verdict.rule.attempt == "retry":
            return "failover"  # retries used up
        return verdict.rule.attempt

    def _decision(self, m: Claimed, action: Action, reason: str, *, provider: str | None = None,
                  delay: float = 0.0, verdict: Verdict | None = None) -> Decision:  # fmt: skip
        """A decision with the message's counters moved as ``action`` says."""
        d = Decision(m.id, action, reason, provider=provider, delay=delay, retries=m.retries,
                     failovers=m.failovers, tried=m.tried)  # fmt: skip
        if action == Action.RETRY:
            d.retries = m.retries + 1
        elif action == Action.FAIL_OVER and provider:
            d.tried = ",".join([*m.tried_set, provider]) if m.tried else provider
            d.retries, d.failovers = 0, m.failovers + 1
        elif action == Action.EXHAUSTED:
            d.tried, d.retries = "", 0
        d.extra["publish"] = (
            action in (Action.RETRY, Action.WAIT, Action.EXHAUSTED) and delay <= MAX_COUNTDOWN
        )
        return d

    def _breakers(self, step: Step, decisions: Sequence[Decision]) -> None:
        """One breaker update per provider for the step. A provider that answered for
        some messages is alive: the failures of one group do not pile up against it.
        The breaker is advice; what the provider did is a fact only this worker knows,
        so this runs before the ledger write and must never raise: with Redis gone
        for a moment, an escaped error would leave a taken batch as an open attempt."""
        good: Counter[str] = Counter()
        bad: Counter[str] = Counter()
        for d in decisions:
            health = d.extra.get("health")
            if d.provider and health == Health.GOOD:
                good[d.provider] += 1
            elif d.provider and health == Health.BAD:
                bad[d.provider] += 1
        p = self.settings.pipeline
        for name in good.keys() | bad.keys():
            gate = step.gates.get(name)
            probed = any(c.probe for c in step.calls if c.provider.name == name)
            try:
                if good[name]:
                    if probed or gate is None or gate.failures:
                        self.coordinator.breaker_success(name)
                elif self.coordinator.breaker_failure(
                    name, p.breaker_threshold, p.breaker_cooldown, bad[name]
                ):
                    log.warning("circuit open for %s: skipped for %.0fs", name, p.breaker_cooldown)
            except Exception as exc:  # any coordinator outage
                log.warning("breaker update for %s lost: %s", name, exc)

    # -- a call in doubt ----------------------------------------------------------------

    def _attempt_of(self, d: Decision) -> Attempt:
        assert d.attempt_id is not None and d.provider is not None
        return Attempt(id=d.attempt_id, message_id=d.message_id, provider=d.provider, kind="",
                       started_at=d.attempt_started or utcnow())  # fmt: skip

    def _settle(self, m: Claimed, attempt: Attempt) -> Decision:
        """Settle a call whose outcome we never saw (a timeout, a dead worker)."""
        provider = self.provider(attempt.provider)
        cfg = provider.config

        def verdict(outcome: Outcome, why: str = "") -> Decision:
            v = self._verdict(outcome, m, cfg)
            d = self._decision(m, v.action, why or v.rule.why, provider=cfg.name, delay=v.delay, verdict=v)
            d.attempt_id, d.attempt_started, d.attempt_outcome = (
                attempt.id,
                attempt.started_at,
                v.rule.attempt,
            )
            return d

        if not provider.STATUS_BY_CLIENT_ID:
            # Its status calls need the provider's own id, which the lost reply carried.
            m.retries = cfg.max_retries  # no retry on the same provider: its guarantee settles it
            return verdict(lost_outcome(guarantee=cfg.delivery_guarantee),
                           f"the outcome of the call was lost; {cfg.name} cannot be asked by our id"
                           f" ({cfg.delivery_guarantee})")  # fmt: skip
        age = (utcnow() - attempt.started_at).total_seconds()
        if age < cfg.reconcile_after:
            # Asked at once, a provider still working on the request we gave up on
            # answers "no such id" and we would send again: a duplicate. Wait first.
            # The attempt stays open (in flight or unconfirmed) until it is asked.
            return self._decision(m, Action.WAIT, f"asking {cfg.name} whether it got the message",
                                  provider=cfg.name, delay=cfg.reconcile_after - age)  # fmt: skip
        try:
            reports = provider.status_by_client_id(MessageRef(m.id, None, m.to))
        except ProviderError as exc:
            if m.retries >= cfg.max_retries:
                m.retries = cfg.max_retries
                return verdict(
                    lost_outcome(guarantee=cfg.delivery_guarantee), f"cannot ask {cfg.name}: {exc}"
                )
            again = self._verdict(Outcome.ASK_FAILED, m, cfg)
            d = self._decision(m, Action.WAIT, again.rule.why, provider=cfg.name, delay=again.delay)
            d.retries, d.error = m.retries + 1, str(exc)
            return d
        found = [r for r in reports if r.phone in (None, m.to)]
        if not found:
            return verdict(Outcome.NOT_FOUND)
        d = verdict(Outcome.FOUND)
        d.provider_message_id, d.status, d.raw = found[0].provider_message_id or m.id, found[0].status, \
            found[0].raw_status  # fmt: skip
        return d

    # -- decisions without a call -------------------------------------------------------

    def _cancelled(self, m: Claimed, *, maybe_sent: bool) -> Decision:
        """An operator's cancel, once no call of the message is in doubt: ``failed``
        when we know nothing went out, ``unknown`` when a call that got no reply (an
        at-least-once provider's) may have reached the phone, so that a cancel never
        hides a possible delivery."""
        why = "cancelled by the operator"
        if maybe_sent:
            why += "; an earlier call got no reply and may have gone through"
        d = self._give_up(m, Status.UNKNOWN if maybe_sent else Status.FAILED, why)
        d.extra["last_error"] = why + (f" (the last call: {m.last_error})" if m.last_error else "")
        return d

    def _give_up(self, m: Claimed, status: Status, why: str) -> Decision:
        d = self._decision(m, Action.GIVE_UP, why)
        d.status, d.error = status, m.last_error
        return d

    def _exhausted(self, m: Claimed, now: datetime) -> Decision:
        """No provider left in this round: try again later, until the TTL."""
        p = self.settings.pipeline
        delay = p.exhausted_delay
        names = (
            [m.provider_pinned] if m.provider_pinned else [c.name for c in self.settings.enabled_providers]
        )
        opens = [self.coordinator.breaker_state(n).retry_in for n in names]
        if opens and all(o > 0 for o in opens):
            delay = max(1.0, min(delay, min(opens)))  # come back when the first breaker half-opens
        if now + timedelta(seconds=delay) >= m.expires_at:
            return self._give_up(
                m, Status.FAILED, "every provider failed and its TTL ends before the next round"
            )
        return self._decision(m, Action.EXHAUSTED, "every provider failed or is unavailable", delay=delay)

    def _hand_back(self, m: Claimed, d: Decision) -> Decision:
        """The sweeper does not send: a message to be sent again goes back to the queue."""
        back = self._decision(m, Action.WAIT, d.reason, provider=d.provider)
        back.tried, back.retries, back.failovers = d.tried, d.retries, d.failovers
        back.attempt_id, back.attempt_started, back.attempt_outcome = d.attempt_id, d.attempt_started, \
            d.attempt_outcome  # fmt: skip
        back.error, back.extra["handed_back"] = d.error, True
        return back

    # -- writing ------------------------------------------------------------------------

    def _write(
        self, decisions: Sequence[Decision], group: Sequence[Claimed], *, source: str = "send"
    ) -> None:
        """Apply decisions in one transaction. After provider calls, the outcome
        exists only in this worker's memory: ride out a database restart."""
        if not decisions:
            return
        # When each accepted message is first polled, read before the transaction: a
        # Redis that answers slowly must not hold the ledger's locks.
        delays = {d.provider: self.first_polls.delay(d.provider) for d in decisions
                  if d.action == Action.ACCEPT and d.provider}  # fmt: skip

        def write() -> list[tuple[str, str, float]]:
            with session_scope() as s:
                return self._apply(s, decisions, utcnow(), source=source, group=group, first_poll=delays)

        self._publish(write_through_outage(write))

    def _apply(self, s: Session, decisions: Sequence[Decision], now: datetime, *, group: Sequence[Claimed],
               source: str = "send", first_poll: Mapping[str, float] | None = None,
               ) -> list[tuple[str, str, float]]:  # fmt: skip
        """``ledger.apply`` in the caller's transaction; keeps the group's counters
        in step and returns the tasks to publish once it commits. ``first_poll``: the
        first-poll delays of the providers that accepted, read before the transaction."""
        delays = first_poll or {}
        if not decisions:
            return []
        held = {m.id: m for m in group}
        # The claim said which have a callback; a decision for a message not in the
        # group (none today) lets the outbox statement look for itself.
        known = all(d.message_id in held for d in decisions)
        notify = {m.id for m in group if m.calls_back} if known else None

        def first(provider: str) -> float:
            return delays.get(provider) or self.first_polls.delay(provider)

        requeued = set(ledger.apply(s, decisions, now, source=source, notify=notify, first_poll=first))
        _list_stopped(s, decisions)
        publish = []
        for d in decisions:
            m = held.get(d.message_id)
            if m is not None:
                m.retries = d.retries if d.retries is not None else m.retries
                m.failovers = d.failovers if d.failovers is not None else m.failovers
                m.tried = d.tried if d.tried is not None else m.tried
            if d.message_id in requeued and d.extra.get("publish"):
                publish.append((d.message_id, m.priority if m else "normal", d.delay))
        return publish

    def _publish(self, tasks: Sequence[tuple[str, str, float]]) -> None:
        """Publish after the commit: a task that ran first would find the message
        still ``sending`` and leave it to the sweeper."""
        for message_id, priority, delay in tasks:
            try:
                self.publish(message_id, priority, delay)
            except Exception as exc:  # the broker is down: the sweeper publishes it later
                log.warning("could not publish %s (%s); the sweeper will", message_id, exc)

    @staticmethod
    def _word(d: Decision) -> str:
        if d.action == Action.GIVE_UP:
            return (d.status or Status.FAILED).value
        return WORDS.get(d.action, d.action.value)

    def _not_claimed(self, message_id: str) -> str:
        with session_scope() as s:
            msg = ledger.get(s, message_id)
        if msg is None:
            return "missing"
        now = utcnow()
        if msg.status == Status.QUEUED.value and msg.due_at > now:
            # Early (an ETA that fired ahead, or a second copy of a delayed task).
            wait = (msg.due_at - now).total_seconds()
            if wait <= MAX_COUNTDOWN:
                self.publish(message_id, msg.priority, wait)
            return "early"
        if msg.status == Status.SENDING.value:
            # Another worker holds it, or one died holding it (a redelivered task).
            age = (now - msg.claimed_at).total_seconds() if msg.claimed_at else self.max_lease
            if age >= self.max_lease:
                return self.recover(message_id)
            # Held: the holder finishes it, or the sweeper recovers it once the claim is
            # stale. No task is republished here: a message claimed by another task's
            # batch would get a needless task for each of its mates.
            return "busy"
        if msg.status == Status.QUEUED.value:
            # Due, and free again: a lingering task looked at it (and left it) while we
            # claimed. Claim it now, lingering no more.
            return self.process(message_id)
        return "skipped"  # scheduled (the sweeper releases it), already sent, final
