"""Log output: human-readable lines, or one JSON object per line for log collectors.

``MIGRATOR_LOG_FORMAT=json`` switches every command and worker to JSON. Fields passed with
``extra={"fields": {...}}`` (e.g. a batch's counts) become top-level JSON keys, and are
appended as ``key=value`` in text mode. Messages never carry patient data: the code logs
URIs, UIDs, counts and statuses only.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from migrator.env import log_format

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
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure(level: int | str, fmt: str | None = None) -> None:
    """Root logger to stderr, replacing any handler set before (Celery's, basicConfig's)."""
    fmt = (fmt or log_format()).lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
