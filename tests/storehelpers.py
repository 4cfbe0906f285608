"""Running `migrator` as users do: a subprocess, its exit code and its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom

#: What Python prints for an uncaught exception: a user must never see one (issue 20).
TRACEBACK = "Traceback (most recent call last)"


def no_traceback(output: str, what: str) -> None:
    """Every command the tests run goes through here (run_migrator, behaviourhelpers.send,
    enginehelpers.finish): an error is one line with an exit code, never a traceback, also
    not in the worker log lines a failed run shows."""
    assert TRACEBACK not in output, f"a traceback in the output of {what}:\n{output[-6000:]}"


def run_migrator(
    *args: str | Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "migrator", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    no_traceback(proc.stdout + proc.stderr, f"migrator {' '.join(map(str, args[:3]))}")
    return proc


def load_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    totals = data["totals"]
    assert totals["planned"] == totals["stored"] + totals["failed"] + totals["skipped"]
    assert len(data["files"]) == totals["planned"]
    return data


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, force=True, stop_before_pixels=True).SOPInstanceUID)
