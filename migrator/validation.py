"""Validation of untrusted identifiers: AE titles and UIDs (DICOM PS3.5 §6.2, §9.1)."""

from __future__ import annotations

import functools
import re

from migrator.errors import ConfigError

# PS3.5 Table 6.2-1: AE is 16 bytes max, default character repertoire without "\" or control
# characters; leading/trailing spaces are not significant and an all-space value is invalid.
_AE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # fullmatch: "$" allows a final newline
# PS3.5 §9.1: components of digits separated by ".", no leading zero in a multi-digit
# component, 64 characters at most.
# fullmatch, not match with "$": "$" also matches before a trailing newline ("1.2\n").
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def ae_title(value: str, what: str = "AE title") -> str:
    """Return the stripped AE title or raise ConfigError explaining what is wrong."""
    stripped = value.strip(" ")
    if not stripped:
        raise ConfigError(f"{what} is empty")
    if len(stripped) > 16:
        raise ConfigError(f"{what} {stripped!r} is longer than 16 characters")
    if not _AE_RE.fullmatch(stripped):
        raise ConfigError(
            f"{what} {stripped!r} has characters not allowed in an AE title "
            "(printable ASCII without backslash)"
        )
    return stripped


def is_valid_ae(value: str) -> bool:
    """True when ``value`` (stripped of its padding) is a valid AE title: a peer's calling
    AE title is checked with this before it reaches a log or a file's meta."""
    return bool(_AE_RE.fullmatch(value)) and bool(value.strip(" "))


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid UID (safe to use as a file name)."""
    return len(value) <= 64 and _uid_syntax(value)


@functools.lru_cache(maxsize=1024)  # a receiver checks each C-STORE's UIDs 2-3 times
def _uid_syntax(value: str) -> bool:  # only values of at most 64 characters are kept
    return _UID_RE.fullmatch(value) is not None
