"""``retry --missing``: send again what the last reconciliation found missing.

Each instance at the source and not at the destination goes back through the job's own
ledger and batches, so that ``planned = stored + failed + skipped`` still holds and each
instance keeps one outcome:

- a file the ledger says is **stored** (the destination lost it, or discarded it while
  answering success) is put back in flight, its stored count taken back
  (:meth:`migrator.ledger.Ledger.reopen_stored`), and its batch enqueued: the worker fetches
  it from the source again and sends it;
- a **failed** file is put back in flight as by `retry`;
- a file still **in flight** only has its batch enqueued again (a batch never runs twice at
  once, and skips what it stored);
- an instance the job never planned (added to one of its studies at the source after
  planning) is planned now, under its ``dimse://`` item URI, like the listing would have;
- a **skipped** file keeps its reason (cancelled, a duplicate...): not sent.

The instances handled are taken off the reconciliation's list, so running it twice sends
nothing twice; ``verify`` afterwards says whether the destination now holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from migrator.engine import Enqueue
from migrator.ledger import Ledger
from migrator.ledger.encoding import split_id
from migrator.planner import plan_entries
from migrator.sources.manifest import ManifestEntry
from migrator.verify.reconcile import load_missing_instances


@dataclass(slots=True)
class Refetched:
    stored: int = 0  #: stored per the ledger, not at the destination: reopened
    failed: int = 0
    in_flight: int = 0
    new: int = 0  #: never planned (new at the source): planned now
    skipped: int = 0  #: left alone

    @property
    def sent(self) -> int:
        return self.stored + self.failed + self.in_flight + self.new

    def describe(self, verb: str = "sent again") -> str:
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.stored, "stored per the ledger but not at the destination"),
                (self.failed, "failed"),
                (self.in_flight, "in flight"),
                (self.new, "new at the source, planned now"),
                (self.skipped, "skipped (left alone)"),
            )
            if n
        ]
        return f"{self.sent} missing instances {verb}" + (f" ({', '.join(parts)})" if parts else "")


def refetch_missing(ledger: Ledger, enqueue: Enqueue) -> Refetched:
    """Put the last reconciliation's missing instances back in flight (see the module)."""
    missing = load_missing_instances(ledger)
    got = Refetched()
    ids = [m.file_id for m in missing if m.file_id]
    states = ledger.states(ids)
    by_state: dict[str | None, list[str]] = {}
    for fid in ids:
        by_state.setdefault(states.get(fid), []).append(fid)
    got.stored = ledger.reopen_stored(by_state.get("stored", []))
    got.failed = ledger.reopen(by_state.get("failed", []))
    got.in_flight = len(by_state.get(None, []))
    got.skipped = len(by_state.get("skipped", []))
    todo = by_state.get("stored", []) + by_state.get("failed", []) + by_state.get(None, [])
    for batch_id in sorted({split_id(fid)[0] for fid in todo}):
        enqueue(batch_id)
    new = [m for m in missing if not m.file_id]
    if new:
        entries = (ManifestEntry(0, m.uri, 0, m.sop_instance_uid, m.study_uid) for m in new)
        got.new = plan_entries(ledger, entries, enqueue=enqueue).planned_new
    if missing:
        ledger.client.hdel(ledger.keys.reconcile_missing, *[m.sop_instance_uid for m in missing])
        ledger.add_history(
            "missing", stored=got.stored, failed=got.failed, new=got.new, in_flight=got.in_flight
        )
    return got
