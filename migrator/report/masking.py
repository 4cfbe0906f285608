"""Secrets never reach a report: masking of configuration values before they are written.

A report is mailed around and attached to tickets, so anything that looks like a credential
is replaced, whatever the job's configuration happens to hold now or later: values under a
key naming a password, secret, key or token, and the password part of URLs
(``redis://:pw@host``, ``https://user:pw@host``) or URL query parameters (``?token=...``)
in any string.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Matched against each word of a key ("s3_secret_key" -> s3, secret, key; "apiKey" too).
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "key",
        "apikey",
        "token",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "cookie",
        "session",
        "signature",
        "private",
    }
)
# Keys that contain a secret word but are known not to be secrets.
_NOT_SECRET = frozenset({"key_count", "keys", "sort_key", "public_key_id"})

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):[^@/\s]+@")
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:password|passwd|pwd|secret|token|key|api_key|apikey|access_token|"
    r"auth|signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&;#\s]*",
    re.IGNORECASE,
)


def _words(key: str) -> list[str]:
    # camelCase -> camel_Case, then split on anything that is not a letter or digit.
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """True when a configuration key names a credential (``redis_password``, ``apiToken``)."""
    if key.lower() in _NOT_SECRET:
        return False
    words = _words(key)
    return any(w in _SECRET_WORDS for w in words) or "password" in key.lower()


def mask_text(text: str) -> str:
    """The string with URL passwords and secret query parameters replaced by ``***``."""
    text = _URL_USERINFO.sub(
        lambda m: f"{m['scheme']}{m['user']}:{MASK}@" if m["user"] else f"{m['scheme']}{MASK}@",
        text,
    )
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)


def mask_secrets(value: Any, *, key: str = "") -> Any:
    """A deep copy of ``value`` (dicts, lists, scalars) safe to print in a report."""
    if key and is_secret_key(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, dict):
        return {str(k): mask_secrets(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value
