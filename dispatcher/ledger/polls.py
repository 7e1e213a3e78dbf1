"""The ledger's statements of delivery tracking: claim a group of due polls, write back
what the provider answered, apply a status queue's drain, end what the horizon ends,
keep balance reads. Set-based, as the send path's: a handful of statements per group
or drain, whatever its size."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, any_, bindparam, func, insert, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session

from dispatcher import callbacks, metrics
from dispatcher.ledger import _bulk_update
from dispatcher.models import BALANCES, EVENTS, MESSAGES
from dispatcher.redact import redact
from dispatcher.status import Status, can_transition

# The statuses a status poll asks about. In SQL as literals, not parameters: the partial
# index ix_messages_poll_due names them in its predicate, and a planner can prove a query
# fits a partial index only from constants.
POLLED = (Status.ACCEPTED, Status.SENT)
_POLLED_SQL = MESSAGES.c.status.in_([literal_column(f"'{st.value}'") for st in POLLED])

M = MESSAGES.c


@dataclass
class Move:
    """One message's status change as a provider reported it: ``old`` is what the row
    must still hold (a compare-and-set), ``steps`` the events it writes (several when
    one reply carries accepted -> sent -> delivered)."""

    id: str
    old: Status
    new: Status
    steps: list[tuple[Status, Status, str | None, str | None]]  # (old, new, raw, detail)


def walk(current: Status, reports: Iterable[Any]) -> tuple[Move | None, list[str]]:
    """Where ``reports`` (``StatusReport``s of one message, in the order the provider
    gave them) take a message now in ``current``: the move, and the raw words we do not
    read as a change. A report that would go backwards or leave a final status is
    ignored, so a late or contradicting reply never undoes progress."""
    status, steps, odd = current, [], []
    for r in reports:
        if r.status == Status.UNKNOWN:
            # Kept visible, nothing changes: a word we do not know, or one the document
            # leaves open (the adapter says which in `detail`).
            odd.append(f"{r.raw_status} ({r.detail})" if r.detail else str(r.raw_status))
            continue
        if can_transition(status, r.status):
            steps.append((status, r.status, r.raw_status, r.detail or None))
            status = r.status
    return (Move("", current, status, steps) if steps else None), odd


def transition_rows(session: Session, moves: Sequence[Move], now: datetime, *, source: str,
                    provider: str | None, notify: Collection[str] | None = None) -> list[str]:  # fmt: skip
    """Move many messages, each from its own ``old`` to its own ``new`` status, and write
    their events in one INSERT. Returns the ids moved; a message that left ``old``
    meanwhile is untouched (the caller may read it again). On PostgreSQL one UPDATE for
    all (a compare-and-set per row, RETURNING what matched); on SQLite one per pair of
    statuses (its executemany cannot say which rows matched). ``notify``: as for
    ``transition_many``."""
    if not moves:
        return []
    for m in moves:
        if not can_transition(m.old, m.new):
            raise ValueError(f"{m.old.value} -> {m.new.value} is not an allowed transition")
    done: list[str] = []
    if session.get_bind().dialect.name == "postgresql":
        rows = [{"id": m.id, "status": m.new.value, "final_at": now if m.new.is_final else None,
                 "_old": m.old.value} for m in moves]  # fmt: skip
        done = [str(i) for i in _bulk_update(session, MESSAGES, "id", rows, {"updated_at": now},
                                             match={"_old": "status"}) or []]  # fmt: skip
    else:
        pairs: dict[tuple[Status, Status], list[str]] = defaultdict(list)
        for m in moves:
            pairs[(m.old, m.new)].append(m.id)
        for (old, new), ids in pairs.items():
            done += session.execute(
                update(MESSAGES)
                .where(M.id.in_(ids), M.status == old.value)
                .values(status=new.value, updated_at=now, final_at=now if new.is_final else None)
                .returning(M.id)
            ).scalars()
    by_id = {m.id: m for m in moves}
    if done:
        session.execute(
            insert(EVENTS),
            [{"message_id": mid, "at": now, "old_status": old.value, "new_status": new.value,
              "source": source, "provider": provider, "raw": redact(raw) if raw else None,
              "detail": redact(detail) if detail else None}
             for mid in done for old, new, raw, detail in by_id[mid].steps],
        )  # fmt: skip
        told = done if notify is None else [m for m in done if m in notify]
        if told:
            callbacks.record(session, told, now)
        metrics.count_ends(session, [(provider, by_id[mid].new) for mid in done])
    return done


@dataclass
class PollClaim:
    """A message a poll group asks about: claimed by setting its next poll to the
    group's lease, so no other group takes it until the lease runs out."""

    id: str
    provider_message_id: str
    to: str
    status: Status
    polls: int
    accepted_at: datetime | None
    calls_back: bool
    due: datetime  # when its poll fell due (before the claim moved it to the lease)


@dataclass
class PollResult:
    """What one status check of a claimed message came to."""

    claim: PollClaim
    reports: list[Any]  # StatusReports of this message
    error: str | None = None  # the check failed (the message backs off alone)
    asked: bool = True  # False: its call was never made (the group stopped): not a check


@dataclass
class Horizon:
    """When a message with no final status gives up waiting for one."""

    cutoff: datetime  # accepted before this: past the horizon
    seconds: float  # pipeline.status_horizon
    target: Status  # expired, or unknown (the instance's on_horizon)
    detail: str
    # Accepted before this: past the horizon and its grace. Such a message ends unknown
    # whatever its polls came to (they failed, or never came: the provider's polling
    # paused or its breaker open the whole time), so none stays in flight for ever.
    given_up: datetime


def _due(provider: str, now: datetime, quiet_before: datetime | None) -> list[ColumnElement[bool]]:
    conditions = [
        M.provider == provider,
        _POLLED_SQL,
        M.next_poll_at <= now,
        M.provider_message_id.is_not(None),
    ]
    if quiet_before is not None:
        # A provider with a status queue: poll only what the queue has been silent about.
        conditions.append(M.accepted_at <= quiet_before)
    return conditions


def due_polls(session: OrmSession, provider: str, now: datetime, *, quiet_before: datetime | None = None,
              cap: int = 100_000) -> tuple[int, datetime | None]:  # fmt: skip
    """How many polls of ``provider`` are due (counted up to ``cap``), and when the
    oldest of them fell due: two ordered reads of ix_messages_poll_due."""
    due = _due(provider, now, quiet_before)
    oldest = session.execute(select(M.next_poll_at).where(*due).order_by(M.next_poll_at).limit(1)).scalar()
    if oldest is None:
        return 0, None
    # The index's own column, so the count reads the index alone (an index-only scan).
    counted = select(M.next_poll_at).where(*due).limit(cap).subquery()
    return int(session.execute(select(func.count()).select_from(counted)).scalar_one()), oldest


def claim_polls(session: Session, provider: str, now: datetime, limit: int, lease_until: datetime, *,
                quiet_before: datetime | None = None) -> list[PollClaim]:  # fmt: skip
    """Claim up to ``limit`` due polls of ``provider``, oldest due first (a message
    polling fell behind on is asked before any other): their next poll moves to
    ``lease_until``. On PostgreSQL one statement, the pick a materialized CTE locked with
    SKIP LOCKED, so groups claiming at once take disjoint sets without waiting on each
    other (as ``IN (subquery)`` the planner may run the pick again and take more than
    ``limit``). On SQLite the pick and the UPDATE, one step under the write lock (BEGIN
    IMMEDIATE): its RETURNING cannot name another table."""
    calls_back = func.coalesce(M.callback_url, M.callback_task).is_not(None)
    pick = (
        select(M.id.label("mid"), M.provider_message_id, M.to, M.status, M.polls, M.accepted_at,
               calls_back.label("calls_back"), M.next_poll_at.label("due"))
        .where(*_due(provider, now, quiet_before))
        .order_by(M.next_poll_at)
        .limit(limit)
    )  # fmt: skip
    if session.get_bind().dialect.name == "postgresql":
        picked = pick.with_for_update(skip_locked=True, of=MESSAGES).cte("picked").prefix_with("MATERIALIZED")
        rows = session.execute(
            update(MESSAGES).where(M.id == picked.c.mid).values(next_poll_at=lease_until).returning(*picked.c)
        ).all()
    else:
        rows = session.execute(pick).all()
        if rows:
            session.execute(
                update(MESSAGES).where(M.id.in_([r[0] for r in rows])).values(next_poll_at=lease_until)
            )
    return [PollClaim(r[0], r[1], r[2], Status(r[3]), int(r[4]), r[5], bool(r[6]), r[7]) for r in rows]


def release_polls(session: Session, claims: Sequence[PollClaim], lease_until: datetime) -> None:
    """Give claimed polls back unasked: due again when they fell due, so they keep their
    place (oldest due first) and the poll lag stays true; their count unchanged."""
    if claims:
        rows = [{"id": c.id, "next_poll_at": c.due} for c in claims]
        _bulk_update(session, MESSAGES, "id", rows, {}, where=[M.next_poll_at == lease_until])


def apply_polls(
    session: Session, provider: str, results: Sequence[PollResult], now: datetime, *,
    lease_until: datetime, next_due: Callable[[PollClaim], datetime], horizon: Horizon, on_time: float,
) -> dict[str, int]:  # fmt: skip
    """Write back one poll group in the caller's transaction: every status change with
    ``transition_rows``, every message's next poll in one more UPDATE (``polls`` + 1,
    ``next_due(claim)``; a failed check keeps its error). The schedule is fenced by the
    claim: a group slower than its lease, whose messages another group has claimed since,
    changes no schedule (its status changes still count: a provider's report is a fact).
    A check that found no final status for a message past the horizon ends it
    (``horizon.target``): an answer ends a message, never a poll that lagged; a check
    that failed ends one only past the horizon's grace (``unknown``). Messages whose call
    was never made (the group stopped, or found no rate-limit slot) are given back
    (``release_polls``).

    Returns how many messages came to each result (``final``, ``changed``,
    ``unchanged``, ``odd``, ``horizon``, ``failed``), and the first polls made on time
    (within ``on_time`` seconds of falling due): ``first`` of them, ``first_final``
    that found a final status (what ``tracking.timing`` learns from)."""
    results_of: dict[str, str] = {}
    moves: list[Move] = []
    schedule: list[dict[str, Any]] = []
    claims: dict[str, PollClaim] = {}
    first = first_final = 0
    for r in results:
        c = r.claim
        if not r.asked:
            continue
        claims[c.id] = c
        due = next_due(c)
        # The last poll before the horizon falls on it, so a message ends then, not a
        # whole gap (up to 15 min) later.
        end = c.accepted_at + timedelta(seconds=horizon.seconds) if c.accepted_at else None
        if end is not None and now < end < due:
            due = end
        row: dict[str, Any] = {"id": c.id, "polls": c.polls + 1, "next_poll_at": due, "last_error": None}
        schedule.append(row)
        if r.error is not None:
            results_of[c.id] = "failed"
            row["last_error"] = redact(f"status check failed: {r.error}")[:2000]
            if c.accepted_at is not None and c.accepted_at < horizon.given_up:
                # No answer through the whole grace: we cannot know, and stop asking.
                why = f"{horizon.detail}, and no poll answered within its grace: {r.error}"
                moves.append(Move(c.id, c.status, Status.UNKNOWN, [(c.status, Status.UNKNOWN, None, why)]))
                results_of[c.id] = "horizon"
            continue
        move, odd = walk(c.status, r.reports)
        if odd:
            row["last_error"] = redact(f"status from {provider} we do not read as a change: {'; '.join(odd)}")
        final = move is not None and move.new.is_final
        result = "final" if final else "changed" if move is not None else "odd" if odd else "unchanged"
        if not final and c.accepted_at is not None and c.accepted_at < horizon.cutoff:
            move, result = _to_horizon(c.status, move, horizon), "horizon"
        if move is not None:
            move.id = c.id
            moves.append(move)
        results_of[c.id] = result
        if c.polls == 0 and (now - c.due).total_seconds() <= on_time:
            first += 1
            first_final += final
    notify = {c.id for c in claims.values() if c.calls_back}
    moved = set(_apply_moves(session, moves, now, provider=provider, source="poll", notify=notify,
                             current=lambda ids: _statuses(session, ids)))  # fmt: skip
    for m in moves:
        if m.id not in moved:  # another writer moved it first: this answer changed nothing
            results_of[m.id] = "unchanged"
    if schedule:
        _bulk_update(session, MESSAGES, "id", schedule, {}, where=[M.next_poll_at == lease_until],
                     keep_if_null=frozenset({"last_error"}))  # fmt: skip
    release_polls(session, [r.claim for r in results if not r.asked], lease_until)
    counts = Counter(results_of.values())
    metrics.count_on_commit(session, metrics.STATUS_CHECKS, [((provider, k), n) for k, n in counts.items()])
    return {**counts, "first": first, "first_final": first_final}


def _to_horizon(current: Status, move: Move | None, horizon: Horizon) -> Move:
    """``move`` (or none) continued to the horizon's end status."""
    at = move.new if move is not None else current
    steps = [*(move.steps if move is not None else []), (at, horizon.target, None, horizon.detail)]
    return Move("", current, horizon.target, steps)


def _one_of(session: Session, column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN values``. On PostgreSQL as ``= ANY(one array)``: psycopg prepares a
    statement it runs often, and in the prepared (generic) plan an IN of 1,000 separate
    parameters is searched linearly for every row read, where an array is one value the
    index is probed with."""
    if session.get_bind().dialect.name == "postgresql":
        found: ColumnElement[bool] = column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
        return found
    inside: ColumnElement[bool] = column.in_(list(values))
    return inside


def _statuses(session: Session, ids: Sequence[str]) -> dict[str, Status]:
    rows = session.execute(select(M.id, M.status).where(_one_of(session, M.id, ids))).all()
    return {str(mid): Status(status) for mid, status in rows}


def _apply_moves(session: Session, moves: list[Move], now: datetime, *, provider: str, source: str,
                 notify: Collection[str] | None, current: Callable[[Sequence[str]], dict[str, Status]],
                 again: Callable[[str, Status], Move | None] | None = None) -> list[str]:  # fmt: skip
    """``transition_rows``, and again for the moves whose message left its ``old``
    status meanwhile (another report, the status queue): walked again from the status
    it holds now, so a report is never lost to a race (``again`` re-walks one; by
    default the move's own steps are replayed from the new status)."""
    done: list[str] = []
    for _ in range(3):
        if not moves:
            break
        moved = set(transition_rows(session, moves, now, source=source, provider=provider, notify=notify))
        done += moved
        left = [m for m in moves if m.id not in moved]
        if not left:
            break
        now_in = current([m.id for m in left])
        moves = []
        for m in left:
            status = now_in.get(m.id)
            if status is None or status == m.old:
                continue  # gone (purged), or unchanged after all (a concurrent writer rolled back)
            redo = again(m.id, status) if again else _replay(m, status)
            if redo is not None and _still_tracked(status, redo):
                redo.id = m.id
                moves.append(redo)
    return done


def _still_tracked(status: Status, move: Move) -> bool:
    """Whether a report may still move a message that another writer moved meanwhile:
    while it is in flight, or ``unknown`` to a final status (a late answer to a message
    given up on). A message sent again (``queued``, ``sending``) belongs to the send
    path, whatever an old report says."""
    return status in POLLED or (status == Status.UNKNOWN and move.new.is_final)


def _replay(m: Move, status: Status) -> Move | None:
    """The steps of ``m`` that still move a message now in ``status``."""
    steps = []
    at = status
    for _old, new, raw, detail in m.steps:
        if can_transition(at, new):
            steps.append((at, new, raw, detail))
            at = new
    return Move(m.id, status, at, steps) if steps else None


def apply_reports(session: Session, provider: str, reports: Sequence[Any], now: datetime, *,
                  source: str) -> int:  # fmt: skip
    """Apply reports that name messages by the provider's id (and phone, where one of
    its ids carried several phones): a status queue's drain. One read of the messages
    they name (per 1,000 ids), ``transition_rows`` for every change. Returns the number
    of messages moved."""
    by_pid: dict[str, list[Any]] = defaultdict(list)
    for report in reports:
        if report.provider_message_id:
            by_pid[report.provider_message_id].append(report)
    if not by_pid:
        return 0
    calls_back = func.coalesce(M.callback_url, M.callback_task).is_not(None)
    pids = list(by_pid)
    rows: list[Any] = []
    for start in range(0, len(pids), 1000):
        # By the provider's id alone, the provider checked here: given `provider = ...` as
        # well, a planner without statistics of a fresh burst reads every message of the
        # provider and searches the ids for each (0.38 s a drain against 8 ms).
        found = session.execute(
            select(M.id, M.provider_message_id, M.to, M.status, calls_back, M.provider).where(
                _one_of(session, M.provider_message_id, pids[start : start + 1000])
            )
        ).all()
        rows += [r[:5] for r in found if r[5] == provider]
    mine: dict[str, list[Any]] = {}
    moves: list[Move] = []
    odd: list[dict[str, Any]] = []
    notify = set()
    for mid, pid, phone, status, back in rows:
        mine[mid] = [r for r in by_pid[pid] if not r.phone or r.phone == phone]
        move, words = walk(Status(status), mine[mid])
        if move is not None:
            move.id = mid
            moves.append(move)
        if words:
            said = f"status from {provider} we do not read as a change: {'; '.join(words)}"
            odd.append({"id": mid, "last_error": redact(said)})
        if back:
            notify.add(mid)

    def again(mid: str, status: Status) -> Move | None:
        return walk(status, mine[mid])[0]

    moved = _apply_moves(session, moves, now, provider=provider, source=source, notify=notify,
                         current=lambda ids: _statuses(session, ids), again=again)  # fmt: skip
    if odd:
        _bulk_update(session, MESSAGES, "id", odd, {"updated_at": now})
    return len(moved)


def expire_unasked(session: Session, provider: str, horizon: Horizon, now: datetime, *,
                   limit: int = 5000) -> int:  # fmt: skip
    """End the messages of ``provider`` that no poll will end: past the horizon, those
    the provider gave no id for (no poll can ask about them: ``horizon.target``); past
    the horizon and its grace, any still in flight (``unknown``: their polls failed or
    never came). Every other message ends at a poll that found no final status."""
    rows = session.execute(
        select(M.id, M.status, M.provider_message_id.is_(None)).where(
            M.provider == provider, _POLLED_SQL,
            or_(and_(M.provider_message_id.is_(None), M.accepted_at < horizon.cutoff),
                and_(M.accepted_at < horizon.given_up, M.next_poll_at <= now)),
        ).limit(limit)
    ).all()  # fmt: skip
    moves = []
    unanswered = f"{horizon.detail}, and no poll answered within its grace (they failed, or polling paused)"
    for mid, status, no_id in rows:
        target, why = (horizon.target, horizon.detail) if no_id else (Status.UNKNOWN, unanswered)
        moves.append(Move(str(mid), Status(status), target, [(Status(status), target, None, why)]))
    return len(transition_rows(session, moves, now, source="poll", provider=provider))


def record_balances(session: Session, readings: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """Keep one balance read per provider (``provider``, ``amount``, ``credit``,
    ``currency``, ``error``) as history, in one INSERT."""
    keys = ("provider", "amount", "credit", "currency", "error")
    session.execute(insert(BALANCES), [{"at": now, **{k: r[k] for k in keys}} for r in readings])
