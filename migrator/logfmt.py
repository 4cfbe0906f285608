"""Log output: human-readable lines, or one JSON object per line for log collectors.

``MIGRATOR_LOG_FORMAT=json`` switches every command and worker to JSON. Fields passed with
``extra={"fields": {...}}`` (e.g. a batch's counts) become top-level JSON keys, and are
appended as ``key=value`` in text mode. Messages never carry patient data: the code logs
URIs, UIDs, counts and statuses only.

Credentials never reach the output either, at any verbosity: the AWS SDK's loggers (and
urllib3's), which print request headers at DEBUG (``Authorization`` with the access key
id, the canonical request with the session token), are kept at WARNING, and every record
goes through ``RedactSecrets`` on its way out (signatures, key ids, URL passwords and the
secret values of our environment masked).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from migrator.env import log_format
from migrator.proctitle import mask

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        data.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            data["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


#: Their DEBUG (and some INFO) output holds credentials: request headers, signing steps.
CREDENTIAL_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
#: Environment variables whose values are secrets, masked wherever they appear.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)
#: Environment variables holding URLs (or user:password lists) whose passwords are secrets.
SECRET_URL_ENV = ("MIGRATOR_REDIS_URL", "MIGRATOR_S3_ENDPOINT", "MIGRATOR_FLOWER_BASIC_AUTH")
MASK = "***"

#: (words that must be in the lowercased text for the pattern to apply, pattern): the
#: words are a cheap test that spares most lines every regular expression.
_PATTERNS = [
    # Authorization header, as botocore prints it ('Authorization': b'AWS4-HMAC-SHA256 ...')
    # or as a header line (Authorization: ...).
    (("authorization",), re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*b?['\"])[^'\"]*")),
    (("authorization",), re.compile(r"(?im)(authorization:\s*)[^\s'\"].*$")),
    # Presigned URLs, headers and signing steps: X-Amz-Credential=..., x-amz-security-token:
    (
        ("x-amz-",),
        re.compile(
            r"(?i)(x-amz-(?:security-token|credential|signature)['\"]?\s*[:=]\s*b?['\"]?)"
            r"[^'\"&\s,]+"
        ),
    ),
    (("credential=", "signature="), re.compile(r"(?i)\b((?:credential|signature)=)[^,\s&'\"]+")),
]
#: AWS access key ids (AKIA... long-term, ASIA... temporary, and the other prefixes).
_KEY_ID_HINT = re.compile(r"A(?:KIA|SIA|IDA|ROA|IPA|NPA|NVA|GPA|3T)")
_KEY_ID = re.compile(r"\b((?:AKIA|ASIA|AIDA|AROA|AIPA|ANPA|ANVA|AGPA|A3T[A-Z0-9]))[A-Z0-9]{16}\b")


class RedactSecrets(logging.Filter):
    """Masks credentials in a record's message and exception text (handler filter)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if environ is None else environ
        values = {env.get(name, "") for name in SECRET_ENV}
        for name in SECRET_URL_ENV:
            values.update(_url_passwords(env.get(name, "")))
        # Short values would mask ordinary words: such a secret is not worth the name.
        self._values = sorted((v for v in values if len(v) >= 6), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        lowered = text.lower()
        for words, pattern in _PATTERNS:
            if any(word in lowered for word in words):
                text = pattern.sub(rf"\1{MASK}", text)
        if _KEY_ID_HINT.search(text):
            text = _KEY_ID.sub(rf"\1{MASK}", text)
        return mask(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself
            return True
        # Formatted once: the formatter's getMessage() then has nothing left to do.
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


def _url_passwords(value: str) -> set[str]:
    """The passwords in a URL (``redis://user:pw@host``) or ``user:pw[,user:pw]`` list."""
    found: set[str] = set()
    for part in value.split(","):
        part = part.strip()
        if "://" in part:
            try:
                password = urlsplit(part).password
            except ValueError:
                continue
            if password:
                found.update({password, unquote(password)})
        elif ":" in part:
            found.add(part.partition(":")[2])
    return found


def configure(level: int | str, fmt: str | None = None) -> None:
    """Root logger to stderr, replacing any handler set before (Celery's, basicConfig's)."""
    fmt = (fmt or log_format()).lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets())
    for name in CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
