"""The retention beat job: ``smsdispatch.purge`` (``dispatcher.retention``)."""

from __future__ import annotations

from dispatcher.retention import purge_due
from workers.app import app
from workers.tasks import _done, _exclusive, get_pipeline


@app.task(name="smsdispatch.purge", ignore_result=True)
def purge() -> dict[str, int]:
    """Delete or mask what is past ``policy.retention_days``, a bounded number of
    batches per run. The same lease as the pollers: two beats started by mistake do
    not both walk the ledger, and a run that overlaps the next interval is not
    started twice."""
    settings = get_pipeline().settings
    lease = _exclusive("purge", settings.policy.retention_interval)
    if lease is None:
        return {}
    try:
        return purge_due(settings)
    finally:
        _done("purge", lease)
