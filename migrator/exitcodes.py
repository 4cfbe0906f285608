"""Process exit codes shared by every command (documented in each command's --help)."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What a script calling `migrator` can branch on."""

    OK = 0
    #: At least one file failed (or its outcome stayed unknown) after retries.
    PARTIAL_FAILURE = 1
    #: Bad arguments or configuration (click also uses 2 for usage errors).
    BAD_CONFIG = 2
    #: The peer could not be reached: refused, unreachable, timed out, aborted.
    CANNOT_CONNECT = 3
    #: The peer answered but rejected the association (wrong AE title, busy, ...).
    ASSOCIATION_REJECTED = 4
    #: No input file was found at all (empty directory, empty S3 prefix).
    NO_INPUT = 5
    #: A job that did not finish: files still in flight when `run` stopped waiting (its
    #: --timeout, its workers stopped); running the same command again resumes it.
    INCOMPLETE = 6
    INTERRUPTED = 130


EXIT_CODES_HELP = (
    "Exit codes: 0 every DICOM file stored (non-DICOM files are skipped and listed); "
    "1 one or more files failed; 2 bad arguments or "
    "configuration; 3 cannot connect (refused, unreachable, timeout, aborted); "
    "4 association rejected (e.g. called AE title not recognised); 5 no input files; "
    "6 job incomplete (files still in flight: run the same command again to resume); "
    "130 interrupted."
)
