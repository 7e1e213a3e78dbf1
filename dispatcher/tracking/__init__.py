"""Delivery tracking: what became of each message the providers accepted. A message is
done when the ledger holds its final status.

- ``poller``: status polls in groups, as sends go (a round publishes, any worker of
  ``sms.poll`` claims a group, asks concurrently, writes back in one transaction), and
  the status queue that prostor-sms.ru fills;
- ``timing``: when to ask: the first poll when the provider usually delivers (learnt),
  then ``polling.intervals``;
- ``balances``: balance reads, kept as history, that routing checks.

May import the ledger, the providers and the coordination; never ``sending``."""

from dispatcher.tracking.balances import read_balances
from dispatcher.tracking.poller import Poller, PollStats, uses_status_queue
from dispatcher.tracking.timing import FirstPolls

__all__ = ["FirstPolls", "PollStats", "Poller", "read_balances", "uses_status_queue"]
