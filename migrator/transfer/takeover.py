"""What a lost delivery of a batch may have sent unrecorded, looked up at the destination.

A delivery that dies (its host lost, its process killed), is cut from Redis while the
batch is handed on, or is ended by an exception with requests on the wire (Celery's soft
time limit: the batch goes on in a new task a second later) has sent files whose outcomes it never
wrote: up to the files in flight plus those settled since its last flush
(docs/reliability.md, row 15). The delivery that
takes the batch over asks the destination which of them it holds (:mod:`migrator.verify.held`:
C-FIND at IMAGE level with lists of SOP Instance UIDs, or QIDO-RS) and records those stored
instead of sending them a second time.

A file counts as found only when the destination holds its SOP Instance UID **in the study
the file was planned in**: an instance with that UID under another study is not this file
(a UID reused in the archive, an earlier load), and the file goes the normal way (sent,
then the PACS or ``--precheck`` answers). Looked up only:

- files without an outcome, whose header was read (a SOP Class UID in the plan: a UID from a
  manifest not yet checked against its file is not trusted here), that own their SOP
  Instance UID in the job (a duplicate goes through the transfer core's duplicate check);
- in jobs without ``--coerce`` and ``--precheck``: rules may change the identity the
  destination holds (which copy the lost delivery sent cannot be told without running
  them), and a pre-checked job must not skip its conflict check.

Anything that goes wrong while asking sends the files again: a second copy of an instance
is what a PACS keeps once; a file never sent would be data lost.
"""

from __future__ import annotations

import logging

from migrator.ledger import Ledger, PlannedFile
from migrator.outcomes import FOUND_AFTER_LOSS, FileOutcome, State
from migrator.settings import Settings

log = logging.getLogger("migrator.transfer.batch")

__all__ = ["FOUND_AFTER_LOSS", "found_at_destination"]


def found_at_destination(
    ledger: Ledger,
    settings: Settings,
    batch_id: str,
    todo: list[PlannedFile],
) -> list[tuple[PlannedFile, FileOutcome]]:
    """The files of ``todo`` (files without an outcome: what the delivery would send) the
    destination already holds, each with its stored outcome."""
    if settings.coerce or settings.precheck:
        return []
    unsettled = [f for f in todo if f.sop_instance_uid and f.sop_class_uid]
    if not unsettled:
        return []
    owners = ledger.claim_uids(unsettled)
    mine = [f for f, owner in zip(unsettled, owners, strict=True) if not owner]
    try:
        # Here, not at the top: asking the PACS imports pynetdicom and pydicom (~0.18 s),
        # which every `run` and worker would otherwise pay at start-up for a look-up made
        # only after a lost delivery (inside the try: whatever fails, the files are sent).
        from migrator.verify.held import held_instances

        held = held_instances(settings, [(f.study_uid, f.sop_instance_uid) for f in mine])
    except Exception as exc:  # whatever went wrong: send again, never lose a file
        log.warning(
            "batch %s: its previous delivery was lost and %s could not say what it holds "
            "(%s); its %d unsettled files are sent again",
            batch_id,
            settings.server,
            exc,
            len(mine),
        )
        return []
    found = [
        (f, _found(f))
        for f in mine
        if (h := held.get(f.sop_instance_uid)) is not None
        and (not f.study_uid or not h.study_uid or h.study_uid == f.study_uid)
    ]
    if found:
        log.warning(
            "batch %s: its previous delivery ended without recording every file it sent "
            "(lost, or stopped by a time limit); %d of its %d unsettled files were found "
            "at %s and are not sent again",
            batch_id,
            len(found),
            len(unsettled),
            settings.server,
        )
    return found


def _found(planned: PlannedFile) -> FileOutcome:
    return FileOutcome(
        planned.uri,
        State.STORED,
        FOUND_AFTER_LOSS,
        sop_class_uid=planned.sop_class_uid,
        sop_instance_uid=planned.sop_instance_uid,
        ts_original=planned.transfer_syntax,
        bytes=planned.size,
    )
