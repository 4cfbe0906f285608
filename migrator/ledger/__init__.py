"""The job ledger in Redis: what was planned, and the one outcome of every planned file.

Invariant: ``planned = stored + failed + skipped + in flight``, and at the end of a job
``in flight = 0``. Counters move only inside Lua scripts that look at a file's current state
first, so a batch delivered twice (a killed worker, a visibility timeout) never counts a file
twice, and a stored file is never turned back into a failure by a late duplicate.

Compact, because a job may hold hundreds of millions of files (docs/scale.md has the
measured bytes per file):

* A file's identity in the ledger is its place in a batch, ``"<batch>:<index>"``. The
  batch's files are one zlib-compressed JSON value (URIs and UIDs compress well together).
* The state of every file of a batch is one byte in a string (``.`` in flight, ``s``
  stored, ``f`` failed, ``k`` skipped): checking and setting it costs a GETRANGE/SETRANGE
  on a contiguous range, whatever the number of files.
* Outcomes are appended to one string per batch, one short JSON line per file (the last
  line of a file wins); a stored file's line holds only what is not in the plan.
* "Was this URI planned already?" is answered by 65,536 small hashes keyed by a prefix of
  the URI's hash (Redis keeps small hashes as compact listpacks).
* "Which file was sent first with this SOP Instance UID?" likewise: 65,536 small hashes,
  8 binary bytes of the UID's hash -> the owner's file id (packed into one integer), set
  by the worker just before sending (``claim_uids``; migrator/duplicates.py settles the
  later files).

Keys come from :mod:`migrator.keys`.
"""

from migrator.ledger.core import Ledger, list_jobs
from migrator.ledger.encoding import IN_FLIGHT, PlannedFile, Recorded, split_id, uid_key, uri_id

__all__ = [
    "IN_FLIGHT",
    "Ledger",
    "PlannedFile",
    "Recorded",
    "list_jobs",
    "split_id",
    "uid_key",
    "uri_id",
]
