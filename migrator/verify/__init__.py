"""``verify``: ask the destination what it holds, and compare with what the ledger says it stored.

A C-STORE answered ``0x0000`` does not prove storage: Orthanc answers it for a duplicate it
keeps the old copy of and for an instance a Lua filter discards (TESTING.md §2.3). So after a
migration we ask the PACS itself, in three steps of increasing cost:

1. **C-FIND at STUDY level**, one query per study in the ledger, for
   NumberOfStudyRelatedInstances (PS3.4 C.3.4), compared with the number of distinct SOP
   Instance UIDs the ledger stored in that study.
2. **C-FIND at SERIES then IMAGE level** (hierarchical, PS3.4 C.4.1.2.2: every level above the
   query level gets its unique key) for every study whose count differs, which names the
   missing SOP Instance UIDs exactly, and for a sample of the studies whose count matches (a
   foreign instance in the PACS could hide a missing one of ours).
3. Optionally **Storage Commitment** (Push Model, PS3.4 Annex J): N-ACTION with the SOP
   Class/Instance UIDs in batches, then the N-EVENT-REPORT, on the same association or on a
   reverse association the PACS opens to us. Orthanc 1.10.1 always uses a reverse association,
   sent by a job after the N-ACTION response, to the host and port it has registered for our
   calling AE in ``DicomModalities``; from an AE not registered there it aborts the association
   on the N-ACTION (and on C-FIND too, unless ``DicomAlwaysAllowFind``).

Identifiers carry only UIDs and counts, so no patient data is requested, logged or stored.

The result goes into the ledger, for ``status`` and reports (:mod:`~migrator.verify.result`:
:func:`save_result`, :func:`load_summary`, :func:`load_missing`).

The package: :mod:`~migrator.verify.check` (:func:`verify_job`, the steps above in order),
:mod:`~migrator.verify.query` (C-FIND), :mod:`~migrator.verify.commitment` (storage
commitment), :mod:`~migrator.verify.pacs` (opening the association),
:mod:`~migrator.verify.reactor` (the pynetdicom reactor workaround both need),
:mod:`~migrator.verify.stored` (what the ledger says was stored) and
:mod:`~migrator.verify.result`.
"""

from __future__ import annotations

from migrator.errors import PacsQueryError
from migrator.verify.check import verify_job
from migrator.verify.commitment import COMMITMENT_INSTANCE, CommitmentSettings
from migrator.verify.query import QueryClient
from migrator.verify.result import (
    FileProblem,
    StudyCount,
    VerifyResult,
    load_missing,
    load_summary,
    save_result,
)

__all__ = [
    "COMMITMENT_INSTANCE",
    "CommitmentSettings",
    "FileProblem",
    "PacsQueryError",
    "QueryClient",
    "StudyCount",
    "VerifyResult",
    "load_missing",
    "load_summary",
    "save_result",
    "verify_job",
]
