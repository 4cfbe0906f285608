"""Running `migrator` as users do: a subprocess, its exit code and its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom


def run_migrator(
    *args: str | Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "migrator", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def load_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    totals = data["totals"]
    assert totals["planned"] == totals["stored"] + totals["failed"] + totals["skipped"]
    assert len(data["files"]) == totals["planned"]
    return data


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, force=True, stop_before_pixels=True).SOPInstanceUID)
