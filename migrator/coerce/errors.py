"""Why a file could not be coerced (it fails, naming file, element and rule), or why it is
skipped (a mapping table without its value, under ``missing: skip``).

Messages never carry the values themselves: they are patient data (an ID, a name)."""

from __future__ import annotations

from migrator.errors import SourceError


class CoercionError(SourceError):
    """This file cannot be sent as the rules want it: it fails (not retried)."""


class CoercionSkipped(CoercionError):
    """A rule says not to send this file (a value missing from a table, ``missing: skip``)."""
