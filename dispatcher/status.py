"""The one normalized status vocabulary and the transitions allowed between its words.

Every provider's codes are mapped onto these lowercase words (see each adapter's
``STATUS_MAP``); the provider's raw code is always kept beside the word.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"  # in the ledger, a send task is (or will be) on the broker
    SCHEDULED = "scheduled"  # waits for its `at` time; the sweeper releases it
    SENDING = "sending"  # claimed by one worker, a provider call may be in flight
    ACCEPTED = "accepted"  # the provider took it
    SENT = "sent"  # the provider handed it to the operator
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"
    UNKNOWN = "unknown"  # we cannot know what happened; never resent blindly

    @property
    def is_final(self) -> bool:
        return self in FINAL


FINAL: frozenset[Status] = frozenset(
    {Status.DELIVERED, Status.UNDELIVERED, Status.EXPIRED, Status.REJECTED, Status.FAILED}
)

# The order in which a message moves forward through a provider. A poll reply that
# would move a message backwards (a late `sent` after `accepted`... after `delivered`)
# is ignored, so out-of-order replies cannot undo progress.
_PROGRESS: dict[Status, int] = {
    Status.QUEUED: 0,
    Status.SCHEDULED: 0,
    Status.SENDING: 1,
    Status.UNKNOWN: 2,
    Status.ACCEPTED: 3,
    Status.SENT: 4,
}

# Moves that go against the progress order on purpose: the pipeline puts a message
# back in the queue after a failed attempt, and an operator may retry an unknown one.
_RESET: dict[Status, frozenset[Status]] = {
    Status.SENDING: frozenset({Status.QUEUED, Status.SCHEDULED}),
    # No final status within the horizon, for providers set to `on_horizon = "unknown"`.
    Status.ACCEPTED: frozenset({Status.UNKNOWN}),
    Status.SENT: frozenset({Status.UNKNOWN}),
    Status.UNKNOWN: frozenset({Status.QUEUED}),
    Status.SCHEDULED: frozenset({Status.QUEUED}),
}


# An operator may send a failed or unknown message again (`smsdispatch retry`), and
# cancel one that has not gone out yet (`smsdispatch cancel`: it ends `failed`).
OPERATOR_RETRY_FROM: frozenset[Status] = frozenset({Status.FAILED, Status.UNKNOWN})
OPERATOR_CANCEL_FROM: frozenset[Status] = frozenset({Status.QUEUED, Status.SCHEDULED})


def can_transition(current: Status, new: Status, *, by_operator: bool = False) -> bool:
    """True when a message in ``current`` may move to ``new``.

    Final statuses never change, except that an operator may retry a failed one.
    Otherwise a status may only move forward, with the few deliberate resets listed
    in ``_RESET``.
    """
    # Retried: out now, or back to wait for its `at` if that is still ahead.
    if by_operator and new in (Status.QUEUED, Status.SCHEDULED) and current in OPERATOR_RETRY_FROM:
        return True
    if current.is_final:
        return False
    if current == new:
        return False
    if new.is_final:
        return True
    if new in _RESET.get(current, frozenset()):
        return True
    return _PROGRESS[new] > _PROGRESS[current]
